"""hearthsync: the shared, local-first memory of a household's robots.

from hearthsync import Peer
async with Peer.open("robot-folder", device="kitchen") as peer:
    ...
"""

from hearthsync.context.scopes import ScopeDeniedError
from hearthsync.errors import (
    BlockedFieldError,
    ClosedError,
    CorruptDocumentError,
    HearthError,
    NotFoundError,
    StoreInUseError,
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
    "ClosedError",
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
    "ScopeDeniedError",
    "StoreInUseError",
    "ValidationError",
]
