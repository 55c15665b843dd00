"""The documents of one peer, in memory and durable, with group commit.

``DocumentSet`` owns every `Replica` and the only coroutine that writes to SQLite (the
flusher).  A write is a small function that changes a replica; `write` queues it and returns a
future that resolves, with what the function returned, once the change is durable.  The
flusher takes everything queued, applies it with one pycrdt transaction per document (one
delta each; one per `CHANGES_PER_TRANSACTION` writes of a busy document), commits all deltas
and embeddings in one SQLite transaction, then resolves every waiting writer's future at once.
While it commits, new writes queue up for the next batch: the busier the peer, the larger the
batches (group commit).

Each write has its own future (not a shared one): cancelling one waiter must not cancel the
others' acknowledgement, and a future costs less than ``asyncio.shield`` around a shared one.

Key invariants:

1. A write's awaitable returns only after the SQLite transaction holding its delta committed.
2. In memory, a replica never runs ahead of the disk by more than the batch being committed;
   if that commit fails, its deltas are carried into the next batch, never dropped.
3. Compaction happens in the flusher, between batches, when each replica equals its durable
   state; so a snapshot never holds anything that was not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
from pycrdt import Array

from hearthsync.crdt import statevector
from hearthsync.crdt.kinds import HOME, DocInfo, Kind, parse
from hearthsync.crdt.replica import MAX_CLIENT_ID, Replica, event_field
from hearthsync.errors import ClosedError, CorruptDocumentError, DecryptionError, RemoteError
from hearthsync.ids import DocId
from hearthsync.offload import THREAD, Offload
from hearthsync.store.embedding import Embedder
from hearthsync.store.sqlite import Batch, DocRow, SqliteStore, StoredDoc, VectorRow

log = logging.getLogger(__name__)

Change = Callable[[Replica], Any]

#: compact a document once its log outgrows its snapshot and this many bytes
COMPACT_MIN_LOG_BYTES = 16_384
#: the most writes to one document applied in one pycrdt transaction (one delta)
CHANGES_PER_TRANSACTION = 256


@dataclass(frozen=True, slots=True)
class ToEmbed:
    """An event whose text is embedded in the same transaction as the event itself."""

    index_name: str
    event_id: str
    ts: int
    text: str
    record: str | None = None  #: the event as stored, kept with its embedding for recall


@dataclass(slots=True)
class _Queue:
    #: per document, each queued change with the future of its writer
    changes: dict[DocId, list[tuple[Change, asyncio.Future[Any]]]] = field(default_factory=dict)
    remote: list[tuple[str, bytes, str]] = field(default_factory=list)  # applied in memory
    remote_docs: set[str] = field(default_factory=set)  #: the documents of ``remote``
    #: the Zstandard frames remote updates arrived in, by the ``id`` of the update's bytes
    #: (held by ``remote``): stored as they are, not compressed again
    packed: dict[int, bytes] = field(default_factory=dict)
    client_ids: dict[DocId, int] = field(default_factory=dict)  # renewed (invariant 2)
    embed: list[ToEmbed] = field(default_factory=list)
    #: events documents whose merged events are unknown: embed whatever has no embedding yet
    rescan: set[DocId] = field(default_factory=set)
    meta: dict[str, str] = field(default_factory=dict)
    done: asyncio.Future[None] | None = None
    #: the vector indexes the batch embeds events of, once it is taken (carried ones too)
    indexes: set[str] = field(default_factory=set)
    #: what its changes returned, when it landed though its commit was cancelled
    landed: list[Any] | None = None


VectorSink = Callable[[Sequence[VectorRow], np.ndarray], None]
#: a batch's embeddings: the rows to store, and their vectors as stored (the float16 values
#: of the rows' blobs, as float32: what reading the rows back gives), one row each
Embedded = tuple[list[VectorRow], np.ndarray]
#: told, after each commit, every (document, delta, origin) that just became durable, in
#: commit order; ``origin`` is "" for local writes, else the device the delta came from
CommitListener = Callable[[Sequence[tuple[str, bytes, str]]], None]


class DocumentSet:
    """Every document of a peer.  Create with `load`, stop with `close`."""

    def __init__(
        self,
        sqlite: SqliteStore,
        embedder: Embedder,
        rng: random.Random,
        *,
        auto_commit: bool = True,
        offload: Offload = THREAD,
    ) -> None:
        self._sqlite = sqlite
        self._offload = offload
        #: False: no flusher; writes wait for `commit` (a simulation decides when they land)
        self._auto = auto_commit
        self._embedder = embedder
        self._rng = rng
        self.replicas: dict[DocId, Replica] = {}
        self.corrupt: dict[DocId, CorruptDocumentError] = {}
        self._new: list[DocRow] = []  # created in memory, row not yet committed
        #: corrupt documents a peer's update replaces: their rows go with the next batch
        self._replaced: list[DocId] = []
        self._log_bytes: dict[DocId, int] = {}
        self._snapshot_bytes: dict[DocId, int] = {}
        self._carry: list[tuple[str, bytes, str]] = []  # deltas of a batch whose commit failed
        self._carry_embed: list[ToEmbed] = []  # and the events of it still to embed
        self._queue = _Queue()
        self._wake = asyncio.Event()
        self._closed = False
        self._flusher: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_queue: _Queue | None = None
        self._lock = asyncio.Lock()
        self.on_vectors: VectorSink | None = None
        self.on_commit: list[CommitListener] = []
        #: told the ids of the documents `drop_subject` deleted, so that no view keeps them
        self.on_drop: Callable[[Sequence[DocId]], None] | None = None
        #: meta rows written with every batch (the peer's hybrid clock, so it never goes back)
        self.meta: Callable[[], dict[str, str]] = dict
        #: what to embed of events that arrived from another robot: (document, stored texts)
        #: -> items; embeddings are derived locally, never synced (DESIGN invariant 4)
        self.remote_events: Callable[[DocInfo, Sequence[str]], Sequence[ToEmbed]] | None = None
        self._arrived: dict[DocId, list[str]] = {}  # events merged from elsewhere, per document
        self._watches: dict[DocId, object] = {}
        self._rescan: set[DocId] = set()  # merged events Yrs could not report (`event_field`)
        self.batches_committed = 0
        #: a document's log is folded into its snapshot once it outgrows both this and the
        #: snapshot (the chaos simulation lowers it, so that its short runs compact too)
        self.compact_min_log_bytes = COMPACT_MIN_LOG_BYTES

    # ---------------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        """Read every stored document; a corrupt one is recorded in `corrupt`, not raised."""
        for stored in await self._sqlite.load():
            self._load_one(stored)
        if self._auto:
            self._flusher = asyncio.create_task(self._flush_forever(), name="hearthsync-flusher")

    def _load_one(self, stored: StoredDoc) -> None:
        row = stored.row
        doc_id = DocId(row.doc_id)
        if stored.damage is not None:
            self.corrupt[doc_id] = CorruptDocumentError(doc_id, stored.damage)
            return
        try:
            replica = Replica(parse(row.doc_id), client_id=row.client_id, lineage=row.lineage)  # type: ignore[arg-type]
            snapshot, updates = stored.snapshot(), stored.updates()
            replica.load(updates, snapshot=snapshot or None)
        except (CorruptDocumentError, DecryptionError, RemoteError, ValueError) as exc:
            # RemoteError: a state vector no document may have (more authors than
            # `statevector.MAX_ENTRIES`), stored before merging refused it: the store did
            # not open at all (found in review)
            reason = exc.reason if isinstance(exc, CorruptDocumentError) else str(exc)
            self.corrupt[doc_id] = CorruptDocumentError(doc_id, reason)
            return
        self.replicas[doc_id] = replica
        self._watch(doc_id, replica)
        self._snapshot_bytes[doc_id] = len(snapshot or b"")
        self._log_bytes[doc_id] = sum(len(update) for update in updates)

    async def close(self) -> None:
        """Refuse new writes, make everything queued durable, then stop the flusher."""
        if self._closed:
            return
        try:
            if not self._auto:
                await self.commit()
                await self._last_batch()  # as the flusher makes
        finally:
            self._closed = True
            self._wake.set()
            try:
                if self._flusher is not None:
                    await self._flusher
            finally:  # a close that failed too: Yrs' observers would keep the set alive
                # what came after the last batch (a write made during a close by hand, a
                # client id renewed): no batch takes it now; its writers are answered, not
                # left waiting for good (found in review)
                _settle_all(self._queue, ClosedError("the peer closed before this was stored"))
                self._release()

    def _release(self) -> None:
        """Drop every subscription to the documents (`Replica.close`): Yrs holds observers
        where Python's collector cannot see them, and would keep this set alive for good."""
        for replica in self.replicas.values():
            replica.close()

    async def commit(self) -> None:
        """Commit everything queued now, as one batch; raises if that batch failed (its
        deltas are then carried into the next one).  Without ``auto_commit`` writes land only
        here; with it, this waits for the flusher instead."""
        if self._auto:
            await self.write_barrier()
            return
        queue = await self._batch_now(everything_left=False)
        if queue is None:
            return
        self._settle_merged(queue)
        try:
            await self._maybe_compact()
        except Exception:  # the batch is durable; compaction is retried after the next one
            log.exception("compaction failed; the update log is kept")

    def crash(self) -> None:
        """Drop everything not committed, as a killed process loses it (fault injection).
        Waiting writers get `ClosedError`: their writes were never acknowledged."""
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
        lost = ClosedError("the peer crashed before this write was durable")
        for queue in (self._queue, self._inflight_queue):
            if queue is not None:
                _settle_all(queue, lost, retrieved=True)
        if self._inflight is not None:
            _settle(self._inflight, lost, retrieved=True)
        self._queue = _Queue()
        self._carry = []
        self._carry_embed = []
        self._replaced = []
        self._release()

    # ---------------------------------------------------------------------- documents

    def get(self, doc_id: DocId) -> Replica | None:
        """The replica of ``doc_id``, sorted (`settled`): what a read must see."""
        return self.settled(doc_id)

    def settled(self, doc_id: DocId) -> Replica | None:
        """The replica of ``doc_id`` with what it merged sorted (`Replica.settle`): what an
        inventory or a diff must read."""
        replica = self.replicas.get(doc_id)
        if replica is None:
            return None
        replica.settle()
        return self._untainted(doc_id, replica)

    def _untainted(self, doc_id: DocId, replica: Replica) -> Replica:
        """``replica``, or its rebuilt successor if Yrs showed content beyond a gap in it
        (`Replica.tainted`).  Views and observers follow the new replica, as they do a new
        client id (`renew_if_stale`)."""
        if not replica.tainted:
            return replica
        fresh = replica.rebuilt()
        self.replicas[doc_id] = fresh
        self._watch(doc_id, fresh)
        replica.close()
        return fresh

    def replica(self, doc_id: DocId) -> Replica:
        """The replica of ``doc_id``, created (empty, with a fresh client id) if new."""
        found = self.settled(doc_id)
        if found is not None:
            return found
        if doc_id in self.corrupt:
            raise self.corrupt[doc_id]
        info: DocInfo = parse(doc_id)
        replica = Replica(info, client_id=self._rng.randint(1, MAX_CLIENT_ID), lineage=info.genesis)
        self.replicas[doc_id] = replica
        self._watch(doc_id, replica)
        self._new.append(
            DocRow(doc_id, info.scope, info.subject, replica.lineage, replica.client_id)
        )
        self._log_bytes[doc_id] = 0
        self._snapshot_bytes[doc_id] = 0
        return replica

    # ---------------------------------------------------------------------- writing

    def write(
        self,
        doc_id: DocId,
        change: Change,
        *,
        embed: Sequence[ToEmbed] = (),
        meta: dict[str, str] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue ``change`` (which must not raise); the future resolves, with what ``change``
        returned, once its delta is durable, or fails with the error of its batch."""
        if self._closed:
            raise ClosedError("the peer is closed")
        if doc_id in self.corrupt:
            raise self.corrupt[doc_id]
        queue = self._queue
        loop = asyncio.get_running_loop()
        written: asyncio.Future[Any] = loop.create_future()
        queue.changes.setdefault(doc_id, []).append((change, written))
        if embed:
            queue.embed.extend(embed)
        if meta:
            queue.meta.update(meta)
        if queue.done is None:
            queue.done = loop.create_future()
            self._wake.set()
        return written

    def apply_remote(
        self, doc_id: DocId, update: bytes, origin: str = "remote", packed: bytes | None = None
    ) -> asyncio.Future[None] | None:
        """Apply another replica's update now; the future resolves once its delta is durable.

        Returns ``None`` when the update held nothing new (a duplicate).  Raises
        `CorruptDocumentError` for bytes that are not a Yrs update, and then changes nothing,
        not even the creation of a document that did not exist.
        """
        if self._closed:
            raise ClosedError("the peer is closed")
        corrupt = self.corrupt.pop(doc_id, None)  # replaced by what the household holds
        created = doc_id not in self.replicas
        replica = self.replica(doc_id)
        try:
            delta = replica.apply(update)
        except CorruptDocumentError:
            self._arrived.get(doc_id, []).clear()
            if created:
                self._forget_new(doc_id)
            if corrupt is not None:
                self.corrupt[doc_id] = corrupt
            raise
        if corrupt is not None:
            # what could not be read here is read again from another robot (under a new
            # client id: invariant 2), and the unreadable rows go with the batch that stores it
            self._replaced.append(doc_id)
            if replica.info.kind is Kind.EVENTS:  # its events are embedded here already:
                self._arrived.get(doc_id, []).clear()  # embed only those that are not
                self._rescan.add(doc_id)
            log.warning("%s was corrupt (%s); replaced by what %s sent", doc_id, corrupt.reason,
                        origin)  # fmt: skip
        arrived = self._arrived.get(doc_id)
        queue = self._queue
        if replica.tainted:  # some of what arrived is held aside: embed what stays readable
            if arrived:
                arrived.clear()
                queue.rescan.add(doc_id)
            self._untainted(doc_id, replica)
        if delta is None:  # a duplicate: durable once what it repeats is
            if created and not replica.tainted:  # nothing at all: no document either (an
                # empty update made a user appear, found in review)
                self._forget_new(doc_id)
                if corrupt is not None:  # nor a corrupt one replaced by nothing, its rows
                    # deleted with the next batch (found in review)
                    self._replaced.remove(doc_id)
                    self._rescan.discard(doc_id)
                    self.corrupt[doc_id] = corrupt
                return None
            return self._pending(doc_id)
        queue.remote.append((doc_id, delta, origin))
        queue.remote_docs.add(doc_id)
        if packed is not None and delta is update:
            queue.packed[id(delta)] = packed
        if arrived and self.remote_events is not None:
            queue.embed.extend(self.remote_events(replica.info, arrived))
            arrived.clear()
        if doc_id in self._rescan:
            self._rescan.discard(doc_id)
            queue.rescan.add(doc_id)
        if queue.done is None:
            queue.done = asyncio.get_running_loop().create_future()
            self._wake.set()
        return queue.done

    def renew_if_stale(self, doc_id: DocId, remote: statevector.StateVector) -> bool:
        """Take a new client id if another replica has seen more of ours than we hold.

        That happens when this store was restored from an older backup: writing on with the old
        client id would create structs with ids the household already has, which silently
        corrupts every replica (DESIGN invariant 2).  The replica is rebuilt under a fresh id
        from its (durable) state; queued writes resolve their handles when they run, so they
        land in the new replica.  Returns whether the id changed.
        """
        replica = self.settled(doc_id)  # rebuilt from what it is, sorted
        if replica is None:
            return False
        held = statevector.decode(replica.state_vector()).get(replica.client_id, 0)
        if remote.get(replica.client_id, 0) <= held:
            return False
        taken = set(remote) | set(statevector.decode(replica.state_vector()))
        client_id = self._rng.randint(1, MAX_CLIENT_ID)
        while client_id in taken:
            client_id = self._rng.randint(1, MAX_CLIENT_ID)
        fresh = replica.renewed(client_id)
        self.replicas[doc_id] = fresh
        self._watch(doc_id, fresh)
        replica.close()
        pending = [row for row in self._new if row.doc_id == doc_id]
        if pending:  # the row is not written yet: write it with the new id
            self._new = [r for r in self._new if r.doc_id != doc_id]
            self._new.append(replace(pending[0], client_id=client_id))
        else:
            self._queue.client_ids[doc_id] = client_id
            self._wake_flusher()
        log.warning(
            "%s: another replica has seen more of client id %d than this store holds (restored "
            "from a backup?); writing on as client id %d", doc_id, replica.client_id, client_id,
        )  # fmt: skip
        return True

    def _watch(self, doc_id: DocId, replica: Replica) -> None:
        """Note the events another robot's updates add to an events document: this robot
        embeds them for its own recall (the raw event's ``delta`` holds only what was added)."""
        if replica.info.kind is not Kind.EVENTS:
            return
        arrived = self._arrived.setdefault(doc_id, [])
        arrived.clear()

        def on_change(event: Any) -> None:
            if replica.incoming:
                delta = event_field(event, "delta")
                if delta is None:  # Yrs cannot say what was inserted: embed what is missing
                    self._rescan.add(doc_id)
                    return
                for part in delta:
                    arrived.extend(part.get("insert", ()))

        array: Array[str] = replica.doc.get("events", type=Array)
        self._watches[doc_id] = replica.track(array.integrated.observe(on_change))

    def _pending(self, doc_id: DocId) -> asyncio.Future[None] | None:
        """The batch that makes durable what ``doc_id`` holds in memory, if some of it is not
        yet: merged or written in a batch not committed, or carried from a failed one.  An
        update that repeats it must not be acknowledged before it (its state vector would
        promise the peer what a crash could still take back).  ``None``: all of it is durable.
        """
        # (writes still queued are not in memory yet: those of the batch in flight are)
        queue = self._queue
        if doc_id in queue.remote_docs or any(d == doc_id for d, _, _ in self._carry):
            self._wake_flusher()  # the carried deltas ride with the next batch
            return queue.done
        inflight = self._inflight_queue
        if inflight is not None and (doc_id in inflight.changes or doc_id in inflight.remote_docs):
            return self._inflight
        return None

    def _wake_flusher(self) -> None:
        if self._queue.done is None:
            self._queue.done = asyncio.get_running_loop().create_future()
            self._wake.set()

    def _forget_new(self, doc_id: DocId) -> None:
        dropped = self.replicas.pop(doc_id, None)
        if dropped is not None:
            dropped.close()
        self._new = [row for row in self._new if row.doc_id != doc_id]
        self._log_bytes.pop(doc_id, None)
        self._snapshot_bytes.pop(doc_id, None)

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            # one turn of the loop before taking the queue: writers already scheduled to run
            # (tasks woken together, a gather of coroutines) join this batch, not the next
            await asyncio.sleep(0)
            self._wake.clear()
            if self._queue.done is not None:
                # taken under the lock: what holds it meanwhile (forgetting a user, say) sees
                # this batch still queued
                async with self._lock:
                    queue = self._queue
                    self._queue = _Queue()
                    # an error is handed to every waiting writer; the flusher goes on
                    with contextlib.suppress(Exception):
                        await self._flush_answering(queue)
                # one turn for whoever waited on this batch (acknowledgements to send) before
                # the housekeeping below, which may hold the loop for milliseconds
                await asyncio.sleep(0)
                try:  # a fault here must not end the flusher: every later writer would wait
                    self._settle_merged(queue)  # for good (found in review)
                except Exception:
                    log.exception("sorting what was merged failed; it is sorted at the next read")
                try:
                    await self._maybe_compact()
                except Exception:  # compaction is an optimisation: retried after the next batch
                    log.exception("compaction failed; the update log is kept")
            if self._closed and self._queue.done is None:
                await self._last_batch()
                return

    async def _last_batch(self) -> None:
        """At close: one last try at what a failed batch left (deltas, rows, embeddings,
        rescans, a renewed client id); errors surface.  Like any batch, it is in flight while
        it runs, and answers a barrier that came meanwhile (found in review: a barrier made
        while this waited for the lock was never answered)."""
        await self._batch_now(everything_left=True)

    async def _batch_now(self, *, everything_left: bool) -> _Queue | None:
        """Commit what is queued now as one batch, with what a failed batch left (its deltas
        and rows; with ``everything_left``, its embeddings, rescans, new rows and renewed
        client id too), and answer its writers and barriers; raises if it failed.  Returns
        the batch, or None if there was nothing to commit.

        The queue is taken under the lock: a batch made while another is in flight waits for
        it, and stays visible as in flight to `_pending` until it is durable."""
        async with self._lock:
            queue = self._queue
            left = self._unlanded() or (
                everything_left
                and bool(self._new or self._carry_embed or queue.rescan or queue.client_ids)
            )
            if queue.done is None and not left:
                return None
            if self._closed and not everything_left:
                # a commit by hand after a close that was cancelled or whose last batch failed:
                # the set is closed (its replicas let go); only the close's last batch runs
                error = ClosedError("the peer is closed, and what it holds in memory is not stored")
                _settle_all(queue, error)
                raise error
            self._queue = _Queue()
            if queue.done is None:
                queue.done = asyncio.get_running_loop().create_future()
            await self._flush_answering(queue)
        return queue

    async def _flush_answering(self, queue: _Queue) -> None:
        """Commit ``queue`` as the batch in flight (the lock held) and answer its writers and
        barriers: with its results; with the error it failed with, raised again; cancelled,
        with what happened to it (`_settle_interrupted`: a cancellation is no `Exception`,
        and its writers waited for good before, found in review)."""
        self._inflight, self._inflight_queue = queue.done, queue
        try:
            results = await self._flush(queue)
        except Exception as exc:
            _settle_all(queue, exc)
            raise
        except BaseException:
            _settle_interrupted(queue)
            raise
        else:
            _settle_all(queue, None, results)
        finally:
            self._inflight_queue = None

    def _settle_merged(self, queue: _Queue) -> None:
        """Sort what was merged from elsewhere into content beyond a clock gap or not, now
        that the acknowledgements are out (`Replica.settle`)."""
        for doc_id in {doc_id for doc_id, _, _ in queue.remote}:
            self.settled(DocId(doc_id))

    async def _flush(self, queue: _Queue) -> list[Any]:
        """Commit ``queue`` as one batch; return what each change returned, in queue order."""
        # Whatever fails from here to the commit, every delta already applied in memory is
        # carried into the next batch: memory must never run ahead of the disk for good.
        deltas: list[tuple[str, bytes, str]] = self._carry + queue.remote
        carried_embed = self._carry_embed
        new_docs: list[DocRow] = []
        replaced: list[DocId] = []
        results: list[Any] = []
        # what the batch holds of carried deltas is in flight with it (`_pending`)
        queue.remote_docs.update(doc_id for doc_id, _, _ in deltas)
        queued = carried_embed + queue.embed
        queue.indexes = {item.index_name for item in queued}  # what recall waits for
        embedding: Awaitable[Embedded] | None = None
        batch: Batch | None = None
        interrupted: BaseException | None = None
        # taken right before the try: whatever fails after it carries them back (found in
        # review: an embedding that could not start dropped them, held in memory only)
        self._carry, self._carry_embed = [], []
        try:
            # the batch's events are embedded on another core while this one runs its
            # transactions (numpy releases the GIL); inline (a simulation), in order, when
            # awaited
            embedding = self._start_embedding(queued)
            for doc_id, changes in queue.changes.items():
                # sorted (nothing local builds on a gap); may create a document: its row joins
                # this batch
                replica = self.replica(doc_id)
                # one transaction (one delta) per slice: Yrs slows down per insert as one
                # transaction grows (an append costs 8 us in a transaction of 16, 16 us in
                # one of 1,024, 900 us in one of 20,000)
                for start in range(0, len(changes), CHANGES_PER_TRANSACTION):
                    part = changes[start : start + CHANGES_PER_TRANSACTION]
                    done, delta = replica.transact(partial(_run_all, replica, part))
                    results.extend(done)
                    if delta is not None:
                        deltas.append((doc_id, delta, ""))
            new_docs, self._new = self._new, []
            replaced, self._replaced = self._replaced, []
            vectors, matrix = await self._embedded(embedding, len(queued))
            embedding = None
            rescanned = await self._unembedded(queue.rescan, queued)
            if rescanned:
                more = self._start_embedding(rescanned)
                more_vectors, more_matrix = await self._embedded(more, len(rescanned))
                vectors, matrix = vectors + more_vectors, np.concatenate([matrix, more_matrix])
            meta = self.meta() | queue.meta
            updates = [(doc_id, delta) for doc_id, delta, _ in deltas]
            batch = Batch(replaced=list(replaced), docs=new_docs, updates=updates,
                          vectors=vectors, meta=meta,
                          client_ids=list(queue.client_ids.items()),
                          packed=queue.packed)  # fmt: skip
            await self._sqlite.commit(batch)
        except BaseException as exc:
            if batch is not None and batch.stored:
                # cancelled, yet its transaction landed (it runs on the connection's thread
                # whatever the await does): a stored batch, answered as one (`_settle_interrupted`)
                interrupted = exc
            else:
                self._carry_back(queue, deltas, carried_embed, new_docs, replaced, embedding)
                raise
        self.batches_committed += 1
        for changed, delta, _ in deltas:
            self._log_bytes[DocId(changed)] = self._log_bytes.get(DocId(changed), 0) + len(delta)
        # the batch is durable: what listens to it must not make its writers think otherwise
        if vectors and self.on_vectors is not None:
            try:
                self.on_vectors(vectors, matrix)
            except Exception:  # derived data: the index catches up from the table when opened
                log.exception("indexing %d committed vectors failed", len(vectors))
        for listener in self.on_commit:
            try:
                listener(deltas)
            except Exception:
                log.exception("a listener to committed batches failed")
        if interrupted is not None:
            queue.landed = results
            raise interrupted
        return results

    def _carry_back(
        self,
        queue: _Queue,
        deltas: list[tuple[str, bytes, str]],
        carried_embed: list[ToEmbed],
        new_docs: list[DocRow],
        replaced: list[DocId],
        embedding: Awaitable[Embedded] | None,
    ) -> None:
        """A batch that did not land: everything it took is carried into the next one, since
        memory must never run ahead of the disk for good."""
        _abandon(embedding)  # its events are carried, to be embedded with their batch
        self._new, self._carry = new_docs + self._new, deltas + self._carry
        self._replaced = replaced + self._replaced
        # their events are embedded with the batch that lands them, or never would be
        self._carry_embed = carried_embed + queue.embed + self._carry_embed
        # and the events a rescan was to find, by the next batch, whatever it holds (kept
        # for a later update of the same document, no batch took them: found in review)
        self._queue.rescan |= queue.rescan
        # a renewed client id too, or memory writes on under the new id while the store
        # keeps the old one, which the next open reuses (invariant 2); one renewed since wins
        self._queue.client_ids = queue.client_ids | self._queue.client_ids
        # and the rows of ``meta`` asked for with its writes (a policy statement held against
        # rollback: dropped, it was lost for good, the robot believing it kept; found in
        # review); those asked for since win
        self._queue.meta = queue.meta | self._queue.meta

    async def _unembedded(self, docs: set[DocId], queued: list[ToEmbed]) -> list[ToEmbed]:
        """What to embed of these events documents: every event with no embedding yet (rare:
        only after a merge whose inserted events Yrs could not report)."""
        if not docs or self.remote_events is None:
            return []
        wanted: list[ToEmbed] = []
        seen = {(item.index_name, item.event_id) for item in queued}
        embedded: dict[str, set[str]] = {}
        for doc_id in sorted(docs):
            replica = self.replicas.get(doc_id)
            if replica is None:
                continue
            texts = replica.doc.get("events", type=Array).to_py() or []
            for item in self.remote_events(replica.info, [str(text) for text in texts]):
                if item.index_name not in embedded:
                    embedded[item.index_name] = await self._sqlite.embedded(item.index_name)
                key = (item.index_name, item.event_id)
                if item.event_id not in embedded[item.index_name] and key not in seen:
                    seen.add(key)
                    wanted.append(item)
        return wanted

    def _start_embedding(self, items: list[ToEmbed]) -> Awaitable[Embedded] | None:
        """Start embedding ``items`` (on another core, or inline when awaited); None: none."""
        if not items:
            return None
        # reserved here, on the loop, in batch order: an abandoned embedding still running on
        # its thread must not race the next batch's for them
        rowids = self._sqlite.vector_rowids(len(items))
        return self._offload(self._embed, items, rowids)

    async def _embedded(self, started: Awaitable[Embedded] | None, count: int) -> Embedded:
        """The embeddings `_start_embedding` made.

        Embeddings are derived data: if the embedder fails, the events are still committed
        (without embeddings, so recall will not find them) rather than every write failing.
        """
        if started is not None:
            try:
                return await started
            except Exception:
                log.exception("embedding %d events failed; they are stored without", count)
        return [], np.zeros((0, self._embedder.dim), dtype=np.float32)

    def _embed(self, items: list[ToEmbed], rowids: range) -> Embedded:
        matrix = np.asarray(self._embedder.embed([item.text for item in items]), np.float32)
        dim = self._embedder.dim
        if matrix.shape != (len(items), dim):
            raise ValueError(f"the embedder gave shape {matrix.shape}, not ({len(items)}, {dim})")
        blobs = matrix.astype("<f2")  # as stored: a value f16 cannot hold is infinite here
        # what reading the blobs back gives, made here, on this thread: the loop stages these
        # (`VectorMemory.stage`) without decoding the blobs
        stored = blobs.astype(np.float32)
        # a row the index cannot hold (not finite, or zero) is left out: that event is stored
        # without an embedding, and its batch, and every later open, go on.  Checked in
        # float32, which holds every float16 value (numpy's float16 loops are ten times slower)
        usable = np.isfinite(stored).all(axis=1) & np.any(stored != 0, axis=1)
        kept = list(zip(rowids, items, strict=True))
        if not usable.all():
            log.warning("%d of %d embeddings are not finite or are zero; those events are "
                        "stored without", int((~usable).sum()), len(items))  # fmt: skip
            kept = [pair for pair, ok in zip(kept, usable, strict=True) if ok]
            stored, blobs = stored[usable], blobs[usable]
        rows = [
            VectorRow(
                rowid, item.index_name, item.event_id, item.ts, blobs[i].tobytes(), item.record
            )
            for i, (rowid, item) in enumerate(kept)
        ]
        return rows, stored

    # ---------------------------------------------------------------------- compaction

    def _needs_compaction(self, doc_id: DocId, *, force: bool = False) -> bool:
        log = self._log_bytes.get(doc_id, 0)
        if force:
            return log > 0
        return log > self.compact_min_log_bytes and log > self._snapshot_bytes.get(doc_id, 0)

    async def _maybe_compact(self, *, force: bool = False) -> int:
        """Fold logs into snapshots where due; only ever called by the flusher or when idle."""
        async with self._lock:  # no batch is half-applied while we snapshot
            due = [d for d in self.replicas if self._needs_compaction(d, force=force)]
            for doc_id in due:
                replica = self.settled(doc_id)  # sorted and rebuilt if need be, then saved
                assert replica is not None
                snapshot = replica.encode_state()
                await self._sqlite.compact(doc_id, snapshot)
                self._snapshot_bytes[doc_id] = len(snapshot)
                self._log_bytes[doc_id] = 0
            if due:
                await self._sqlite.reclaim()
        return len(due)

    async def drop_subject(self, subject: str, error: Exception) -> list[DocId]:
        """Delete every document whose subject is ``subject`` (a user being forgotten), from
        memory and from the store; return their ids.

        Decided under the flusher's lock, so a batch being committed meanwhile (which may
        create one of them) lands first and is deleted with the rest.  Writes queued for any
        of the user's documents, existing or not, fail with ``error`` (they were never
        acknowledged), and deltas carried from a failed batch go too: nothing may recreate
        what is being forgotten.
        """

        if subject == HOME:  # the household's own documents are nobody's to forget
            raise ValueError(f"{HOME!r} is the subject of the household's documents, no user")

        def theirs(doc_id: str) -> bool:
            return parse(doc_id).subject == subject

        async with self._lock:
            queue = self._queue
            for doc_id in [d for d in queue.changes if theirs(d)]:
                for _, written in queue.changes.pop(doc_id):
                    _settle(written, error)
            queue.remote = [d for d in queue.remote if not theirs(d[0])]
            queue.remote_docs = {d for d in queue.remote_docs if not theirs(d)}
            kept = {id(delta) for _, delta, _ in queue.remote}
            queue.packed = {key: frame for key, frame in queue.packed.items() if key in kept}
            self._carry = [d for d in self._carry if not theirs(d[0])]
            queue.embed = [e for e in queue.embed if e.index_name.partition(".")[0] != subject]
            self._carry_embed = [
                e for e in self._carry_embed if e.index_name.partition(".")[0] != subject
            ]
            self._new = [row for row in self._new if not theirs(row.doc_id)]
            doomed = sorted({d for d in (*self.replicas, *self.corrupt) if theirs(d)})
            for doc_id in doomed:
                dropped = self.replicas.pop(doc_id, None)
                if dropped is not None:
                    dropped.close()
                self.corrupt.pop(doc_id, None)
                self._arrived.pop(doc_id, None)
                self._watches.pop(doc_id, None)
                self._rescan.discard(doc_id)
                self._log_bytes.pop(doc_id, None)
                self._snapshot_bytes.pop(doc_id, None)
            await self._sqlite.drop_docs(doomed)
            if self.on_drop is not None:
                self.on_drop(doomed)
        return doomed

    async def compact(self) -> int:
        """Compact every document with a log now; return how many were compacted."""
        await self.write_barrier()
        return await self._maybe_compact(force=True)

    async def embedded(self, index_name: str) -> None:
        """Return once the events of ``index_name`` held in memory or queued now have their
        embeddings committed: those of the batch in flight, and those still queued, merged
        from another robot (in memory already) or written here.  Recall waits for this, or
        an event a robot lists could not be recalled for a batch's time (found as a flaky
        test: recall right after a synced event missed it).  A batch that fails is not
        raised here: its events are carried to the next, and recall goes on without them."""
        if self._closed:
            return  # no batch will come (a close whose last batch failed: found in review)
        waits: list[asyncio.Future[None]] = []
        inflight = self._inflight_queue
        if (
            inflight is not None
            and self._inflight is not None
            and (index_name in inflight.indexes or inflight.rescan)
        ):
            waits.append(self._inflight)
        queue = self._queue
        if self._flushing() and (
            queue.rescan
            or any(e.index_name == index_name for e in queue.embed)
            or any(e.index_name == index_name for e in self._carry_embed)
        ):
            self._wake_flusher()  # a failed batch's events are carried: no batch has them yet
            if queue.done is not None:
                waits.append(queue.done)
        for batch in waits:
            with contextlib.suppress(Exception):
                await asyncio.shield(batch)

    def queued(self, doc_id: DocId) -> bool:
        """Whether writes to ``doc_id`` are queued and not yet applied to its replica."""
        return doc_id in self._queue.changes

    @property
    def auto_commit(self) -> bool:
        """Whether a flusher commits writes (else they land only at `commit`)."""
        return self._auto

    @property
    def busy(self) -> bool:
        """Whether writes are queued or a batch is being committed."""
        return self._queue.done is not None or self._inflight_queue is not None

    async def write_barrier(self) -> None:
        """Wait until everything queued so far is durable (raises if that batch failed)."""
        if not self._auto:
            await self.commit()
            return
        if not self._flushing() and (self._unlanded() or self._queue.done is not None):
            # a batch no flusher will make: a close whose last batch failed, or what came
            # after it, a client id renewed say (found in review: both waited for good)
            raise ClosedError("the peer is closed, and what it holds in memory is not stored")
        if self._unlanded():  # a failed batch's: the next one tries again, and this waits
            self._wake_flusher()
        pending = self._queue.done
        if pending is None and self._inflight_queue is not None:
            pending = self._inflight
        if pending is not None:
            await asyncio.shield(pending)

    def _flushing(self) -> bool:
        """Whether a flusher runs, to commit what is queued (not with ``auto_commit`` off,
        nor once it has ended at close)."""
        return self._flusher is not None and not self._flusher.done()

    def _unlanded(self) -> bool:
        """Whether a failed batch left deltas, rows to replace or ``meta`` rows asked for by
        its writes for the next one to write."""
        return bool(self._carry or self._replaced or self._queue.meta)


def _settle_interrupted(queue: _Queue) -> None:
    """Answer the writers of a batch cancelled in flight (a close, or a commit by hand,
    cancelled while it waited for that batch): a cancellation is no ``Exception``, and
    answered only as one, they waited for good (found in review).  A batch that landed all
    the same gets its results; one that did not, `ClosedError` (its deltas are carried)."""
    if queue.landed is not None:
        _settle_all(queue, None, queue.landed)
    else:
        _settle_all(queue, ClosedError("the batch was cancelled before it was stored"))


def _abandon(started: Awaitable[Any] | None) -> None:
    """Let go of an embedding whose batch failed: a coroutine (inline) is never run, and a
    thread's result, or error, is dropped without asyncio reporting it as never retrieved."""
    if isinstance(started, Coroutine):
        started.close()
    elif isinstance(started, asyncio.Future):
        started.add_done_callback(lambda done: done.cancelled() or done.exception())


def _settle(
    done: asyncio.Future[Any],
    error: Exception | None,
    result: Any = None,
    *,
    retrieved: bool = False,
) -> None:
    """Resolve a future, unless its waiter cancelled it (the write went ahead anyway).

    ``retrieved`` marks a failure as seen, for losses the caller expects (a simulated crash):
    asyncio would otherwise log every unawaited one as "never retrieved".
    """
    if done.done():
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)
        if retrieved:
            done.exception()


def _settle_all(
    queue: _Queue,
    error: Exception | None,
    results: Sequence[Any] = (),
    *,
    retrieved: bool = False,
) -> None:
    """Resolve every writer of ``queue`` (with its change's result), then the batch future."""
    writers = [written for changes in queue.changes.values() for _, written in changes]
    if error is None:
        for written, result in zip(writers, results, strict=True):
            if isinstance(result, _Failed):
                _settle(written, result.error)
            else:
                _settle(written, None, result)
    else:
        for written in writers:
            _settle(written, error, retrieved=retrieved)
    if queue.done is not None:  # a barrier: whoever waits on it sees the error; if no one
        _settle(queue.done, error, retrieved=True)  # does, the writers above already did


@dataclass(frozen=True, slots=True)
class _Failed:
    """What a change that raised returns to its writer, and to no one else."""

    error: Exception


def _run_all(replica: Replica, changes: list[tuple[Change, asyncio.Future[Any]]]) -> list[Any]:
    """Run the changes of one transaction, each failing on its own: one writer's change that
    raises (it read a record another robot wrote that does not decode, say) fails that writer
    alone, and what the others changed is committed with the transaction's delta.  A change
    checks before it writes, so one that raises has changed nothing."""
    results: list[Any] = []
    for change, _ in changes:
        try:
            results.append(change(replica))
        except Exception as exc:
            results.append(_Failed(exc))
    return results
