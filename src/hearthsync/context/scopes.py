"""A peer reader that refuses every read outside a task's scopes.

`get_context` reads through a `ScopedReader` only, so "never reads a scope the task is not
granted" is structural, not a matter of every branch remembering an ``if``: a read of a withheld
scope raises `ScopeDeniedError`, which the engine treats as a bug (it asks `may` first).
"""

from __future__ import annotations

from collections.abc import Sequence

from hearthsync.context.port import SCOPE_OF, Hit, PeerReader
from hearthsync.errors import LocalError
from hearthsync.model.records import (
    Calibration,
    Condition,
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


class ScopeDeniedError(LocalError):
    """A read touched a scope the current task is not granted; ``scope`` names it."""

    def __init__(self, scope: str, task: str) -> None:
        super().__init__(f"task {task!r} is not granted the {scope!r} scope")
        self.scope = scope
        self.task = task


class ScopedReader:
    """The reads of ``peer`` that ``scopes`` allow, for ``task``."""

    def __init__(self, peer: PeerReader, task: str, scopes: Sequence[str]) -> None:
        self._peer = peer
        self.task = task
        self.scopes = tuple(scopes)

    def may(self, scope: str) -> bool:
        return scope in self.scopes

    def _need(self, method: str) -> PeerReader:
        scope = SCOPE_OF[method]
        if scope is not None and scope not in self.scopes:
            raise ScopeDeniedError(scope, self.task)
        return self._peer

    @property
    def peer_device_id(self) -> str:
        return self._peer.device_id

    # core
    def profile(self, user: str) -> Profile | None:
        return self._need("profile").profile(user)

    def calibration(self, user: str) -> Calibration:
        return self._need("calibration").calibration(user)

    def preferences(self, user: str) -> Sequence[Preference]:
        return self._need("preferences").preferences(user)

    def preference_history(self, user: str, key: str, condition: Condition) -> Sequence[Preference]:
        return self._need("preference_history").preference_history(user, key, condition)

    def routines(self) -> Sequence[Routine]:
        return self._need("routines").routines()

    def relationships(self, subject: str) -> Sequence[Relationship]:
        return self._need("relationships").relationships(subject)

    # health
    def health(self, user: str) -> Sequence[HealthRecord]:
        return self._need("health").health(user)

    # history
    def events(self, user: str, *, since: int, until: int) -> Sequence[InteractionEvent]:
        return self._need("events").events(user, since=since, until=until)

    async def recall(self, user: str, query: str, *, k: int) -> Sequence[Hit]:
        return await self._need("recall").recall(user, query, k=k)

    # spatial
    def regions(self) -> Sequence[Region]:
        return self._need("regions").regions()

    def placements(self) -> Sequence[Placement]:
        return self._need("placements").placements()

    def spatial_changes(self) -> Sequence[SpatialChange]:
        return self._need("spatial_changes").spatial_changes()

    # stamps: no personal data
    def stamp(self, doc_id: str) -> tuple[str | None, tuple[int, int]]:
        return self._peer.lineage(doc_id), self._peer.revision(doc_id)
