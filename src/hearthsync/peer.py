"""The peer: the one place that wires store, documents and vector memory into a robot's memory.

    async with Peer.open("~/.hearth/kitchen", device="kitchen") as peer:
        await peer.add_user("alice", name="Alice")
        await peer.set_preference("alice", "beverage/coffee", "oat latte",
                                  condition=Condition(days="weekday"))
        peer.preference("alice", "beverage/coffee", Condition(days="weekday")).value

Every write method (``set_*``, ``record_event``, ``place``, ``relate``, ...) validates its
input at the call (an invalid record raises `ValidationError` naming the field and writes
nothing) and queues the write at once, in call order; it returns a future that resolves, with
the record written, once the write is durable (DESIGN invariant 1).  ``await`` it to wait for
durability, or let it go: the write happens either way.  No coroutine or task is made per
write, so a robot can issue thousands of writes a second from one loop.  Reads are synchronous
and in memory: they never wait on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import random
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pycrdt import merge_updates

from hearthsync import enrolment
from hearthsync.context import Context, HouseholdPolicy, MaintenanceReport, engine_for
from hearthsync.context import explain as explain_preference
from hearthsync.context import maintain as maintain_preferences
from hearthsync.crdt import statevector
from hearthsync.crdt.handles import (
    ROOTS,
    SEP,
    CalibrationDoc,
    EventsDoc,
    GraphDoc,
    HealthDoc,
    HouseholdDoc,
    PrefsDoc,
    ProfileDoc,
    SlotMap,
    SpatialDoc,
)
from hearthsync.crdt.kinds import HOME, DocInfo, Kind, events_doc, parse, user_doc
from hearthsync.crdt.replica import Replica
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.statement import Statement
from hearthsync.errors import NotFoundError, ValidationError, unknown_user
from hearthsync.forgetting import Forgetting, Remnant
from hearthsync.hlc import MAX_AHEAD_MS, FloorWall, HybridClock, Timestamp, latest_stored
from hearthsync.ids import NAME_RE, DeviceId, DocId, LineageId, UserId, check_name
from hearthsync.model.pii import blocked_category_of_text, quoted
from hearthsync.model.records import (
    MAX_LIST,
    Calibration,
    Condition,
    ContextSnapshot,
    EventType,
    HealthRecord,
    InteractionEvent,
    M,
    Placement,
    Pose,
    Preference,
    Profile,
    Region,
    Relationship,
    Routine,
    SpatialChange,
    as_condition,
    given_fields,
    merge_fields,
    trim_removals,
)
from hearthsync.offload import THREAD, Offload
from hearthsync.protocol.session import DocMeta
from hearthsync.settings import HELD, HouseholdSettings
from hearthsync.store.documents import CommitListener, DocumentSet, ToEmbed
from hearthsync.store.embedding import Embedder, default_embedder
from hearthsync.store.lock import FolderLock
from hearthsync.store.sqlite import SqliteStore, VectorRow
from hearthsync.store.vectors import VectorIndex, VectorMemory

log = logging.getLogger(__name__)

DB_FILE = "hearth.db"
#: the inventory digest of a document not held (SPEC §6.3): that of the empty state vector
EMPTY_DIGEST = hashlib.blake2b(b"\x00", digest_size=8).digest()
VECTOR_DIR = "vectors"
HISTORY = "history"

H = TypeVar("H")
PROFILE, CALIBRATION = "profile", "calibration"  #: the one slot key of each document
W = TypeVar("W")
_SEQUENCES = (list, tuple)  #: not ``list | tuple``, a union built anew at every write
INDEX_IDLE_S = 0.05  #: see `Peer._index_staged`
#: users the owner keys because a robot asked for their keys (`Peer.keys_wanted`) while the
#: household does not list them; past this many, it keys no more until some are listed
MAX_UNLISTED_KEYED = 16
KEEP_TIME_S = 600.0  #: how often an open robot stores the time it reads (`Peer.keep_time`)
INDEX_CHUNK = 64  #: vectors inserted into a graph per turn of the loop: about 5 ms
INDEX_BACKLOG = 65_536  #: staged vectors (96 MiB at 384 dimensions) past which inserts go on
NOWHERE = ContextSnapshot()


@dataclass(frozen=True, slots=True)
class Recalled:
    """An event found by semantic recall, with its cosine similarity to the query."""

    event: InteractionEvent
    score: float


@dataclass(frozen=True, slots=True)
class DocumentStatus:
    doc_id: str
    scope: str
    subject: str
    snapshot_bytes: int
    log_entries: int
    log_bytes: int
    records: int


@dataclass(frozen=True, slots=True)
class PeerStatus:
    path: Path
    device: str
    device_id: DeviceId
    users: list[str]
    documents: list[DocumentStatus]
    corrupt: dict[str, str]
    file_bytes: int
    vectors: dict[str, int]  #: per index: the events it answers for (in its graph or staged)


async def _stopped(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` and wait for its end.  A failure it had ended with is logged, not
    raised: the robot stops all the same (found in review: an indexer that had failed made
    `Peer.crash` raise before the store was closed, its lock still held, and `Peer.close`
    raise before the vector memory was saved)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("%s had failed", task.get_name())


def _holds_stamps(doc_id: str) -> bool:
    """Whether ``doc_id``'s records carry stamps a clock follows (`latest_stored`).  Not the
    household document: it holds names as people typed them, outside any record's JSON, and
    a name shaped like a stamp a day ahead dragged every robot's clock there (found in
    review); its signed settings and tombstones are hex, stamped by `Peer._stamp`."""
    return doc_id != "household"


class Peer:
    """One robot's memory.  Open with `Peer.open` (a context manager) or `Peer.start`."""

    def __init__(
        self,
        path: Path,
        identity: DeviceIdentity,
        device: str,
        sqlite: SqliteStore,
        docs: DocumentSet,
        vectors: VectorMemory,
        clock: HybridClock,
        wall: Callable[[], float],
        rng: random.Random,
        lock: FolderLock,
    ) -> None:
        self.path = path
        self._lock = lock  #: this peer's hold on its folder, until `close` or `crash`
        self.identity = identity
        self.device = device
        self.device_id = identity.device_id
        self._sqlite = sqlite
        self._docs = docs
        self._vectors = vectors
        self._clock = clock
        self._wall = wall
        self._rng = rng
        # a fast generator for event ids, seeded from ``rng`` (so seeded runs stay reproducible)
        self._ids = random.Random(rng.getrandbits(128))
        self._handles: dict[DocId, tuple[Replica, object]] = {}
        #: the stamps `_stamp_over` gave by overtaking a version too far ahead for the clock
        #: to follow, by (document, slot map, key), with the batches committed then: such a
        #: stamp is not after the clock, so a second write of the key, stamped before the
        #: group commit puts the first in the document, must read it here to overtake it too
        self._overtaking: dict[tuple[DocId, str, str], tuple[str, int]] = {}
        self._closed = False
        self._users: frozenset[str] | None = None
        #: this device's household credentials, if it belongs to one (``hearth init``/``join``)
        self.household: enrolment.HouseholdState | None = None
        #: called after this device made keys (sync grants them to the other robots)
        self.on_keys_made: list[Callable[[], None]] = []
        #: called with a user's id once this robot holds nothing of theirs (after a forget
        #: made here, or a tombstone received from another robot)
        self.on_forgotten: list[Callable[[str], None]] = []
        self._indexer: asyncio.Task[None] | None = None
        #: indexes that were not open when rows of theirs were committed (`_index_vectors`)
        self._to_open: set[tuple[str, str]] = set()
        self._keeper: asyncio.Task[None] | None = None  #: `_keep_time_forever`
        self._backlog = asyncio.Event()  #: set when more than `INDEX_BACKLOG` vectors wait
        #: seconds without a commit before the indexer inserts staged vectors into the graph
        #: (`_index_staged`); the chaos simulation, which decides every loop turn, uses 0
        self.index_idle_s = INDEX_IDLE_S
        self._vector_lock = asyncio.Lock()
        self._users_sub: object | None = None
        self._forgotten_sub: object | None = None
        self._users_of: Replica | None = None
        self._household_lost = False  #: its household document was corrupt, to be replaced
        self._forgotten: frozenset[str] | None = None
        self._forgetting = Forgetting(self)
        self._settings = HouseholdSettings(self)
        self._settings_sub: object | None = None
        docs.on_vectors = self._index_vectors
        docs.remote_events = self._remote_events
        docs.on_drop = self._drop_handles
        docs.meta = self._meta

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        embedder: Embedder | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
        auto_commit: bool = True,
        offload: Offload = THREAD,
        monotonic: Callable[[], float] | None = None,
    ) -> AsyncIterator[Peer]:
        """Open (creating if new) the peer stored in the folder ``path``; close on exit."""
        peer = await cls.start(
            path, device=device, embedder=embedder, wall=wall, rng=rng, synchronous=synchronous,
            auto_commit=auto_commit, offload=offload, monotonic=monotonic,
        )  # fmt: skip
        try:
            yield peer
        finally:
            await peer.close()

    @classmethod
    async def start(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        embedder: Embedder | None = None,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL",
        auto_commit: bool = True,
        offload: Offload = THREAD,
        monotonic: Callable[[], float] | None = None,
    ) -> Peer:
        """Open the peer in ``path``; the caller must `close` it.

        ``wall`` is the system clock, which the peer never lets read earlier than the time it
        last read (`hearthsync.hlc.FloorWall`, moving on at the rate of ``monotonic``; by
        default `time.monotonic` with the system clock, and one that stands still with an
        injected ``wall``, so that a test's or a simulation's time moves only when it says).
        ``offload`` runs the blocking work (embedding, index inserts and saves): a worker
        thread by default, `hearthsync.offload.inline` where the caller awaits it all anyway
        (a simulation).
        """
        folder = Path(path).expanduser()
        if not (folder / DB_FILE).exists():
            # checked before anything is made: a refused open left a key, a store and a lock
            # file behind, a half-made peer (found by a new user)
            if device is None:
                raise ValidationError(
                    "a new peer needs a device name: Peer.open(path, device=...)", field="device"
                )
            check_name(device, field="device")
        # what people told the robot is in plaintext in there (health included): the folder
        # is its device's alone, as its key files are (found in review: hearth.db was 0644)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
        rng = rng or random.SystemRandom()
        embedder = embedder or default_embedder()
        # before anything in the folder is read or made: a second peer there would lose writes
        lock = FolderLock.acquire(folder)
        try:
            identity = DeviceIdentity.load_or_create(folder)
            sqlite = await SqliteStore.open(folder / DB_FILE, synchronous=synchronous)
        except BaseException:
            lock.release()
            raise
        try:
            name = await _device_name(sqlite, device)
            await _check_embedder(sqlite, embedder)
            seen = await sqlite.get_meta("wall")
            hints = enrolment.clock_hints(folder)
            if monotonic is None:
                monotonic = time.monotonic if wall is time.time else _standing_still
            wall = FloorWall.start(wall, float(seen) if seen else None, monotonic, hints)
            last, ahead = await sqlite.get_meta("hlc"), await sqlite.get_meta("ahead")
            clock = HybridClock(
                identity.device_id, lambda: int(wall() * 1000), *_restored(last, ahead, wall())
            )
            docs = DocumentSet(sqlite, embedder, rng, auto_commit=auto_commit, offload=offload)
            await docs.load()
            if ahead is None:  # a store from before `meta.ahead`: what it holds, read once
                for doc_id, replica in docs.replicas.items():
                    if not _holds_stamps(doc_id):
                        continue
                    held = latest_stored(replica.encode_state())
                    if held is not None:
                        clock.observe(held, max_ahead_ms=MAX_AHEAD_MS)
            vectors = VectorMemory(sqlite, folder / VECTOR_DIR, embedder, offload=offload)
        except BaseException:
            await sqlite.close()
            lock.release()
            raise
        peer = cls(folder, identity, name, sqlite, docs, vectors, clock, wall, rng, lock)
        if auto_commit:  # a simulation, which commits only when told, keeps no timers
            peer._keeper = asyncio.create_task(peer._keep_time_forever(), name="hearthsync-time")
        try:
            peer.household = enrolment.load(folder, int(wall()))
            peer._settings.load(await sqlite.meta_starting(HELD))
            peer._settings.hold()  # a rollback merged before the last run ended is undone now
            # a purge a crash cut short is finished first (in the background where only the
            # caller commits: its writes could not land while this waited for them)
            await peer._forgetting.resume(wait=auto_commit)
            for user in peer.users():
                await vectors.open_index(user, HISTORY)
            peer._index_later()  # what the indexes caught up with is staged
            peer._key_users()  # users heard of before a crash, keyed by nobody here yet
        except BaseException:
            await peer.close()  # never a store left open (its thread would outlive the process)
            raise
        return peer

    async def close(self) -> None:
        """Make every queued write durable, save the vector memory, close the file."""
        if self._closed:
            return
        self._closed = True
        try:
            await _stopped(self._keeper)
            try:
                await self._forgetting.close()
            finally:  # cancelled while a purge ran: the documents are closed all the same, or
                # the flusher ran on, writes were taken and no replica was let go (review)
                await self._docs.close()
            await self._indexed()  # the next open loads the graph, not rebuilds what was staged
            self._vectors.save()
            await self._keep_time_or_warn()
        finally:
            await self._close_file()

    async def crash(self) -> None:
        """Stop as a killed process would: whatever is not committed is lost, nothing is
        flushed or saved, and waiting writers get `ClosedError` (fault injection for
        `hearthsync.chaos`; the vector memory is rebuilt from SQLite on the next open)."""
        if self._closed:
            return
        self._closed = True
        self._docs.crash()
        try:
            for task in (self._keeper, self._indexer):
                await _stopped(task)
        finally:
            await self._close_file()

    async def _close_file(self) -> None:
        try:
            await self._sqlite.close()
        finally:
            self._lock.release()  # as the kernel drops a killed process's lock

    async def commit(self) -> None:
        """Make every write queued so far durable now.  With ``auto_commit=False`` (the chaos
        simulation, which decides when commits happen) this is the only way a write lands."""
        await self._docs.commit()

    @property
    def corrupt(self) -> dict[str, str]:
        """Documents that could not be loaded, by id, with the reason."""
        return {doc_id: err.reason for doc_id, err in self._docs.corrupt.items()}

    # ------------------------------------------------------------------ plumbing

    def _handle(self, doc_id: DocId, make: Callable[[Any], H]) -> H:
        """The typed view of ``doc_id``'s current replica (rebuilt if the replica was replaced,
        as when the document takes a new client id: DESIGN invariant 2).  Write closures call
        this when they run, in the flusher, never before."""
        replica = self._docs.replica(doc_id)
        cached = self._handles.get(doc_id)
        if cached is None or cached[0] is not replica:
            cached = (replica, make(replica))
            self._handles[doc_id] = cached
        return cached[1]  # type: ignore[return-value]

    def _drop_handles(self, doc_ids: Sequence[DocId]) -> None:
        """Forget the typed views of deleted documents (a forgotten user's): a view holds its
        replica, and with it everything the user said, for as long as it is kept."""
        for doc_id in doc_ids:
            self._handles.pop(doc_id, None)
        dropped = set(doc_ids)
        self._overtaking = {m: v for m, v in self._overtaking.items() if m[0] not in dropped}

    def _peek(self, doc_id: DocId, make: Callable[[Any], H]) -> H | None:
        """The handle of ``doc_id`` if the document exists, without creating it."""
        if self._docs.get(doc_id) is None:
            return None
        return self._handle(doc_id, make)

    def _stamp(self, after: str = "") -> tuple[str, str]:
        """A new stamp (and this device), later than ``after``: a record this write replaces
        whose stamp the clock could not see when it arrived (a signed statement's)."""
        if after:
            self._clock.observe(Timestamp.parse(after), max_ahead_ms=MAX_AHEAD_MS)
        return self._clock.now_text(), self.device_id

    def _stamp_over(
        self,
        doc_id: DocId,
        make: Callable[[Replica], H],
        slots: Callable[[H], SlotMap[Any]],
        key: str,
    ) -> tuple[str, str]:
        """A stamp (and this device) for a write of ``key`` in the slot map ``slots`` of
        ``doc_id``'s handle: after every version of it held here (`HybridClock.after`)."""

        committed = self._docs.batches_committed
        if self._overtaking:
            # A write is in the document once the batch after the one committing when it was
            # stamped has run (or it never will be: refused, or its robot crashed)
            self._overtaking = {
                mark: issued
                for mark, issued in self._overtaking.items()
                if committed - issued[1] < 2
            }
        mark: tuple[DocId, str, str] | None = None

        def newest() -> str:
            nonlocal mark
            handle = self._peek(doc_id, make)
            if handle is None:
                return ""
            held_map = slots(handle)
            mark = (doc_id, held_map.name, key)
            held = max((str(getattr(v, "set_at", "")) for v in held_map.versions(key)), default="")
            issued = self._overtaking.get(mark)
            return max(held, issued[0]) if issued is not None else held

        stamp = self._clock.after(newest)
        if mark is not None and stamp > self._clock.last:  # it overtook a version held
            self._overtaking[mark] = (str(stamp), committed)
        return str(stamp), self.device_id

    def _meta(self) -> dict[str, str]:
        ahead = self._clock.ahead  # stored with the batch that holds it ("": none)
        return {
            "hlc": str(self._clock.last),
            "wall": f"{self._wall():.3f}",
            "ahead": str(ahead) if ahead is not None else "",
        }

    async def keep_time(self) -> None:
        """Store the time this robot reads now (``meta.wall``), as every batch does: the floor
        of its clock if it next boots without one (`hearthsync.hlc.FloorWall`)."""
        await self._sqlite.commit_meta(self._meta())

    async def _keep_time_forever(self) -> None:
        """A robot idle for days writes no batch: its floor would be its last write."""
        while True:
            await asyncio.sleep(KEEP_TIME_S)
            await self._keep_time_or_warn()

    async def _keep_time_or_warn(self) -> None:
        try:
            await self.keep_time()
        except Exception:  # a full disk: the next batch or turn stores it; never end the task
            log.warning("could not store the time this robot reads", exc_info=True)

    def wall(self) -> float:
        """Seconds since the epoch by this robot's clock: the system clock, never earlier than
        the time it last read (`hearthsync.hlc.FloorWall`).  Certificates are checked against
        it, and events stamped with it."""
        return self._wall()

    def _write(
        self, doc_id: DocId, change: Callable[[Replica], W], embed: Sequence[ToEmbed] = ()
    ) -> asyncio.Future[W]:
        """Queue ``change``; its future resolves with what ``change`` returned, once durable.
        Each writer has its own future: cancelling one never cancels another's."""
        return self._docs.write(doc_id, change, embed=embed)

    def _require_user(self, user: str) -> UserId:
        if user not in self._known_users():
            check_name(user, field="user")
            forgotten = user in self._forgotten_users()
            raise NotFoundError(unknown_user(user, forgotten=forgotten))
        return UserId(user)

    def _not_forgotten(self, user: str | None, *, field: str) -> None:
        """Refuse a forgotten user's id in a home document (their routine, their things, a
        relationship with them): what forgetting took out must not be written back."""
        if user is not None and user in self._forgotten_users():
            raise NotFoundError(f"{field}: user {user!r} was forgotten")

    def _known_users(self) -> frozenset[str]:
        """The household's users, less the forgotten (a robot that had not heard of the
        tombstone may have written a forgotten user's entry again).  A user whose only
        tombstones do not check out is still a user, though burying them took their entry
        out of the list (a revoked robot's tombstone, relayed before the revocation was)."""
        self._observe_household()
        if self._users is None:
            listed: set[str] = set()
            if DocId("household") not in self._docs.corrupt:  # else reported, not raised
                household = self._household()
                listed |= set(household.users.keys())
                listed |= {slot.partition(SEP)[0] for slot in household.forgotten.keys()}  # noqa: SIM118
            # and whoever has a profile here: robots that register the same user at once
            # overwrite each other's entry, and the deletion of the one a robot wrote can
            # arrive in another robot's update before the entry that won does (found by the
            # stateful chaos test): the user was missing from the list until it came.  A
            # profile is written in each robot's own slot, which nothing overwrites.
            profiles = {
                replica.info.subject
                for replica in self._docs.replicas.values()
                if replica.info.kind is Kind.PROFILE
            }
            # a malformed id in the list (any robot of the household may write it) names no
            # one: it stopped `Peer.start` and the owner's keying of every user after it
            # (found in review)
            well_formed = {u for u in listed | profiles if NAME_RE.fullmatch(u)}
            self._users = frozenset(well_formed) - self._forgotten_users()
        return self._users

    def _forgotten_users(self) -> frozenset[str]:
        self._observe_household()
        if self._forgotten is None:
            self._forgotten = self._forgetting.forgotten()
        return self._forgotten

    def _observe_household(self) -> None:
        if DocId("household") in self._docs.corrupt:
            # reported by `corrupt`; the robot goes on with its other documents, listing the
            # users it holds profiles of, and nothing is written to the household meanwhile
            self._household_lost = True
            return
        replica = self._docs.replica(DocId("household"))
        if self._users_of is not replica:  # a new replica (new client id): observe it
            if self._users_of is not None or self._household_lost:
                # replaced (a corrupt one, by what a peer sent): its tombstones are news
                self._household_lost = False
                asyncio.get_running_loop().call_soon(self._honour_tombstones)
            household = self._household()
            # raw observers, called inside the transaction: they read neither the event
            # (pycrdt's own observe computes every changed key, which Yrs can panic on for a
            # merge beyond a clock gap: `event_field`) nor the document (it is borrowed)
            track = replica.track
            self._users_sub = track(household.users.integrated.observe(self._forget_users))
            self._forgotten_sub = track(
                household.forgotten.integrated.observe(self._tombstones_changed)
            )
            self._settings_sub = track(
                household.settings.integrated.observe(self._settings_changed)
            )
            self._users_of, self._users, self._forgotten = replica, None, None
            self._settings.changed()

    def _forget_users(self, _: object) -> None:
        self._users = None
        # a user another robot added (a member, which makes no keys): keyed here, once the
        # transaction that brought them ends (the list cannot be read inside it)
        asyncio.get_running_loop().call_soon(self._key_users)

    def _key_users(self) -> bool:
        """The owner robot: data keys, for the current epoch of every scope, of every user
        of the household that has none here (`_make_keys`); first a new epoch if it holds a
        revocation list newer than its keys (`enrolment.catch_up`: restored from a backup).

        A user added on a member robot (which makes no keys) has their documents sealed, and
        so shared, once the owner hears of them.  An admin that adds a user the owner keyed
        too makes a second key for the slot; every robot then holds both (`Keyring`: a slot
        may hold several keys), where before the second was refused for good.  Only the
        owner keys the users it hears of: an admin doing so too made two keys of every such
        user, and with no link between the two (a member between them, which passes no keys
        on) what the member sealed with one never reached the robot holding the other (found
        in review)."""
        state = self.household
        if self._closed or state is None or state.certificate.role != "owner":
            return False
        rotated = enrolment.catch_up(self.path, state, self.identity, now=int(self._wall()),
                                     users=self.users(), random_bytes=self._key_bytes)  # fmt: skip
        # keyed in the new epoch, every user that rotation did not know of too; granted after
        # the new list (`Session.send_grants`)
        if self._make_keys(*sorted(self._known_users())):  # saved and granted
            return True
        if rotated:  # saved by the rotation
            self._grant_keys()
        return bool(rotated)

    def _make_keys(self, *users: str) -> bool:
        """Data keys of ``users`` where they have none (admin robots only), kept with this
        device's credentials and granted to the linked robots (`on_keys_made`); whether it
        made any."""
        state = self.household
        if state is None:
            return False
        made = [enrolment.add_user_keys(state, user, self._key_bytes) for user in users]
        if any(made):
            enrolment.save(self.path, state, int(self._wall()))
            self._grant_keys()
        return any(made)

    def _grant_keys(self) -> None:
        """Have every linked robot granted the keys this one holds (owners and admins)."""
        for listener in self.on_keys_made:
            listener()

    def _key_bytes(self, n: int) -> bytes:
        """Key material: the peer's generator (`random.SystemRandom`, the OS's randomness,
        unless a seeded one was given: a simulation, whose runs must replay bit for bit)."""
        return self._rng.randbytes(n)

    def _settings_changed(self, _: object) -> None:
        self._settings.changed()
        # a statement is held once the transaction that brought it ends (it is read then)
        asyncio.get_running_loop().call_soon(self._settings.hold)

    def _tombstones_changed(self, _: object) -> None:
        self._users = self._forgotten = None
        # reading the tombstones waits for the transaction to end
        asyncio.get_running_loop().call_soon(self._honour_tombstones)

    def _honour_tombstones(self) -> None:
        if not self._closed:
            self._forgetting.on_household_change()

    def _household(self) -> HouseholdDoc:
        return self._handle(DocId("household"), HouseholdDoc)

    # ------------------------------------------------------------------ people

    def users(self) -> list[UserId]:
        return sorted(UserId(u) for u in self._known_users())

    async def add_user(self, user: str, *, name: str, **profile: Any) -> Profile:
        """Register ``user`` in the household with a profile (idempotent)."""
        if user == HOME:
            raise ValidationError(
                f"{HOME!r} names the household's shared documents; choose another id",
                field="user",
            )
        if user in self._forgotten_users():
            raise ValidationError(
                f"user {user!r} was forgotten; a returning person needs a new id", field="user"
            )
        record = Profile.build(user=user, name=name, **profile)  # checked before anything
        # registered already (or by another robot, not heard of yet): a patch of its facts
        self._check_facts(self.profile(user) or Profile(user=user, name=name), record.attributes)
        doc_id = user_doc(record.user, Kind.PROFILE)
        change = self._merged_write(
            doc_id, ProfileDoc, lambda h: h.profile, PROFILE, record, {"name": name} | profile
        )

        def register(_: Replica) -> None:
            # Written once, when new: the entry is never overwritten (a rename changes only the
            # profile).  Overwriting a map entry deletes the one before, and that deletion
            # applied at once where the new entry waited beyond a gap in its author's clock: a
            # robot revoked with such a gap left behind it took the user off the list for good,
            # on every robot, by registering them again (found by the chaos harness, seed
            # 107399).  Replicas now hold such a deletion with the entry that makes it
            # (`Replica._merge_or_hold`); an entry never overwritten needs neither.
            if record.user in self._forgetting.forgotten():  # read now, not the cached view
                # forgotten since the call (a forget queued first): registering would put the
                # name back into the household for good (found in review)
                raise ValidationError(
                    f"user {record.user!r} was forgotten; a returning person needs a new id",
                    field="user",
                )
            users = self._household().users
            if record.user not in users:
                users[record.user] = record.name

        # the user's data keys first (crypto-shredding), so that their documents can be sealed
        # for the other robots as soon as they are written
        self._make_keys(record.user)
        state = self.household
        if state is not None and not state.keyring.holds_data_keys(record.user):
            # a member robot makes no keys: what it writes of the user stays here until the
            # owner robot hears of them (from this robot or another) and grants it their keys
            # (`_key_users`).  Said, as a robot out of the owner's reach shares nothing of
            # the user meanwhile.  A robot of no household shares nothing: no keys needed
            log.info(
                "%r has no data keys on this robot, which makes none: their documents are "
                "shared once the owner robot hears of them and grants the keys",
                record.user,
            )
        _, written = await asyncio.gather(
            self._docs.write(DocId("household"), register), self._write(doc_id, change)
        )
        await self._vectors.open_index(record.user, HISTORY)
        return written

    def set_profile(self, user: str, **fields: Any) -> asyncio.Future[Profile]:
        """Change profile fields of an existing user; the others keep their value.

        Profiles merge field by field (`FieldMerged`): a change made on another robot at the
        same time to another field survives this one.  ``attributes`` is a patch, merged fact
        by fact: ``attributes={"height_cm": 165}`` sets that fact and keeps the others (those
        another robot sets meanwhile too), and ``None`` removes one.
        """
        uid = self._require_user(user)
        current = self._profile_or_new(uid)
        # the facts checked are the patch's; the profile's, where robots apart added more
        # than the limit between them, would refuse even a rename
        checked = Profile.build(**(current.model_dump() | {"attributes": {}} | fields))
        self._check_facts(current, checked.attributes)
        doc_id = user_doc(uid, Kind.PROFILE)
        return self._write(
            doc_id,
            self._merged_write(doc_id, ProfileDoc, lambda h: h.profile, PROFILE, checked, fields),
        )

    def profile(self, user: str) -> Profile | None:
        handle = self._peek(user_doc(user, Kind.PROFILE), ProfileDoc)
        found = merge_fields(handle.profile.versions(PROFILE)) if handle else None
        return found.shown() if found is not None else None

    def _profile_or_new(self, user: UserId) -> Profile:
        return self.profile(user) or Profile(user=user, name=user)

    @staticmethod
    def _check_facts(current: Profile, patch: dict[str, Any]) -> None:
        """Refuse a patch of ``current``'s facts that leaves more than `MAX_LIST` of them,
        unless it adds none: robots apart may have added more between them, and a person
        must still be able to change or remove those (and once every robot sees more than
        the limit, none adds any, so robots apart never add more than the limit each)."""
        after = sum(v is not None for v in (current.attributes | patch).values())
        adds = any(v is not None and k not in current.attributes for k, v in patch.items())
        if after > MAX_LIST and adds:
            raise ValidationError(
                f"Profile.attributes: {after} facts, the limit is {MAX_LIST}", field="attributes"
            )

    def set_calibration(self, user: str, **fields: Any) -> asyncio.Future[Calibration]:
        """Change the named calibration fields; the others keep their value.

        Calibration merges field by field (`FieldMerged`): two changes to different fields,
        made on one robot or on two robots apart, both survive.
        """
        uid = self._require_user(user)
        checked = Calibration.build(**(self.calibration(uid).model_dump() | fields))
        doc_id = user_doc(uid, Kind.CALIBRATION)
        return self._write(
            doc_id,
            self._merged_write(
                doc_id, CalibrationDoc, lambda h: h.calibration, CALIBRATION, checked, fields
            ),
        )

    def _merged_write(
        self,
        doc_id: DocId,
        make: Callable[[Replica], H],
        slots: Callable[[H], SlotMap[M]],
        key: str,
        checked: M,
        fields: dict[str, Any],
    ) -> Callable[[Replica], M]:
        """The change that writes ``fields`` (validated already, into ``checked``) over the
        record ``key`` of the slot map ``slots`` of ``doc_id``'s handle as it stands when
        its batch runs, each field stamped now, after every version held now."""
        unmerged = sorted(set(fields) - set(checked.MERGED))
        if unmerged or not fields:
            raise ValidationError(
                f"{type(checked).__name__} changes only {', '.join(checked.MERGED)}; "
                f"not {', '.join(unmerged) or 'nothing'}",
                field=unmerged[0] if unmerged else "fields",
            )
        set_at, device = self._stamp_over(doc_id, make, slots, key)
        changed = {name: getattr(checked, name) for name in fields}

        def change(_: Replica) -> M:
            held = slots(self._handle(doc_id, make))
            current = merge_fields(held.versions(key)) or checked
            if isinstance(current, Profile) and "attributes" in fields:
                # again, against the facts as they stand now: patches queued together were
                # each checked against the profile before any of them (found in review: 69)
                self._check_facts(current.shown(), changed["attributes"])
            stamps = current.stamps | dict.fromkeys(fields, set_at)
            update = changed | {"set_at": set_at, "device": device, "stamps": stamps}
            key_stamps = dict(current.key_stamps)
            for name in current.KEYED:  # entry by entry: a patch; removals kept, not all
                entries, own = getattr(current, name), key_stamps.get(name, {})
                if name in fields:
                    entries = entries | changed[name]
                    own = own | dict.fromkeys(changed[name], set_at)
                if name in stamps:
                    others = [v for v in held.versions(key) if getattr(v, "device", "") != device]
                    update[name], key_stamps[name] = trim_removals(entries, own, others, name)
            update["key_stamps"] = key_stamps
            record = current.model_copy(update=update)
            held.put(key, record, device)
            return record.shown()

        return change

    def calibration(self, user: str) -> Calibration:
        """The user's calibration (defaults if never set)."""
        handle = self._peek(user_doc(user, Kind.CALIBRATION), CalibrationDoc)
        found = merge_fields(handle.calibration.versions(CALIBRATION)) if handle else None
        return found or Calibration(user=user)

    # ------------------------------------------------------------------ preferences

    def set_preference(
        self,
        user: str,
        key: str,
        value: Any,
        *,
        source: str = "explicit",
        confidence: float = 1.0,
        condition: Condition | Mapping[str, Any] | None = None,
        evidence: Sequence[str] = (),
        evidence_count: int = 1,
        note: str = "",
    ) -> asyncio.Future[Preference]:
        """Record that ``user`` prefers ``value`` for ``key`` (under ``condition``)."""
        uid = self._require_user(user)
        condition = as_condition(condition)
        for present in condition.with_users:  # a forgotten id is never written back (found
            self._not_forgotten(present, field="condition.with_users")  # in review)
        slot = f"{key}#{condition.key()}"
        set_at, device = self._stamp_over(
            user_doc(uid, Kind.PREFS), PrefsDoc, lambda h: h.prefs, slot
        )
        record = Preference.build(
            user=uid,
            key=key,
            value=value,
            source=source,
            confidence=confidence,
            condition=condition,
            evidence=list(evidence) if isinstance(evidence, _SEQUENCES) else evidence,
            evidence_count=evidence_count,
            note=note,
            set_at=set_at,
            device=device,
        )
        return self._put_preference(record)

    def delete_preference(
        self, user: str, key: str, condition: Condition | Mapping[str, Any] | None = None
    ) -> asyncio.Future[Preference]:
        """Delete ``key`` under ``condition``: a tombstone version, newer than every other.

        Writes are queued in call order: a `set_preference` of the key not yet applied is
        deleted too (found in review: it was not found)."""
        doc_id = user_doc(user, Kind.PREFS)
        who = user if isinstance(user, str) and NAME_RE.fullmatch(user) else quoted(user)
        if blocked_category_of_text(who):
            who = quoted(user)
        missing = f"{who} has no preference {quoted(key)} under that condition"
        if self.preference(user, key, condition) is None and not self._docs.queued(doc_id):
            raise NotFoundError(missing)
        slot = f"{key}#{as_condition(condition).key()}"
        set_at, device = self._stamp_over(doc_id, PrefsDoc, lambda h: h.prefs, slot)

        def change(_: Replica) -> Preference:
            prefs = self._handle(doc_id, PrefsDoc).prefs
            current = prefs.get(slot)  # as it stands when the batch runs
            if current is None:
                raise NotFoundError(missing)
            update = {"deleted": True, "set_at": set_at, "device": device}
            tombstone = current.model_copy(update=update)
            prefs.put(slot, tombstone, device)
            return tombstone

        return self._write(doc_id, change)

    def _put_preference(self, record: Preference) -> asyncio.Future[Preference]:
        doc_id = user_doc(record.user, Kind.PREFS)
        slot = PrefsDoc.slot_key(record)

        def change(_: Replica) -> Preference:
            prefs = self._handle(doc_id, PrefsDoc).prefs
            # the newest deletion known, as the versions stand when the batch runs: this
            # version overwrites the robot's own tombstone, which alone recorded it
            cleared = max((v.set_at if v.deleted else v.cleared for v in prefs.versions(slot)),
                          default="")  # fmt: skip
            stored = record
            if cleared > record.cleared:
                stored = record.model_copy(update={"cleared": cleared})
            prefs.put(slot, stored, stored.device)
            return stored

        return self._write(doc_id, change)

    def preference(
        self, user: str, key: str, condition: Condition | Mapping[str, Any] | None = None
    ) -> Preference | None:
        """The current value of ``key`` under exactly ``condition`` (unconditional if None)."""
        handle = self._peek(user_doc(user, Kind.PREFS), PrefsDoc)
        if handle is None:
            return None
        return handle.prefs.get(f"{key}#{as_condition(condition).key()}")

    def preferences(self, user: str, prefix: str = "") -> list[Preference]:
        """Every live preference of ``user`` whose key starts with ``prefix``, by key."""
        handle = self._peek(user_doc(user, Kind.PREFS), PrefsDoc)
        if handle is None:
            return []
        return [pref for slot, pref in handle.prefs.items() if slot.startswith(prefix)]

    def preference_history(
        self, user: str, key: str, condition: Condition | Mapping[str, Any] | None = None
    ) -> list[Preference]:
        """Every robot's latest version of ``key``, oldest first (for explanations)."""
        handle = self._peek(user_doc(user, Kind.PREFS), PrefsDoc)
        if handle is None:
            return []
        return handle.prefs.versions(f"{key}#{as_condition(condition).key()}")

    # ------------------------------------------------------------------ health

    def set_health(
        self, user: str, key: str, value: Any, *, note: str = ""
    ) -> asyncio.Future[HealthRecord]:
        uid = self._require_user(user)
        doc_id = user_doc(uid, Kind.HEALTH)
        set_at, device = self._stamp_over(doc_id, HealthDoc, lambda h: h.records, key)
        record = HealthRecord.build(
            user=uid, key=key, value=value, note=note, set_at=set_at, device=device
        )

        def change(_: Replica) -> HealthRecord:
            self._handle(doc_id, HealthDoc).records.put(key, record, device)
            return record

        return self._write(doc_id, change)

    def health(self, user: str) -> list[HealthRecord]:
        handle = self._peek(user_doc(user, Kind.HEALTH), HealthDoc)
        return [record for _, record in handle.records.items()] if handle else []

    # ------------------------------------------------------------------ events

    def record_event(
        self,
        user: str,
        type: EventType | str,
        domain: str,
        *,
        text: str = "",
        payload: Any = None,
        context: ContextSnapshot | dict[str, Any] | None = None,
        ts: int | None = None,
        session: str = "",
    ) -> asyncio.Future[InteractionEvent]:
        """Append an immutable event to ``user``'s history; embedded for recall."""
        uid = self._require_user(user)
        if ts is not None and (
            isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts < 2**53
        ):
            # checked before the id is made of it (a float failed there, outside any check)
            raise ValidationError(
                f"ts must be whole milliseconds since 1970, 0 to 2**53, not {quoted(ts)}",
                field="ts",
            )
        when = int(self._wall() * 1000) if ts is None else ts
        hlc, device = self._stamp()
        event = InteractionEvent.build(
            id=self._event_id(when),
            user=uid,
            type=type,
            domain=domain,
            text=text,
            payload=payload,
            context=context or NOWHERE,
            ts=when,
            hlc=hlc,
            device=device,
            session=session,
        )
        for present in event.context.people_present:  # a forgotten id is never written
            self._not_forgotten(present, field="context.people_present")  # back (review)
        doc_id = events_doc(uid, _month(when))
        record = event.encode(without=_WITHOUT_USER)  # as its document stores it
        embed = ToEmbed(_history_index(uid), event.id, when, _embedding_text(event), record)

        def change(_: Replica) -> InteractionEvent:
            self._handle(doc_id, EventsDoc).events.append(event, record)
            return event

        return self._write(doc_id, change, [embed])

    def _event_id(self, ts_ms: int) -> str:
        """``ev-`` + 12 hex digits of the event time + 20 random: sortable by time, unique."""
        return f"ev-{ts_ms:012x}{self._ids.getrandbits(80):020x}"

    def events(
        self,
        user: str,
        *,
        since: int | None = None,
        until: int | None = None,
        domain: str | None = None,
    ) -> list[InteractionEvent]:
        """``user``'s events with ``since <= ts < until`` (ms), oldest first."""
        _check_window(since, until)
        found: list[InteractionEvent] = []
        for doc_id in self._event_docs(user, since, until):
            events, keys = self._handle(doc_id, EventsDoc).events.ordered(_by_time)
            # a month's events sorted once (until it changes): the window is two bisections
            low = 0 if since is None else bisect_left(keys, (since,))
            high = len(keys) if until is None else bisect_left(keys, (until,))
            window = events[low:high]
            found.extend(window if domain is None else (e for e in window if e.domain == domain))
        return sorted(found, key=_by_time)  # months in order: already sorted, one linear pass

    def _event_docs(self, user: str, since: int | None, until: int | None) -> list[DocId]:
        prefix = f"user/{user}/events/"
        low = _month(since, "since") if since is not None else ""
        high = _month(until, "until") if until is not None else "9999-99"
        return sorted(
            doc_id
            for doc_id in self._docs.replicas
            if doc_id.startswith(prefix) and low <= doc_id[len(prefix) :] <= high
        )

    async def recall(
        self,
        user: str,
        query: str | np.ndarray,
        *,
        k: int = 10,
        since: int | None = None,
        until: int | None = None,
    ) -> list[Recalled]:
        """The ``k`` events of ``user`` most similar to ``query`` within the time window."""
        uid = self._require_user(user)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValidationError(
                f"k must be a whole number, at least 1, not {quoted(k)}", field="k"
            )
        _check_window(since, until)
        # every event `events` lists can be recalled: merged from another robot, it is in
        # memory at once, and its embedding lands with the batch that makes it durable
        await self._docs.embedded(_history_index(uid))
        index = await self._vectors.open_index(uid, HISTORY)
        self._index_later()
        vector = self._vectors.embedder.embed([query])[0] if isinstance(query, str) else query
        async with self._vector_lock:  # what is committed and not yet in the graph is staged
            hits = index.search(vector, k=k, since_ms=since, until_ms=until)
        if not hits:
            return []
        rows = await self._sqlite.recalled([hit.rowid for hit in hits])
        found = self._recalled_events(uid, rows.values())
        return [
            Recalled(found[rows[hit.rowid][0]], hit.score)
            for hit in hits
            if hit.rowid in rows and rows[hit.rowid][0] in found
        ]

    def _recalled_events(
        self, user: UserId, rows: Iterable[tuple[str, str | None]]
    ) -> dict[str, InteractionEvent]:
        """The events behind recalled embeddings: decoded from the record kept with each
        (never by searching a month of events), else found in their document (embeddings of
        a format 1 store keep no record)."""
        given = _given_user(user)
        found: dict[str, InteractionEvent] = {}
        missing: set[str] = set()
        for event_id, record in rows:
            if record is None:
                missing.add(event_id)
                continue
            try:
                found[event_id] = InteractionEvent.decode(record, given=given)
            except ValidationError:
                missing.add(event_id)
        return found | (self._events_by_id(user, missing) if missing else {})

    def _events_by_id(self, user: UserId, wanted: set[str]) -> dict[str, InteractionEvent]:
        found: dict[str, InteractionEvent] = {}
        for event_id in wanted:  # an event id starts with its time: its month is known
            handle = self._peek(events_doc(user, _month(_event_ts(event_id))), EventsDoc)
            event = handle.events.by_id(event_id) if handle is not None else None
            if event is not None:
                found[event_id] = event
        return found

    def _index_vectors(self, rows: Sequence[VectorRow], matrix: np.ndarray) -> None:
        """Called by the flusher once embeddings are committed (derived data follows SQLite).

        The vectors are staged, searchable at once (exactly), and inserted into the HNSW graph
        later by `_index_staged`: an insertion costs far more than the write itself.
        """
        by_index: dict[str, list[int]] = {}
        for at, row in enumerate(rows):
            by_index.setdefault(row.index_name, []).append(at)
        for name, picked in by_index.items():
            user, _, scope = name.partition(".")
            batch = [(row.rowid, row.ts, row.vec) for row in map(rows.__getitem__, picked)]
            if not self._vectors.is_open(user, scope):
                # a user heard of from another robot: their index opens only here, or every
                # event merged since went unstaged and the first recall rebuilt them all
                self._to_open.add((user, scope))
            self._vectors.stage(user, scope, batch, matrix[picked])
        self._index_later()

    def _index_later(self) -> None:
        """Have the indexer insert what is staged (`_index_staged`), if anything is."""
        if self._vectors.pending >= INDEX_BACKLOG:
            self._backlog.set()
        busy = self._vectors.pending or self._to_open
        if busy and (self._indexer is None or self._indexer.done()):
            self._indexer = asyncio.create_task(self._index_staged(), name="hearthsync-indexer")

    def _remote_events(self, info: DocInfo, texts: Sequence[str]) -> list[ToEmbed]:
        """What to embed of events another robot wrote (`DocumentSet.remote_events`): the
        embeddings are this robot's own (derived, never synced), so recall finds every event
        of the household, wherever it was recorded."""
        given = _given_user(info.subject)
        wanted: list[ToEmbed] = []
        for text in texts:
            try:
                event = InteractionEvent.decode(text, given=given)
            except ValidationError as exc:
                log.warning(
                    "not embedding an event of %s that does not decode: %s", info.doc_id, exc
                )
                continue
            wanted.append(
                ToEmbed(
                    _history_index(event.user), event.id, event.ts, _embedding_text(event), text
                )
            )
        return wanted

    async def _index_staged(self) -> None:
        """Insert staged vectors into their graphs, `INDEX_CHUNK` at a time on the loop's own
        thread, once the store is idle (no batch committed for `index_idle_s`, none queued),
        or at once while more than `INDEX_BACKLOG` wait (their exact search grows with them).
        Idle, it first opens the indexes rows were committed for while closed (`_to_open`).

        Not on a worker thread: usearch takes the GIL back for every vector it inserts, so
        while the loop is busy an insertion there waits a switch interval (5 ms) per vector,
        and a search waiting for it waited seconds (docs/explanation/vector-memory.md).
        """
        idle = False
        while self._vectors.pending or self._to_open:
            committed = self._docs.batches_committed
            if not idle and self._vectors.pending < INDEX_BACKLOG:
                self._backlog.clear()
                with contextlib.suppress(TimeoutError):  # a backlog ends the wait early
                    await asyncio.wait_for(self._backlog.wait(), self.index_idle_s)
                idle = self._docs.batches_committed == committed and not self._docs.busy
                continue
            if self._to_open:  # what the table holds is read now, not at the first recall
                with contextlib.suppress(NotFoundError):  # forgotten meanwhile
                    await self._vectors.open_index(*self._to_open.pop())
                continue
            async with self._vector_lock:
                self._vectors.absorb(INDEX_CHUNK)
            await asyncio.sleep(0)  # writers queue here; then idle only if none did
            idle = self._docs.batches_committed == committed and not self._docs.busy

    async def _indexed(self) -> None:
        """Insert every staged vector into its graph now, when closing: on a worker thread,
        as nothing is committed (and so staged) any more."""
        await _stopped(self._indexer)
        self._indexer = None
        async with self._vector_lock:
            if self._vectors.pending:
                await self._vectors.offload(self._vectors.absorb)

    # ------------------------------------------------------------------ home: spatial

    def set_region(self, region: str, label: str, **fields: Any) -> asyncio.Future[Region]:
        _people_write_these(fields)
        spatial = DocId("home/spatial")
        set_at, device = self._stamp_over(spatial, SpatialDoc, lambda h: h.regions, region)
        record = Region.build(id=region, label=label, set_at=set_at, device=device, **fields)

        def change(_: Replica) -> Region:
            self._spatial().regions.put(record.id, record, device)
            return record

        return self._write(DocId("home/spatial"), change)

    def regions(self) -> list[Region]:
        spatial = self._seen_spatial()
        return [record for _, record in spatial.regions.items()] if spatial else []

    def place(
        self,
        object: str,
        label: str,
        *,
        region: str | None = None,
        pose: Pose | dict[str, Any] | None = None,
        owner: str | None = None,
        kind: str = "belongs",
    ) -> asyncio.Future[Placement]:
        """Record where ``object`` belongs (or was seen); a move is added to the history.

        Write this when an object moves to another place, not at sensor rate (DESIGN
        invariant 6): every overwrite leaves bytes in the document forever.
        """
        spatial = DocId("home/spatial")
        set_at, device = self._stamp_over(spatial, SpatialDoc, lambda h: h.placements, object)
        record = Placement.build(
            object=object,
            label=label,
            region=region,
            pose=pose,
            owner=owner,
            kind=kind,
            set_at=set_at,
            device=device,
        )
        self._not_forgotten(record.owner, field="owner")

        def change(_: Replica) -> Placement:
            handle = self._spatial()
            before = handle.placements.get(record.object)
            moved = None
            if before is None or before.region != record.region:
                # made before anything is written: a change that raises has changed nothing
                moved = SpatialChange.derived(
                    object=record.object,
                    from_region=before.region if before else None,
                    to_region=record.region,
                    at=set_at,
                    device=device,
                )
            handle.placements.put(record.object, record, device)
            if moved is not None:
                handle.changes.append(moved)
            return record

        return self._write(DocId("home/spatial"), change)

    def placement(self, object: str) -> Placement | None:
        spatial = self._seen_spatial()
        return spatial.placements.get(object) if spatial else None

    def placements(self, *, region: str | None = None, owner: str | None = None) -> list[Placement]:
        spatial = self._seen_spatial()
        return [
            record
            for _, record in (spatial.placements.items() if spatial else ())
            if (region is None or record.region == region)
            and (owner is None or record.owner == owner)
        ]

    def spatial_changes(self, object: str | None = None) -> list[SpatialChange]:
        spatial = self._seen_spatial()
        if spatial is None:
            return []
        return [c for c in spatial.changes if object is None or c.object == object]

    def _spatial(self) -> SpatialDoc:
        return self._handle(DocId("home/spatial"), SpatialDoc)

    def _seen_spatial(self) -> SpatialDoc | None:
        """The spatial document for reading: None if there is none (a read made an empty
        document, stored at the next batch; found in review)."""
        return self._peek(DocId("home/spatial"), SpatialDoc)

    # ------------------------------------------------------------------ home: graph

    def set_routine(self, routine: str, label: str, **fields: Any) -> asyncio.Future[Routine]:
        _people_write_these(fields)
        graph = DocId("home/graph")
        set_at, device = self._stamp_over(graph, GraphDoc, lambda h: h.routines, routine)
        record = Routine.build(id=routine, label=label, set_at=set_at, device=device, **fields)
        self._not_forgotten(record.user, field="user")

        def change(_: Replica) -> Routine:
            self._graph().routines.put(record.id, record, device)
            return record

        return self._write(DocId("home/graph"), change)

    def routines(self, user: str | None = None) -> list[Routine]:
        graph = self._peek(DocId("home/graph"), GraphDoc)  # a read makes no document
        found = graph.routines.items() if graph else ()
        return [r for _, r in found if user is None or r.user == user]

    def relate(
        self, subject: str, relation: str, object: str, *, note: str = ""
    ) -> asyncio.Future[Relationship]:
        key = f"{subject}|{relation}|{object}"  # `Relationship.key`
        set_at, device = self._stamp_over(
            DocId("home/graph"), GraphDoc, lambda h: h.relationships, key
        )
        record = Relationship.build(
            subject=subject,
            relation=relation,
            object=object,
            note=note,
            set_at=set_at,
            device=device,
        )
        self._not_forgotten(record.subject, field="subject")
        self._not_forgotten(record.object, field="object")

        def change(_: Replica) -> Relationship:
            self._graph().relationships.put(record.key(), record, device)
            return record

        return self._write(DocId("home/graph"), change)

    def relationships(self, subject: str | None = None) -> list[Relationship]:
        graph = self._peek(DocId("home/graph"), GraphDoc)  # a read makes no document
        return [
            r
            for _, r in (graph.relationships.items() if graph else ())
            if subject is None or subject in (r.subject, r.object)
        ]

    def _graph(self) -> GraphDoc:
        return self._handle(DocId("home/graph"), GraphDoc)

    # ------------------------------------------------------------------ replication
    # What household sync builds on: state vectors, diffs, and durable application of a peer's
    # updates.  Documents are addressed by id (see `hearthsync.crdt.kinds`).

    def document_ids(self) -> list[DocId]:
        return sorted(self._docs.replicas)

    def state_vector(self, doc_id: str) -> bytes:
        """The canonical state vector of ``doc_id`` (``b"\\x00"``, empty, if absent)."""
        # unsorted is fine: Yrs leaves what lies beyond a gap out of the state vector
        replica = self._docs.replicas.get(DocId(doc_id))
        return statevector.canonical(replica.state_vector()) if replica else b"\x00"

    def lineage(self, doc_id: str) -> LineageId | None:
        replica = self._docs.replicas.get(DocId(doc_id))
        return replica.lineage if replica else None

    def revision(self, doc_id: str) -> tuple[int, int]:
        """Changes whenever ``doc_id`` may read differently here, deletions included (which
        its state vector does not count): what a derived view is stamped with ((0, 0):
        absent)."""
        replica = self._docs.settled(DocId(doc_id))
        return replica.revision if replica else (0, 0)

    def diff(self, doc_id: str, state_vector: bytes = b"\x00") -> bytes:
        """The update holding everything of ``doc_id`` that ``state_vector`` has not seen,
        what is held aside beyond a clock gap merged in.

        Merged, the document's own deletions of entries that a held item overwrites wait
        with that item on the robot that merges it; the sync session sends the two apart
        (`docs` ``.diff``), and so should anything else that keeps two robots in sync."""
        parts = self.docs.diff(DocId(doc_id), state_vector)
        return parts[0] if len(parts) == 1 else bytes(merge_updates(*parts))

    async def apply_update(self, doc_id: str, update: bytes, *, origin: str = "remote") -> bytes:
        """Merge another replica's update; return the state vector once it is durable here."""
        done = self.receive_update(doc_id, update, origin=origin)
        if done is not None:
            await asyncio.shield(done)
        return self.state_vector(doc_id)

    def receive_update(
        self, doc_id: str, update: bytes, *, origin: str = "remote", packed: bytes | None = None
    ) -> asyncio.Future[None] | None:
        """Merge another replica's update in memory now; the future resolves once it is
        durable (``None``: nothing new).  For drivers that acknowledge later, like the chaos
        simulation; `apply_update` is the awaitable form.  ``packed``: the Zstandard frame
        ``update`` arrived in, if any, which the store keeps rather than compress again."""
        info = parse(doc_id)
        forgotten = self._forgotten_users()
        if info.subject in forgotten:
            return None  # refused: what remains of a forgotten user is not taken back in
        done = self._docs.apply_remote(DocId(doc_id), update, origin, packed=packed)
        self._users = None  # the household's user list may have changed
        if forgotten and info.kind in (Kind.GRAPH, Kind.SPATIAL):
            # a robot away while a user was forgotten brings back what it wrote of them
            self._forgetting.on_home_merged(update)
        if done is not None and _holds_stamps(doc_id):
            # what this robot writes from now on is stamped after what it has just received,
            # or a robot whose wall clock is slow would lose every correction it is told
            seen = latest_stored(update)
            if seen is not None and not self._clock.observe(seen, max_ahead_ms=MAX_AHEAD_MS):
                log.warning(
                    "%s: not following a stamp %.0f s ahead of this robot's clock",
                    doc_id, seen.ms / 1000 - self._wall(),
                )  # fmt: skip
        return done

    # ------------------------------------------------------------------ forgetting

    async def forget(self, user: str) -> Statement:
        """Forget ``user`` here and, through the household document, on every robot: their
        documents, events, embeddings and data keys go, a signed tombstone stays, and their
        data is refused from then on.  Returns once nothing of theirs remains in this robot's
        files (see `hearthsync.forgetting`)."""
        check_name(user, field="user")
        return await self._forgetting.forget(user)

    def forgotten(self) -> dict[str, Statement]:
        """The valid tombstones of the household, by user."""
        return self._forgetting.tombstones()

    def forgotten_users(self) -> frozenset[str]:
        """The ids of the users forgotten here: `forgotten`'s keys, kept between changes of
        the household (it checks every tombstone's signature at each call)."""
        return self._forgotten_users()

    def forgetting_remnants(self, user: str) -> list[Remnant]:
        """What this robot still holds of ``user``, forgotten (documents, the user's entry,
        data keys, index files, mentions in the home documents, a purge not finished): one
        `Remnant` each (its kind, and a line saying it), none once forgetting ``user`` is
        done here.  For checks (the chaos
        harness, an operator's console): a user never forgotten has remnants by definition."""
        return self._forgetting.remnants(user)

    def keys_changed(self) -> None:
        """Another robot granted keys: keep them with this device's credentials.  An owner or
        admin grants them on to the robots linked to it: one such robot's key of a slot that
        this one keyed too is news to them, and the robots holding both seal with the same
        one (`Keyring`)."""
        self._credentials_changed()

    def keys_wanted(self, user: str) -> None:
        """The owner: a linked robot asked for the keys of ``user``, whom no robot keyed in
        the current epoch.  It holds their documents: a user an admin added, and keyed
        alone, after the owner had revoked it, whose entry the household refused (every
        robot refuses what a revoked robot writes after its revocation).  The robot that
        took the admin's keys before it heard of the revocation seals nothing of the user
        under them now (the revoked admin holds them), and what it wrote of them waited on
        it for good (the chaos harness, seed 7002366).  Keyed here in the current epoch,
        saved and granted on every link (`_make_keys`)."""
        state = self.household
        if self._closed or state is None or state.certificate.role != "owner":
            return
        if user in self._forgotten_users():  # a tombstone the keyring has not taken yet
            return
        keyed = state.keyring.keyed_users()
        if user not in keyed:
            # any member may ask, for any id, on session after session: each asked for and
            # never heard of is keyed in every scope, granted everywhere, rotated at every
            # revocation, and past 4 MiB of keys the credentials no longer load (found in
            # review).  Past `MAX_UNLISTED_KEYED` of them, no more
            unlisted = keyed - self._known_users()
            if len(unlisted) >= MAX_UNLISTED_KEYED:
                log.warning(
                    "not keying %r, asked for by a robot: %d users keyed so are not on the "
                    "household's list yet (at most %d)", user, len(unlisted), MAX_UNLISTED_KEYED,
                )  # fmt: skip
                return
        self._make_keys(user)

    def _credentials_changed(self) -> None:
        """Keys or trust changed: the owner keys the users a new epoch's rotation did not
        know of, the credentials are saved (once), and an owner or admin grants what it
        holds now (keys it was granted, keys of an epoch a newer list accounts for)."""
        state = self.household
        if state is None or self._key_users():  # keying saves and grants
            return
        enrolment.save(self.path, state, int(self._wall()))
        if state.is_admin:
            self._grant_keys()

    def trust_changed(self) -> None:
        """The trust store changed (a newer revocation list, a certificate learned from a peer):
        keep it with this device's credentials, and look again at tombstones that did not
        check out before (their device may be known now)."""
        self._users = self._forgotten = None  # a tombstone's device may check out now, or not
        self._credentials_changed()  # (keys the users of that list, not the cached one)
        self._settings.changed()
        self._forgetting.on_household_change()

    def on_durable(self, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener`` with each batch of (doc_id, delta, origin) once it is durable;
        returns the function that unsubscribes it.  Sync forwards only what is on disk."""
        self._docs.on_commit.append(listener)
        return lambda: self._docs.on_commit.remove(listener)

    @property
    def docs(self) -> _PeerDocs:
        """This peer's documents as the sync session sees them (`DocSource`)."""
        return _PeerDocs(self)

    # ------------------------------------------------------------------ context
    # The context engine (`hearthsync.context`) over this peer, with the household's policy
    # and this robot's clock: what the reasoning layer asks before it acts.

    def now(self) -> dt.datetime:
        """This robot's wall clock, as an aware datetime in the machine's time zone."""
        return dt.datetime.fromtimestamp(self._wall()).astimezone()

    def policy(self) -> HouseholdPolicy:
        """The household's task policy in force (signed by an owner or admin; see
        `hearthsync.settings`), else the built-in default."""
        self._observe_household()
        return self._settings.policy()

    async def set_policy(self, policy: HouseholdPolicy) -> HouseholdPolicy:
        """Make ``policy`` the household's (owner or admin robots only; signed, synced)."""
        statement = self._settings.set_policy(policy)
        await self._settings.write(statement)
        return policy

    def device_names(self) -> dict[str, str]:
        """The robots this one knows, by device id: itself and every certified device."""
        names = {str(self.device_id): self.device}
        if self.household is not None:
            for device in self.household.trust.devices():
                names.setdefault(
                    str(device), self.household.trust.certificate_of(device).device_name
                )
        return names

    async def get_context(
        self,
        user: str,
        *,
        task: str,
        location: str | None = None,
        time: dt.datetime | None = None,
        present: Sequence[str] = (),
        history_window: str = "7d",
        query: str | None = None,
        max_tokens: int | None = None,
    ) -> Context:
        """What the robot should know about ``user`` before it does ``task``: the profile,
        calibration, preferences resolved for the situation, recent and recalled events,
        spatial facts, active routines, each with its provenance, and the scopes the task
        was not granted (withheld, never read).  See `hearthsync.context`."""
        return await engine_for(self).get_context(
            user, task=task, location=location, time=time or self.now(), present=present,
            history_window=history_window, query=query, max_tokens=max_tokens,
            policy=self.policy(),
        )  # fmt: skip

    async def explain(
        self,
        user: str,
        key: str,
        *,
        time: dt.datetime | None = None,
        location: str | None = None,
        present: Sequence[str] = (),
        task: str | None = None,
    ) -> str:
        """One sentence: the value of ``key`` for ``user`` now, and why (for ``task``: with
        the scopes it is granted, so a medication task explains a medication key)."""
        return await explain_preference(
            self, user, key, time=time or self.now(), location=location, present=present,
            devices=self.device_names(), policy=self.policy(), task=task,
        )  # fmt: skip

    async def maintain(
        self, *, lookback: str = "90d", users: Sequence[str] | None = None
    ) -> MaintenanceReport:
        """The slow loop: fold confirmations, promote stable preferences, decay, flag drift."""
        return await maintain_preferences(self, now=self.now(), lookback=lookback, users=users)

    # ------------------------------------------------------------------ maintenance

    async def flush(self) -> None:
        """Wait until every write queued so far is durable."""
        await self._docs.write_barrier()

    async def compact(self) -> int:
        """Fold every document's update log into its snapshot and shrink the file."""
        return await self._docs.compact()

    async def status(self) -> PeerStatus:
        await self.flush()
        sizes = await self._sqlite.sizes()
        documents = [
            DocumentStatus(
                doc_id,
                replica.info.scope,
                replica.info.subject,
                *sizes.get(doc_id, (0, 0, 0)),
                _record_count(replica),
            )
            for doc_id, replica in sorted(self._docs.replicas.items())
        ]
        files = [self.path / DB_FILE, self.path / f"{DB_FILE}-wal"]
        vectors: dict[str, int] = {}
        for user in self.users():
            try:
                index = await self._vectors.open_index(user, HISTORY)
            except NotFoundError:  # forgotten while this ran: nothing of theirs to count
                continue
            vectors[_history_index(user)] = _embedded(index)
        return PeerStatus(
            path=self.path,
            device=self.device,
            device_id=self.device_id,
            users=list(self.users()),
            documents=documents,
            corrupt=self.corrupt,
            file_bytes=sum(f.stat().st_size for f in files if f.exists()),
            vectors=vectors,
        )


@functools.lru_cache(maxsize=4096)
def _describe(doc_id: str) -> DocMeta:
    """What a document id says (a pure function of the id, asked for several times per
    envelope sent or received; `parse` raises for an id that is not a document's)."""
    info = parse(doc_id)
    subject = None if info.subject == HOME else info.subject
    return DocMeta(info.scope, subject, info.genesis)


class _PeerDocs:
    """The `hearthsync.protocol.session.DocSource` port over a peer's documents."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def describe(self, doc_id: str) -> DocMeta:
        return _describe(doc_id)

    def held(self) -> list[tuple[DocId, LineageId]]:
        docs = self._peer._docs.replicas
        gone = self._peer._forgotten_users()  # being purged: never offered again
        return [
            (doc_id, docs[doc_id].lineage)
            for doc_id in sorted(docs)
            if docs[doc_id].info.subject not in gone
        ]

    def lineage(self, doc_id: DocId) -> LineageId | None:
        return self._peer.lineage(doc_id)

    def state_vector(self, doc_id: DocId) -> bytes:
        return self._peer.state_vector(doc_id)

    def digest(self, doc_id: DocId) -> bytes:
        replica = self._peer._docs.settled(doc_id)
        return replica.digest() if replica is not None else EMPTY_DIGEST

    def diff(self, doc_id: DocId, state_vector: bytes) -> list[bytes]:
        replica = self._peer._docs.settled(doc_id)
        if replica is None:
            raise NotFoundError(f"no document {doc_id!r}")
        return [bytes(replica.doc.get_update(state_vector)), *replica.beyond]

    def peer_state(self, doc_id: DocId, state_vector: bytes) -> None:
        self._peer._docs.renew_if_stale(doc_id, statevector.decode(state_vector))


def _embedded(index: VectorIndex) -> int:
    """Vectors an index answers for: in its graph or staged for it."""
    return index.count + index.pending


async def _device_name(sqlite: SqliteStore, device: str | None) -> str:
    stored = await sqlite.get_meta("device")
    if stored is None:
        if device is None:
            raise ValidationError(
                "a new peer needs a device name: Peer.open(path, device=...)", field="device"
            )
        check_name(device, field="device")
        await sqlite.commit_meta({"device": device})
        return device
    if device is not None and device != stored:
        raise ValidationError(
            f"this store belongs to device {stored!r}, not {device!r}", field="device"
        )
    return stored


async def _check_embedder(sqlite: SqliteStore, embedder: Embedder) -> None:
    """Stored embeddings are only comparable with queries from the same embedder."""
    stored = await sqlite.get_meta("embedder")
    if stored is None:
        await sqlite.commit_meta({"embedder": embedder.name})
    elif stored != embedder.name:
        raise ValidationError(
            f"this store's events were embedded with {stored!r}, not {embedder.name!r}; "
            "open it with the same embedder",
            field="embedder",
        )


def _restored(
    last: str | None, ahead: str | None, now_s: float
) -> tuple[Timestamp | None, Timestamp | None]:
    """The clock's last stamp and its mark of stamps ahead, as stored.  A last stamp further
    ahead of the clock this robot now goes by than it follows anything (`MAX_AHEAD_MS`) was
    given while the system clock glitched: it is held as ahead (its keys are still overtaken,
    `HybridClock.after`), not followed, or one glitched read stamped every later write in
    2106, restart after restart (found in review)."""
    held = Timestamp.parse(last) if last else None
    mark = Timestamp.parse(ahead) if ahead else None
    if held is not None and held.ms > now_s * 1000 + MAX_AHEAD_MS:
        log.warning("this robot's last stamp, %s, is far ahead of its clock: not followed", held)
        if mark is None or (mark.ms, mark.counter) < (held.ms, held.counter):
            mark = held
        held = None
    return held, mark


def _history_index(user: str) -> str:
    """The vector index of ``user``'s events, as `ToEmbed.index_name` names it."""
    return f"{user}.{HISTORY}"


#: record fields the peer writes itself, never a caller's ``**fields``
_PEERS_OWN = ("set_at", "device", "deleted")


def _people_write_these(fields: Mapping[str, Any]) -> None:
    """Refuse the fields the peer writes itself among a caller's ``**fields``: ``deleted``
    removed a region or routine with no delete documented, and ``set_at`` or ``device``
    raised a TypeError (found in review)."""
    for name in _PEERS_OWN:
        if name in fields:
            raise ValidationError(f"{name} is written by the peer, not given", field=name)


def _check_window(since: object, until: object) -> None:
    """Refuse a bound of a time window that is not whole milliseconds (a string, a float)."""
    for name, bound in (("since", since), ("until", until)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise ValidationError(
                f"{name} must be whole milliseconds since 1970, not {quoted(bound)}", field=name
            )


def _month(ts_ms: int, field: str = "ts") -> str:
    """The month (``yyyy-mm``, UTC) of ``ts_ms``, whose events document holds it."""
    try:
        return _month_of_day(ts_ms // 86_400_000)
    except OverflowError:
        raise ValidationError(
            f"{field} {ts_ms} is not a time in ms between the years 1 and 9999", field=field
        ) from None


@functools.lru_cache(maxsize=4096)
def _month_of_day(day: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)).strftime("%Y-%m")


def _event_ts(event_id: str) -> int:
    return int(event_id[3:15], 16)


_WITHOUT_USER = frozenset({"user"})


def _standing_still() -> float:
    """The monotonic clock of a peer whose wall clock is injected: time moves when it says."""
    return 0.0


def _by_time(event: InteractionEvent) -> tuple[int, str]:
    """History order: by time, ties broken by hybrid clock (the same on every robot)."""
    return (event.ts, event.hlc)


def _given_user(user: str) -> str:
    """The opening `Record.decode` puts before a record stored without its user."""
    return given_fields({"user": user})


def _embedding_text(event: InteractionEvent) -> str:
    """What recall matches on: the words, else the domain and payload."""
    if event.text:
        return event.text
    return f"{event.type.value.lower()} {event.domain} {event.payload or ''}"


def _record_count(replica: Replica) -> int:
    return sum(len(replica.doc.get(name, type=kind)) for name, kind in ROOTS[replica.info.kind])


__all__ = ["DocumentStatus", "Peer", "PeerStatus", "Recalled", "parse"]
