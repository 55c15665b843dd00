"""One document replica: a pycrdt ``Doc`` with a persisted client id and delta capture.

Every committed local transaction yields exactly one delta (a Yrs v1 update), which the caller
makes durable before anything else may see it (DESIGN invariant 1).  The client id is chosen
once per (device, document) and persisted by the store (DESIGN invariant 2).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pycrdt import Doc, get_update, merge_updates

from hearthsync.crdt import statevector, updates
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


@dataclass(frozen=True, slots=True)
class _Piece:
    """A run of structs held aside, as an update of its own; or (``deletes``) the deletion
    of a run of clocks not seen here yet, as an update holding only that deletion."""

    run: updates.Run
    data: bytes
    source: bytes  #: the key (`_key`) of the update it was read from
    deletes: bool = False
    #: ``(client, clock, origin)`` of the items of the update it was read from that were
    #: inserted after another (for a map entry, the entry it overwrites): that update's
    #: deletion of an origin waits while the item does (`_keep`)
    items: tuple[tuple[int, int, tuple[int, int]], ...] = ()
    bare: bytes = b""  #: its items without deletions

    def covers(self, run: updates.Run, *, deletes: bool = False) -> bool:
        mine = self.run
        return (
            self.deletes == deletes
            and mine.client == run.client
            and mine.start <= run.start
            and run.end <= mine.end
        )

    def seen(self, vector: statevector.StateVector) -> int:
        """How far ``vector`` has seen this run's client."""
        return vector.get(self.run.client, 0)


class _Spans:
    """Clock ranges per client, to tell at once whether one of them holds a given range."""

    __slots__ = ("_by_client",)

    def __init__(self, found: Iterable[updates.Run]) -> None:
        by_client: dict[int, list[tuple[int, int]]] = {}
        for run in found:
            by_client.setdefault(run.client, []).append((run.start, run.end))
        #: per client: the starts, sorted, and the greatest end of the ranges up to each
        self._by_client: dict[int, tuple[list[int], list[int]]] = {}
        for client, spans in by_client.items():
            spans.sort()
            ends = itertools.accumulate((end for _, end in spans), max)
            self._by_client[client] = ([start for start, _ in spans], list(ends))

    def covers(self, client: int, start: int, end: int) -> bool:
        starts, reach = self._by_client.get(client, ([], []))
        index = bisect.bisect_right(starts, start)  # the ranges that start at or before it
        return index > 0 and reach[index - 1] >= end


class _Holding:
    """What holding the runs of one update aside, one by one (`Replica._hold_run`), reads once:
    the runs held before it (`_Spans`: the update's own runs never overlap, so those it adds
    cannot cover its others) and its key.  Asked of every piece held for every run, and the
    update hashed whole for every run, an update of 1,400 authors' runs took half a second."""

    __slots__ = ("key", "spans")

    def __init__(self, aside: list[_Piece], source: bytes) -> None:
        self.spans = _Spans(piece.run for piece in aside if not piece.deletes)
        self.key = _key(source)


_SERIALS = itertools.count(1)


