"""The two ports the context engine needs from a peer: what it reads, and what the slow loop writes.

`hearthsync.peer.Peer` satisfies both structurally; tests may pass any object that does.  The
engine never touches a peer's private state, so it can move behind the HTTP API or into another
process without change (STYLE §2: ports are small `typing.Protocol`s).

Each read method belongs to exactly one scope (DESIGN: data model); `SCOPE_OF` records which,
and `hearthsync.context.scopes.ScopedReader` refuses any call whose scope the task lacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from hearthsync.model.records import (
    Calibration,
    Condition,
    EventType,
    HealthRecord,
    InteractionEvent,
    Placement,
    Preference,
    Profile,
    Region,
    Relationship,
    Routine,
    SpatialChange,
)


class Hit(Protocol):
    """One semantic recall result (`hearthsync.peer.Recalled`)."""

    @property
    def event(self) -> InteractionEvent: ...

    @property
    def score(self) -> float: ...


class PeerReader(Protocol):
    """The in-memory reads of a peer, plus the stamps that tell a cache it is stale."""

    @property
    def device(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    def users(self) -> Sequence[str]: ...

    def forgotten_users(self) -> AbstractSet[str]:
        """The ids of the users forgotten here, which name nobody any more."""
        ...

    # scope core
    def profile(self, user: str) -> Profile | None: ...

    def calibration(self, user: str) -> Calibration: ...

    def preferences(self, user: str, prefix: str = "") -> Sequence[Preference]: ...

    def preference_history(
        self, user: str, key: str, condition: Condition | None = None
    ) -> Sequence[Preference]: ...

    def routines(self, user: str | None = None) -> Sequence[Routine]: ...

    def relationships(self, subject: str | None = None) -> Sequence[Relationship]: ...

    # scope health
    def health(self, user: str) -> Sequence[HealthRecord]: ...

    # scope history
    def events(
        self,
        user: str,
        *,
        since: int | None = None,
        until: int | None = None,
        domain: str | None = None,
    ) -> Sequence[InteractionEvent]: ...

    async def recall(
        self,
        user: str,
        query: str,
        *,
        k: int = 10,
        since: int | None = None,
        until: int | None = None,
    ) -> Sequence[Hit]: ...

    # scope spatial
    def regions(self) -> Sequence[Region]: ...

    def placements(
        self, *, region: str | None = None, owner: str | None = None
    ) -> Sequence[Placement]: ...

    def spatial_changes(self, object: str | None = None) -> Sequence[SpatialChange]: ...

    # stamps for derived views (DESIGN invariant 4)
    def lineage(self, doc_id: str) -> str | None: ...

    def revision(self, doc_id: str) -> tuple[int, int]: ...


class PeerWriter(Protocol):
    """The public writes the fast and slow loops make.  Each is queued when called and the
    awaitable it returns resolves once it is durable."""

    async def flush(self) -> None:
        """Wait until every write queued so far is applied and durable."""

    def set_preference(
        self,
        user: str,
        key: str,
        value: Any,
        *,
        source: str = "explicit",
        confidence: float = 1.0,
        condition: Condition | None = None,
        evidence: Sequence[str] = (),
        evidence_count: int = 1,
        note: str = "",
    ) -> Awaitable[Preference]: ...

    def record_event(
        self,
        user: str,
        type: EventType | str,
        domain: str,
        *,
        text: str = "",
        payload: Any = None,
        context: Any = None,
        ts: int | None = None,
        session: str = "",
    ) -> Awaitable[InteractionEvent]: ...


class PeerPort(PeerReader, PeerWriter, Protocol):
    """Both ports: what `maintain` and the feedback helpers need."""


#: the scope each read method belongs to (``None``: not personal data, always readable)
SCOPE_OF: dict[str, str | None] = {
    "device": None,
    "device_id": None,
    "users": None,
    "lineage": None,
    "revision": None,
    "profile": "core",
    "calibration": "core",
    "preferences": "core",
    "preference_history": "core",
    "routines": "core",
    "relationships": "core",
    "health": "health",
    "events": "history",
    "recall": "history",
    "regions": "spatial",
    "placements": "spatial",
    "spatial_changes": "spatial",
}
