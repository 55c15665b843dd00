"""hearthsync: the shared, local-first memory of a household's robots.

from hearthsync import Peer
async with Peer.open("robot-folder", device="kitchen") as peer:
    ...

The names below are imported when first used (PEP 562), so that ``import hearthsync`` (and the
``hearth`` command, which imports it first) costs nothing until a name is asked for: a Ctrl-C
while a command starts stops it quietly (`hearthsync.entry`), and ``hearth --help`` does not
wait for the vector index and the CRDT library to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: where each public name lives
_HOMES = {
    "ScopeDeniedError": "hearthsync.context.scopes",
    **dict.fromkeys(
        ("BlockedFieldError", "ClosedError", "CorruptDocumentError", "HearthError",
         "NotFoundError", "StoreInUseError", "ValidationError"),
        "hearthsync.errors",
    ),
    **dict.fromkeys(
        ("Calibration", "Condition", "ContextSnapshot", "EventType", "InteractionEvent",
         "Placement", "Pose", "Preference", "Profile", "Region", "Relationship", "Routine"),
        "hearthsync.model",
    ),
    "Peer": "hearthsync.peer",
    "Recalled": "hearthsync.peer",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:  # a submodule (`from hearthsync import enrolment`) is imported by Python
        raise AttributeError(f"module 'hearthsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # asked once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


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
