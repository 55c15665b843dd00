"""One document replica: a pycrdt ``Doc`` with a persisted client id and delta capture.

Every committed local transaction yields exactly one delta (a Yrs v1 update), which the caller
makes durable before anything else may see it (DESIGN invariant 1).  The client id is chosen
once per (device, document) and persisted by the store (DESIGN invariant 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pycrdt import Doc

from hearthsync.crdt.kinds import DocInfo
from hearthsync.errors import CorruptDocumentError
from hearthsync.ids import LineageId

T = TypeVar("T")

#: Yjs client ids are uint32 in JavaScript; staying below 2**32 keeps us interoperable.
MAX_CLIENT_ID = 2**32 - 1
EMPTY_STATE = b"\x00"  #: the state vector of a document that holds nothing
EMPTY_UPDATE = b"\x00\x00"  #: an update that holds nothing


class Replica:
    """A document in memory.  Not thread-safe; owned by one event loop."""

    __slots__ = ("_captured", "_sub", "client_id", "doc", "incoming", "info", "lineage")

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
        """Apply an update (from the store or a peer); return the delta it actually added.

        Raises `CorruptDocumentError` if the bytes are not a Yrs update.
        """
        if self._sub is None and self.doc.get_state() == EMPTY_STATE:
            # nothing here yet: all of the update is new, so it is the delta (this also keeps
            # whatever Yrs holds pending for later, exactly as a captured delta would)
            self._merge(update)
            self._capturing()
            return update if update != EMPTY_UPDATE else None
        self._capturing()
        self._captured.clear()
        try:
            self._merge(update)
        except CorruptDocumentError:
            self._captured.clear()
            raise
        return self._take()

    def load(self, updates: Iterable[bytes]) -> None:
        """Merge what the store holds of this document (durable already: nothing to capture).
        Raises `CorruptDocumentError` for bytes that are not a Yrs update."""
        for update in updates:
            self._merge(update)

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