class Replica:
    """A document in memory.  Not thread-safe; owned by one event loop."""

    __slots__ = (
        "_aside",
        "_captured",
        "_closed",
        "_digest",
        "_held",
        "_snapshot",
        "_sources",
        "_state",
        "_still",
        "_sub",
        "_subs",
        "_unchecked",
        "_version",
        "client_id",
        "doc",
        "incoming",
        "info",
        "lineage",
        "serial",
        "tainted",
    )

    def __init__(self, info: DocInfo, *, client_id: int, lineage: LineageId) -> None:
        if not 0 < client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client id out of range: {client_id}")
        self.info = info
        self.lineage = lineage
        self.client_id = client_id
        #: unique among the replicas of this process: with `version`, what `revision` is
        self.serial = next(_SERIALS)
        self.doc: Doc[Any] = Doc(client_id=client_id)
        self._captured: list[bytes] = []
        #: the delta capture, subscribed on first need: while a document is being loaded, or
        #: filled from nothing by one update, there is nothing to capture (the update *is* the
        #: delta), and a subscribed Yrs document pays for every transaction's event (a third
        #: of the cost of merging a 10,000-edit catch-up)
        self._sub: Any | None = None
        #: what others subscribed to this document (`track`), dropped by `close`
        self._subs: list[Any] = []
        self._closed = False
        #: the size of the update being merged from elsewhere, 0 during local transactions:
        #: views (`hearthsync.crdt.handles`) invalidate their caches only for remote changes
        self.incoming = 0
        #: runs of updates held aside, not shown, until the gap before them fills (`beyond`)
        self._aside: list[_Piece] = []
        #: the state vector at which nothing held aside could be merged (`_merge_ready`)
        self._still = b""
        #: the keys (`_key`) of the updates those runs came from, to drop repeats cheaply
        self._held: set[bytes] = set()
        #: once `tainted`: every update this document holds, to replay (`_replayed`)
        self._sources: list[bytes] = []
        #: the snapshot being loaded (`load`), replayed as one (`_replayed`)
        self._snapshot: bytes | None = None
        #: updates merged into an empty document, not yet told (`settle`), each with what
        #: `updates.runs` read of it when it came from a peer
        self._unchecked: list[tuple[bytes, tuple[list[updates.Run], bytes] | None]] = []
        #: Yrs has shown content beyond a gap: replace this replica with `rebuilt`
        self.tainted = False
        #: counts changes to the document (every merge, every transaction that changed it),
        #: so that `digest` is computed once per change, not once per inventory entry
        self._version = 0
        self._digest: tuple[int, bytes] | None = None
        self._state: tuple[int, bytes] | None = None

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever what this replica shows may have changed (every merge and every
        local transaction, deletions included, which a state vector does not count; or a
        replica in its place): what a view derived from the document is stamped with."""
        return self.serial, self._version

    def track(self, subscription: T) -> T:
        """Note a subscription to this document, to be dropped by `close` (at once if closed
        already: nothing merges into a closed replica, so there is nothing to observe)."""
        self._subs.append(subscription)
        if self._closed:
            self.close()
        return subscription

    def close(self) -> None:
        """Drop every subscription to this document.

        A Yrs document holds its observers' callbacks on the Rust side, where Python's garbage
        collector cannot see them: a replica, its views and its peer, which reference the
        document, would be kept alive by it for good (found by the chaos harness: 3 MB per
        schedule).  The document stays readable."""
        for subscription in (self._sub, *self._subs):
            if subscription is not None:
                subscription.drop()
        self._sub = None
        self._subs.clear()
        self._closed = True

    def _capture(self, event: Any) -> None:
        self._version += 1
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
        self.settle()
        if self.tainted:
            # a local write would build on what Yrs showed beyond a gap (its origins there),
            # and wait with it, unseen, once the replica is rebuilt
            raise RuntimeError(f"{self.info.doc_id}: rebuild this replica before writing to it")
        self._capturing()
        self._captured.clear()
        with self.doc.transaction(origin="local"):
            result = change()
        return result, self._take()

    def apply(self, update: bytes) -> bytes | None:
        """Apply an update (from a peer); return what to keep and forward: the update itself if
        it brought anything new, else ``None``.

        What lies beyond a gap in its author's clock is held aside (`beyond`), kept and
        forwarded but not shown, until the gap fills.  When Yrs has already shown some of it,
        the replica is `tainted`: its owner replaces it with `rebuilt` before anyone reads.

        Raises `CorruptDocumentError`, and changes nothing, if the bytes are not a Yrs update
        as Yrs writes them (`updates.runs`).
        """
        if self._held and _key(update) in self._held:
            return None  # an update held aside already (sent on by every robot that got it)
        try:
            # read whole before Yrs sees it, into an empty document too (half a microsecond
            # per struct): Yrs panics on some bytes, overflows its stack on values nested
            # deeply enough (the process died), and ignores bytes after the update, which
            # were kept, sent on, and read as a delete set later (found in review)
            read = updates.runs(update)
        except updates.UpdateFormatError as exc:
            raise CorruptDocumentError(self.info.doc_id, str(exc)) from None
        self._refuse_too_many_clients(read[0])
        if self._sub is None and not self._aside and self.doc.get_state() == EMPTY_STATE:
            # nothing here yet: all of the update is new, so it is the delta (this also keeps
            # whatever Yrs holds pending for later, exactly as a captured delta would).  What
            # Yrs did not integrate (content beyond a gap, deletions of what is not here) is
            # sorted later (`settle`, from what was read here), off the acknowledgement's
            # path, but before anything reads the document (`DocumentSet.get`)
            self._merge(update)
            self._capturing()
            self._unchecked.append((update, read))
            return update if update != EMPTY_UPDATE else None
        self.settle()
        if self.tainted:  # to be rebuilt: the replay (`_replayed`) needs this update too
            self._sources.append(update)
        self._capturing()
        self._captured.clear()
        try:
            held = self._merge_or_hold(update, read=read)
        except CorruptDocumentError:
            self._captured.clear()
            raise
        self._merge_ready()
        # What is kept and forwarded is the update as it came, not the delta Yrs reports: the
        # delta leaves out what is held aside, which must survive a restart and reach the
        # others.  Re-merging what was already known is a no-op; compaction folds overlaps.
        changed = self._take() is not None
        return update if changed or held else None

    def _refuse_too_many_clients(self, found: list[updates.Run]) -> None:
        """`CorruptDocumentError` if merging an update whose runs are ``found`` could make this
        document hold more authors than a state vector may name (`statevector.MAX_ENTRIES`),
        before anything changes.  Merged, such an update was stored, then every reading of the
        document's state vector raised, and the store no longer opened (found in review).

        The authors counted are those of the document's state vector, of what it holds aside
        (they show once what they wait for comes: an update of one author let 4,200 held
        ones in; found in review), and of every run of the update, held aside or not."""
        theirs = {run.client for run in found}
        here = statevector.decode(self.state_vector())
        held = {piece.run.client for piece in self._aside if not piece.deletes}
        if len(theirs) + len(here) + len(held) <= statevector.MAX_ENTRIES:
            return
        authors = len(theirs | here.keys() | held)
        if authors > statevector.MAX_ENTRIES:
            raise CorruptDocumentError(
                self.info.doc_id,
                f"the update would make the document hold {authors} authors, over "
                f"{statevector.MAX_ENTRIES}",
            )

    def load(self, updates: Iterable[bytes], *, snapshot: bytes | None = None) -> None:
        """Merge what the store holds of this document (durable already: nothing to capture):
        its ``snapshot`` (`encode_state`), then its updates as they came.  Raises
        `CorruptDocumentError` for bytes that are not a Yrs update."""
        merged = list(updates)
        if snapshot is not None:
            self._snapshot = snapshot
            merged.insert(0, snapshot)
        for update in merged:
            self._merge(update)
        self._unchecked.extend((update, None) for update in merged)
        self.settle()
        if self.tainted:  # not shared with anyone yet: replace the document in place
            fresh = self._replayed()
            self.doc, self._aside, self._held = fresh.doc, fresh._aside, fresh._held
            self._version += 1
            self.tainted = False
        self._snapshot = None
        self._merge_ready()

    def _merge_or_hold(
        self,
        update: bytes,
        *,
        snapshot: bool = False,
        read: tuple[list[updates.Run], bytes] | None = None,
    ) -> bool:
        """Merge what of ``update`` continues the document; hold aside what lies beyond a gap;
        return whether anything held is new here.

        The update is read before it is merged: merging content beyond a gap makes Yrs show
        it (even content held already, and its overwrites then report a change, so robots
        would send each other the same update for ever), and taking it out again afterwards
        (`rebuilt`) loses the deletions Yrs keeps pending for items it has not seen.  Reading
        costs about half a microsecond per struct.

        Its items are merged first, then its deletions, but for those of the entries its items
        not shown overwrite (`_keep`): those show until their successors do.  Yrs would
        delete them at once and show their successors only once the gap fills, never if it
        never does (a revoked robot's last writes: its earlier value vanished from every robot;
        chaos seeds 2055, 490824).  What is held keeps the update's whole delete set, applied
        as its items show (`_merge_ready`).  A ``snapshot`` (`encode_state`) holds only
        deletions that applied, or wait for what they delete: all of them apply.  ``read``:
        what `updates.runs` read of ``update`` already.
        """
        try:
            found, delete_set = read or updates.runs(update)
        except updates.UpdateFormatError:  # stored before `apply` refused it: Yrs has the last word
            self._merge(update)
            return self._hold_rest(update, update) | self._hold_deletions(
                _delete_set(update, self.doc.get_state()), update
            )
        vector = statevector.decode(self.doc.get_state())
        later = [run for run in found if run.start > vector.get(run.client, 0)]
        if delete_set[:1] == b"\x00" and not later:  # the common case: merged whole
            self._merge(update)
            return self._hold_rest(update, update)
        part = updates.encode(update, [r for r in found if r not in later], b"\x00")
        self._merge(part)
        after = statevector.decode(self.doc.get_state())
        waiting = [run for run in found if run.end > after.get(run.client, 0)]
        # read only when something waits: otherwise every deletion applies (`_keep`)
        items = _items(update, found) if waiting and not snapshot else ()
        kept = b"\x00" if snapshot else delete_set  # a snapshot's deletions apply below
        held = False
        if waiting:  # (what holding reads hashes the update)
            holding = _Holding(self._aside, update)
            for run in waiting:
                held |= self._hold_run(run, update, kept, update, items, holding)
        if delete_set[:1] == b"\x00":
            return held
        keep = _keep(items, after)
        now = updates.without(delete_set, keep) if keep else delete_set
        self._merge(b"\x00" + now)
        return held | self._hold_deletions(now, update)

    def _hold_run(
        self,
        run: updates.Run,
        update: bytes,
        delete_set: bytes,
        source: bytes,
        items: tuple[tuple[int, int, tuple[int, int]], ...],
        holding: _Holding,
    ) -> bool:
        """Hold ``run`` of ``update`` aside, unless held already; ``source`` is the update as
        it came (``update`` may be a part of it), keyed to drop its repeats; ``items`` those
        of ``update`` (`_items`).  What is held stands on its own, as sent to others: the run,
        with ``delete_set`` but for the entries that only the update's other items overwrite,
        whose deletions wait with those.  ``holding``: what was held before the update whose
        runs are held one by one (`_Holding`)."""
        if holding.spans.covers(run.client, run.start, run.end):
            return False
        key = holding.key
        if items:  # its own items, and not the deletions that wait with the update's others
            own = tuple(i for i in items if i[0] == run.client and run.start <= i[1] < run.end)
            others = {i[2] for i in items} - {i[2] for i in own}
            if others:
                delete_set = updates.without(delete_set, others)
            items = own
        data = updates.encode(update, [run], delete_set)
        bare = data if delete_set[:1] == b"\x00" else updates.encode(update, [run], b"\x00")
        self._aside.append(_Piece(run, data, key, items=items, bare=bare))
        self._held.add(key)
        self._version += 1  # the digest counts what is held aside
        return True

    def _hold_rest(self, update: bytes, source: bytes) -> bool:
        """Hold aside the runs of ``update`` the document did not integrate (beyond a gap, or
        waiting for an origin); return whether any was new here."""
        state = self.doc.get_state()
        if get_update(update, state)[:1] == b"\x00":
            return False  # all of it integrated: the common case, told without Python decoding
        vector = statevector.decode(state)
        try:
            found, delete_set = updates.runs(update)
        except updates.UpdateFormatError as exc:  # Yrs merged it: content kinds we never write
            log.warning("%s: cannot hold aside an update's gap: %s", self.info.doc_id, exc)
            return False
        items = _items(update, found) if delete_set[:1] != b"\x00" else ()
        new = False
        holding = _Holding(self._aside, source)
        for run in found:
            seen = vector.get(run.client, 0)
            if run.end <= seen:
                continue
            if run.start > seen:
                self.tainted = True  # Yrs may have shown it: the document is rebuilt without
            new |= self._hold_run(run, update, delete_set, source, items, holding)
        if new and items and not self.tainted:
            # merged whole (`settle`): did it delete an entry an item waiting overwrites?
            keep = _keep(items, vector)
            if keep and updates.without(delete_set, keep) != delete_set:
                self.tainted = True  # the replay holds that deletion with the item
        return new

    def _hold_deletions(
        self, delete_set: bytes, source: bytes, vector: statevector.StateVector | None = None
    ) -> bool:
        """Hold aside the deletions of clocks this document has not seen; return whether any
        was new here.

        Yrs keeps such a deletion pending until what it deletes arrives, but leaves it out of
        every encoding of the document: a snapshot would lose it, and an update bringing only
        it would look like nothing new, so it would be neither stored nor passed on.  After a
        restart the item would show where the robots that never restarted hide it (found in
        review: a user's records removed before they arrived).  Held aside, it is stored, sent
        on in diffs and snapshotted until what it deletes is here."""
        if delete_set[:1] == b"\x00":
            return False  # deletes nothing: the common case
        try:
            ranges = updates.deleted_ranges(delete_set)
        except updates.UpdateFormatError:
            return False  # Yrs merged it: it has the last word
        if vector is None:
            vector = statevector.decode(self.doc.get_state())
        # what is held of each client already, looked up by halving: checked against every
        # piece held, 20,000 ranges of one update kept the event loop for 40 s (found in review)
        held = _Spans(p.run for p in self._aside if p.deletes)
        key = _key(source)
        added: set[tuple[int, int, int]] = set()  # and what this delete set names twice
        new = False
        for client, spans in ranges.items():
            seen = vector.get(client, 0)
            for start, end in spans:
                start = max(start, seen)
                if end <= seen or held.covers(client, start, end) or (client, start, end) in added:
                    continue
                added.add((client, start, end))
                run = updates.Run(client, start, end, 0, 0, 0)
                data = updates.delete_set_of({client: [(run.start, run.end)]})
                self._aside.append(_Piece(run, data, key, deletes=True))
                self._held.add(key)
                self._version += 1
                new = True
        return new

    def _merge_ready(self) -> None:
        """Merge what was held aside and no longer lies beyond a gap, until nothing moves.

        Nothing moves while the state vector stands where nothing moved last time: what is
        held waits for clocks (its own author's, or its origins') no struct has brought since,
        and each piece was merged as far as it goes when it was held.  Without that, every
        call merged again each piece waiting for an origin (its clocks lie within the state
        vector): an update of 300 authors' overwrites of an entry not yet here took 6 s to
        hold aside, one of 1,400 over ten minutes (found in review)."""
        while self._aside:
            state = self.doc.get_state()
            if state == self._still:
                return
            vector = statevector.decode(state)
            ready = [
                p
                for p in self._aside
                if not p.deletes and p.run.start <= p.seen(vector) < p.run.end
            ]
            for piece in ready:  # its items, then its deletions as far as they show
                self._merge(piece.bare)
            after = statevector.decode(self.doc.get_state())
            for piece in ready:
                if piece.data is not piece.bare:
                    keep = _keep(piece.items, after)
                    data = _without(piece.data, keep) if keep else piece.data
                    self._merge(data)
                    # and what it deletes that is not here yet, as `_merge_or_hold` holds it
                    # (deletions move no state vector: ``after`` stands, read once for all)
                    self._hold_deletions(_delete_set(data, self.doc.get_state()), piece.data, after)
            done = [p for p in self._aside if p.run.end <= p.seen(after)]
            if done:
                for piece in done:
                    if piece.deletes:  # what it deletes is here: Yrs applied it, or does now
                        self._merge(piece.data)
                    elif piece.data is not piece.bare:
                        # its items show, Yrs integrated them on its own (they waited for an
                        # origin that came): the deletions that waited with them apply now
                        # (found in review: an element removed with them stayed for good)
                        rest = _delete_set(piece.data, self.doc.get_state())
                        self._merge(b"\x00" + rest)
                        self._hold_deletions(rest, piece.data, after)
                self._aside = [p for p in self._aside if p.run.end > p.seen(after)]
                self._held = {p.source for p in self._aside}
            if after == vector:
                self._still = self.doc.get_state()
                return

    @property
    def beyond(self) -> list[bytes]:
        """What is held aside: runs of updates merged here that lie beyond a gap in their
        author's clock (or wait for an origin that has not arrived), one update each."""
        self.settle()
        return [piece.data for piece in self._aside]

    def settle(self) -> None:
        """Tell whether the updates merged into an empty document since the last call hold
        anything beyond a gap (then hold it aside and mark the replica `tainted`).

        An update from a peer is told from what `updates.runs` read of it as it came (its
        runs against the state vector); one loaded from the store costs a decode in Yrs (5 ms
        for a 10,000-edit catch-up, as much as merging it).  So `apply` leaves it to whoever
        asks first: the owner calls this once the merge is durable and acknowledged, off the
        path of the acknowledgement.
        """
        if self._unchecked:
            unchecked, self._unchecked = self._unchecked, []
            state = self.doc.get_state()  # holding aside merges nothing: it stays as it is
            vector = statevector.decode(state)
            deletions: list[tuple[bytes, bytes]] = []
            for update, read in unchecked:
                if read is not None:  # all of its structs integrated if the state covers them
                    found, delete_set = read
                    if all(run.end <= vector.get(run.client, 0) for run in found):
                        if delete_set[:1] != b"\x00":  # the rest deletes
                            deletions.append((delete_set, update))
                        continue
                else:
                    rest = bytes(get_update(update, state))  # the one decode, in Yrs
                    if rest[:1] == b"\x00":  # all of its structs integrated: the rest deletes
                        if rest[1:2] != b"\x00":
                            deletions.append((rest[1:], update))
                        continue
                self._hold_rest(update, update)
                deleted = _delete_set(update, state)
                try:  # not the deletions that wait with items held (`_merge_or_hold`)
                    found = read[0] if read is not None else updates.runs(update)[0]
                    keep = _keep(_items(update, found), vector)
                except updates.UpdateFormatError:
                    keep = set()
                if keep:
                    deleted = updates.without(deleted, keep)
                deletions.append((deleted, update))
            if self.tainted:  # they are all this document holds: `_replayed` reads them
                # (and sorts their deletions: what Yrs showed beyond a gap counts as seen in
                # the state read here, so what is deleted of it is told wrongly)
                self._sources.extend(u for u, _ in unchecked if u is not self._snapshot)
            else:
                for deleted, update in deletions:
                    self._hold_deletions(deleted, update, vector)

    def rebuilt(self) -> Replica:
        """This replica without what Yrs showed beyond a gap: a new document, same client id,
        same content held aside.  The owner puts it in this one's place (views follow)."""
        return self._replayed()

    def _replayed(self) -> Replica:
        """A new replica given every update this one holds, each read before it is merged.

        Only updates merged without being read first can have put content beyond a gap in
        the document: one merged into an empty document (`apply`, `settle`), or those a store
        loads (`load`).  The document itself cannot be cut back: when Yrs showed an item
        beyond a gap, it deleted the map entry that item overwrote, and dropped that entry's
        content (found by Hypothesis: a replica given a merged update showed a key as
        removed, one given the same updates one by one showed its value).  So the updates it
        was made of are merged again, read this time, one by one in the order they came: each
        update's deletions of the entries its own items beyond the gap overwrite wait with
        those items (`_merge_or_hold`), which one merge of all of them could not tell apart
        from the same deletions made by another update."""
        fresh = Replica(self.info, client_id=self.client_id, lineage=self.lineage)
        if self._snapshot is not None:
            fresh._merge_or_hold(self._snapshot, snapshot=True)
            fresh._merge_ready()
        for source in [*self._sources, *(piece.data for piece in self._aside)]:
            fresh._merge_or_hold(source)
            fresh._merge_ready()
        self._sources = []
        return fresh

    def digest(self) -> bytes:
        """What an inventory compares (SPEC §6.3): a hash of the canonical state vector,
        when anything was deleted of the canonical delete set, and when anything is held
        aside of the clock ranges it holds (`_held_ranges`).

        The delete set is in because deletions apply at once, even of items not seen yet:
        replicas with equal state vectors could otherwise show different content and look in
        sync for good (found by the chaos harness).  Any diff carries the whole delete set, so
        one exchange settles it.  What is held aside is in so that it reaches every robot
        before its gap fills: the entries it overwrites show until it does, so two robots that
        show the same may yet differ in it, and the one without it would fall behind when the
        gap fills elsewhere (live links exchange no inventory).  So are deletions of what has
        not arrived: a catch-up answer is offered on, not relayed (`Session.relays`), and the
        offer must tell a robot without them (found in review).
        """
        if self._digest is not None and self._digest[0] == self._version:
            return self._digest[1]
        state = self.doc.get_state()
        digest = hashlib.blake2b(statevector.canonical(state), digest_size=8)
        deleted = updates.deletions(self.doc.get_update(state))
        if deleted != EMPTY_STATE:  # nothing deleted: the plain hash of the state vector
            digest.update(deleted)
        if self._aside:
            digest.update(_held_ranges(self._aside, state))
        self._digest = (self._version, digest.digest())
        return self._digest[1]

    def _merge(self, update: bytes) -> None:
        self._version += 1
        self.incoming = max(len(update), 1)
        try:
            self.doc.apply_update(update)
        except ValueError as exc:
            raise CorruptDocumentError(self.info.doc_id, str(exc)) from None
        finally:
            self.incoming = 0

    def renewed(self, client_id: int) -> Replica:
        """This replica under a new client id: what it shows, and what it holds aside as it
        holds it (a snapshot would keep the held items without the deletions that wait with
        them, `encode_state`)."""
        self.settle()
        if self.tainted:
            raise RuntimeError(f"{self.info.doc_id}: rebuild this replica before renewing it")
        fresh = Replica(self.info, client_id=client_id, lineage=self.lineage)
        fresh.load([], snapshot=self.doc.get_update())
        fresh._aside, fresh._held = list(self._aside), set(self._held)
        fresh._merge_ready()
        return fresh

    def adopt(self, state: bytes) -> None:
        """Load ``state`` (`encode_state`) that is already durable (no delta to store)."""
        self.load([], snapshot=state)

    def _take(self) -> bytes | None:
        captured, self._captured = self._captured, []
        if not captured:
            return None
        if len(captured) == 1:
            return captured[0]
        return merge_updates(*captured)

    def state_vector(self) -> bytes:
        """The document's state vector (as Yrs encodes it), read once per change."""
        if self._state is None or self._state[0] != self._version:
            self._state = (self._version, self.doc.get_state())
        return self._state[1]

    def encode_state(self) -> bytes:
        """The whole document as one update (what a snapshot holds), with what is held aside.

        Sorted first (`settle`): a replica Yrs showed content beyond a gap in must be rebuilt
        before it is saved, or the snapshot keeps what Yrs dropped and replaces the updates
        that still held it (found in review: a compaction right after a catch-up)."""
        self.settle()
        if self.tainted:
            raise RuntimeError(f"{self.info.doc_id}: rebuild this replica before saving it")
        update = self.doc.get_update()
        if self._aside:
            # the items held without their updates' deletions, which would be read back as
            # deletions that applied (`load`): one whose item shows after a restart is
            # settled by the next exchange with a robot that applied it (`digest`)
            held = (piece.data if piece.deletes else piece.bare for piece in self._aside)
            update = merge_updates(update, *held)
        return update


def _held_ranges(aside: list[_Piece], state: bytes) -> bytes:
    """What ``aside`` holds, canonically: the clock ranges not seen in ``state`` (a state
    vector) of its runs, then of its deletions, each as a canonical delete set (clients
    ascending, ranges sorted and joined), whatever updates they came in."""
    vector = statevector.decode(state)
    out = bytearray()
    for deletes in (False, True):
        ranges: dict[int, list[tuple[int, int]]] = {}
        for piece in aside:
            start = max(piece.run.start, piece.seen(vector))
            if piece.deletes == deletes and start < piece.run.end:
                ranges.setdefault(piece.run.client, []).append((start, piece.run.end))
        out += statevector.canonical_ranges(ranges)
    return bytes(out)


def _items(update: bytes, found: list[updates.Run]) -> tuple[tuple[int, int, tuple[int, int]], ...]:
    """``(client, clock, origin)`` of the items of ``found`` (runs of ``update``) inserted
    after another item."""
    try:
        return tuple(
            (run.client, clock, origin)
            for run in found
            for clock, origin in updates.origins(update, run)
        )
    except updates.UpdateFormatError:
        return ()


def _keep(
    items: tuple[tuple[int, int, tuple[int, int]], ...], vector: statevector.StateVector
) -> set[tuple[int, int]]:
    """The origins of ``items`` whose deletion waits: those of items ``vector`` has not seen,
    but for those an item it has seen was inserted after too."""
    waiting: set[tuple[int, int]] = set()
    shown: set[tuple[int, int]] = set()
    for client, clock, origin in items:
        (shown if clock < vector.get(client, 0) else waiting).add(origin)
    return waiting - shown


def _without(update: bytes, ids: set[tuple[int, int]]) -> bytes:
    """``update`` without the deletion of ``ids``."""
    if not ids:
        return update
    try:
        found, delete_set = updates.runs(update)
        return updates.encode(update, found, updates.without(delete_set, ids))
    except updates.UpdateFormatError:
        return update


def _key(update: bytes) -> bytes:
    """What identifies an update among those held aside (its digest: the update may be large)."""
    return hashlib.blake2b(update, digest_size=16).digest()


def _delete_set(update: bytes, state: bytes) -> bytes:
    """The delete set of ``update`` (its bytes after the structs).

    Yrs strips the structs ``state`` (a document's, after merging the update) has seen, which as
    a rule is all of them, without a decode in Python; an update with structs beyond it is read
    here."""
    stripped = bytes(get_update(update, state))
    if stripped[:1] == b"\x00":
        return stripped[1:]
    try:
        return updates.runs(update)[1]
    except updates.UpdateFormatError:  # content kinds we never write: Yrs has the last word
        return b"\x00"
