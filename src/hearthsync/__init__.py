"""hearthsync: the shared, local-first memory of a household's robots.

from hearthsync import Peer
async with Peer.open("robot-folder", device="kitchen") as peer:
    ...
"""

from hearthsync.errors import (
    BlockedFieldError,
    CorruptDocumentError,
    HearthError,
    NotFoundError,
    ValidationError,
)
from hearthsync.model import (
    Calibration,
    Condition,
    ContextSnapshot,
    EventType,
    InteractionEvent,
    Placement,
    Pose,
    Preference,
    Profile,
    Region,
    Relationship,
    Routine,
)
from hearthsync.peer import Peer, Recalled

__version__ = "0.1.0"

__all__ = [
    "BlockedFieldError",
    "Calibration",
    "Condition",
    "ContextSnapshot",
    "CorruptDocumentError",
    "EventType",
    "HearthError",
    "InteractionEvent",
    "NotFoundError",
    "Peer",
    "Placement",
    "Pose",
    "Preference",
    "Profile",
    "Recalled",
    "Region",
    "Relationship",
    "Routine",
    "ValidationError",
]
