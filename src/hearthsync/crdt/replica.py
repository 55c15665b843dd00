"""One document replica: a pycrdt ``Doc`` with a persisted client id and delta capture.

Every committed local transaction yields exactly one delta (a Yrs v1 update), which the caller
makes durable before anything else may see it (DESIGN invariant 1).  The client id is chosen
once per (device, document) and persisted by the store (DESIGN invariant 2).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pycrdt import Doc, get_update

from hearthsync.crdt import statevector
from hearthsync.crdt.kinds import DocInfo
from hearthsync.errors import CorruptDocumentError
from hearthsync.ids import LineageId

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Yjs client ids are uint32 in JavaScript; staying below 2**32 keeps us interoperable.
MAX_CLIENT_ID = 2**32 - 1
EMPTY_STATE = b"\x00"  #: the state vector of a document that holds nothing
EMPTY_UPDATE = b"\x00\x00"  #: an update that holds nothing


def event_field(event: Any, name: str) -> Any | None:
    """A field of a raw Yrs event (``keys`` of a map's, ``delta`` of an array's), or None when
    Yrs cannot compute it.

    Yrs 0.28 panics computing the changed keys of some merges that integrate content beyond a
    gap in an author's clock (an ``unwrap`` on an item whose content arrived deleted; found by
    the chaos harness, seed 5098).  PyO3 turns the panic into ``PanicException``, which derives
    from ``BaseException``: the caller then treats everything as changed.
    """
    try:
        return getattr(event, name)
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        log.warning("Yrs could not say what a merge changed (%s); assuming everything", exc)
        return None


class Replica:
    """A document in memory.  Not thread-safe; owned by one event loop."""

    __slots__ = (
        "_beyond",
        "_captured",
        "_sub",
        "_unchecked",
        "client_id",
        "doc",
        "incoming",
        "info",
        "lineage",
    )

    def __init__(self, info: DocInfo, *, client_id: int, lineage: LineageId) -> None:
        if not 0 < client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client id out of range: {client_id}")
        self.info = info
        self.lineage = lineage
        self.client_id = client_id
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self._captured: list[bytes] = []
        #: the delta capture, subscribed on first need: while a document is being loaded, or
        #: filled from nothing by one update, there is nothing to capture (the update *is* the
        #: delta), and a subscribed Yrs document pays for every transaction's event (a third
        #: of the cost of merging a 10,000-edit catch-up)
        self._sub: object | None = None
        #: the size of the update being merged from elsewhere, 0 during local transactions:
        #: views (`hearthsync.crdt.handles`) invalidate their caches only for remote changes
        self.incoming = 0
        #: updates merged here that hold content beyond a gap in an author's clock: Yrs shows
        #: that content, but the state vector does not count it (see `digest`)
        self._beyond: list[bytes] = []
        #: updates merged from elsewhere not yet sorted into `beyond` or not (see `settle`)
        self._unchecked: list[bytes] = []

    def _capture(self, event: Any) -> None:
        self._captured.append(event.update)

    def _capturing(self) -> None:
        if self._sub is None:
            # pycrdt's raw transaction event (``Doc._doc``): its ``update`` is encoded only when
            # read; ``Doc.observe`` wraps it in an event that also encodes the state vectors
            # and the delete set
            self._sub = self.doc._doc.observe(self._capture)

    def transact(self, change: Callable[[], T]) -> tuple[T, bytes | None]:
        """Run ``change`` in one transaction; return its result and the delta it produced.

        The delta is ``None`` when ``change`` changed nothing.
        """
        self._capturing()
        self._captured.clear()
        with self.doc.transaction(origin="local"):
            result = change()
        return result, self._take()

    def apply(self, update: bytes) -> bytes | None:
        """Apply an update (from a peer); return what to keep and forward: the update itself if
        it changed anything, else ``None``.

        Raises `CorruptDocumentError` if the bytes are not a Yrs update.
        """
        if self._sub is None and self.doc.get_state() == EMPTY_STATE:
            # nothing here yet: all of the update is new, so it is the delta (this also keeps
            # whatever Yrs holds pending for later, exactly as a captured delta would)
            self._merge(update)
            self._capturing()
            self._unchecked.append(update)
            return update if update != EMPTY_UPDATE else None
        self._capturing()
        self._captured.clear()
        try:
            self._merge(update)
        except CorruptDocumentError:
            self._captured.clear()
            raise
        self._retry_beyond()
        # What is kept and forwarded is the update as it came, not the delta Yrs reports: an
        # update beyond a gap in its author's clock shows its content at once, yet the
        # transaction's delta leaves that content out (the state vector does not count it), so
        # a restart would lose what was shown (found by the chaos harness).  Re-merging what
        # was already known is a no-op, and compaction folds any overlap away.
        changed = self._take() is not None
        if changed:
            self._unchecked.append(update)
        return update if changed else None

    def load(self, updates: Iterable[bytes]) -> None:
        """Merge what the store holds of this document (durable already: nothing to capture).
        Raises `CorruptDocumentError` for bytes that are not a Yrs update."""
        merged = list(updates)
        for update in merged:
            self._merge(update)
        self._track_gaps(merged)
        self._retry_beyond()
        self._track_gaps([])

    def _retry_beyond(self) -> None:
        """Merge again what was beyond a gap: Yrs does not always integrate, once the gap
        fills, all of what it set aside (all of it is durable already: a no-op otherwise)."""
        for update in self.beyond:
            self._merge(update)

    @property
    def beyond(self) -> list[bytes]:
        """The updates merged here that hold content beyond a gap in an author's clock."""
        self.settle()
        return self._beyond

    def settle(self) -> None:
        """Sort the updates merged from elsewhere since the last call: keep those holding
        content beyond a clock gap (see `beyond`).

        Telling costs a decode of each update (5 ms for a 10,000-edit catch-up, as much as
        merging it), so `apply` leaves it to whoever asks first: the owner calls this once the
        merge is durable and acknowledged, off the path of the acknowledgement.
        """
        if self._unchecked:
            new, self._unchecked = self._unchecked, []
            self._track_gaps(new)

    def _track_gaps(self, new: list[bytes]) -> None:
        """Keep the updates holding content beyond a clock gap, until the gap fills."""
        if not (new or self._beyond):
            return
        state = self.doc.get_state()
        self._beyond = [u for u in (*self._beyond, *new) if get_update(u, state)[:1] != b"\x00"]

    def digest(self) -> bytes:
        """What an inventory compares (SPEC §6.3): a hash of the canonical state vector, and,
        while content beyond a clock gap is held, of that content too.  Two replicas with the
        same state vector but different content beyond a gap would otherwise look in sync for
        good (found by the chaos harness)."""
        digest = hashlib.blake2b(statevector.canonical(self.doc.get_state()), digest_size=8)
        if self.beyond:
            state = self.doc.get_state()
            remainders = sorted(get_update(u, state) for u in self.beyond)
            digest.update(b"\x00beyond")
            for remainder in remainders:
                digest.update(hashlib.blake2b(remainder, digest_size=16).digest())
        return digest.digest()

    def _merge(self, update: bytes) -> None:
        self.incoming = max(len(update), 1)
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise CorruptDocumentError(self.info.doc_id, str(exc)) from None
        finally:
            self.incoming = 0

    def adopt(self, state: bytes) -> None:
        """Load ``state`` that is already durable (no delta to store): a rebuilt replica."""
        self.load([state])

    def _take(self) -> bytes | None:
        captured, self._captured = self._captured, []
        if not captured:
            return None
        if len(captured) == 1:
            return captured[0]
        from pycrdt import merge_updates

        return merge_updates(*captured)

    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def encode_state(self) -> bytes:
        """The whole document as one update (what a snapshot holds)."""
        return self.doc.get_update()
