"""The deterministic simulation: real sessions and real stores on a simulated network.

Every robot is a real `Peer` (its own SQLite file in a temporary folder) and every connection
is a pair of real `Session` objects; only the network and the clock are simulated.  One loop
takes events from a heap ordered by (simulated time, sequence number) and runs each to the
end before the next, so the order of everything (deliveries, commits, acknowledgements) is a
function of the seed alone: the same seed gives the same trace, bit for bit.

What the simulated network and clock add, and why each is realistic:

* **latency** per message (in order per connection, as TCP keeps it), **delay** (a slow link),
  **reorder** (messages overtake each other), **duplicate**, **drop**: the faults a relay's
  store-and-forward path or a flaky link produces; the protocol repairs them (SPEC §6.4);
* **partition**: messages between the sides vanish, silently, as on a Wi-Fi split; connections
  die by heartbeat, and dialing fails until the heal;
* **crash**: the robot's memory is gone (`Peer.crash`); only what was committed survives, and
  the robot restarts from its store; the other side of its connections sees them reset;
* **skew**: each robot's wall clock is off by its own amount, and may jump;
* **revoke**: the owner revokes a robot mid-run; the checkers then prove it receives nothing
  written with the new keys.

Writes are acknowledged the way `Peer` acknowledges them: after their group commit, which
happens a drawn *commit delay* after the first queued write (a crash in between loses them,
unacknowledged, as a real crash would).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from hearthsync.chaos.check import Findings, Replica, Write, digest, verify
from hearthsync.chaos.plan import (
    FIRST_USERS,
    LATER_USERS,
    OBJECTS,
    PREF_KEYS,
    REGIONS,
    SCOPES,
    Fault,
    Op,
    Plan,
)
from hearthsync.crdt.handles import PrefsDoc
from hearthsync.crdt.kinds import HOME, Kind, events_doc, parse, user_doc
from hearthsync.crypto.certificate import Certificate, Revocations, TrustStore
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import KEY_FILE, DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import ClosedError, HearthError, NotFoundError
from hearthsync.ids import DocId
from hearthsync.model.records import Condition
from hearthsync.peer import Peer
from hearthsync.protocol import frames as f
from hearthsync.protocol.session import (
    ApplyUpdate,
    Closed,
    KeyMissing,
    LineageMismatch,
    PeerAuthenticated,
    RevocationsChanged,
    SealFailed,
    Session,
)
from hearthsync.store.embedding import HashingEmbedder
from hearthsync.store.sqlite import Batch

log = logging.getLogger(__name__)

#: simulated time 0 on every robot's wall clock (2026-09-15 12:00 UTC), before its skew
BASE_WALL = 1_789_473_600.0
TICK_S = 0.5  #: how often every session's heartbeat timer runs
CONNECT_TIMEOUT_S = 1.0  #: a dial across a partition fails after this long
FIRST_RETRY_S = 0.2
MAX_RETRY_S = 10.0
YEAR_S = 365 * 86_400
_HEARTBEAT_FRAMES = frozenset({f.FrameType.PING, f.FrameType.PONG})


def _fast_tmp() -> str | None:
    """A RAM-backed folder where there is one: the stores are real files, not durable ones."""
    shm = Path("/dev/shm")  # noqa: S108 - mkdtemp makes a private folder inside it
    return str(shm) if shm.is_dir() else None


@dataclass(slots=True)
class _Side:
    """One end of a connection: a robot's session, alive until torn down."""

    robot: int
    session: Session
    incarnation: int
    alive: bool = True


@dataclass(slots=True)
class _Conn:
    index: int
    sides: dict[int, _Side]
    arrival: dict[int, float] = field(default_factory=dict)  #: last arrival time, per receiver

    def other(self, robot: int) -> int:
        return next(r for r in self.sides if r != robot)


@dataclass
class Robot:
    """One simulated robot: its credentials (which survive a crash: they are files), its peer
    (None while crashed), and its connections."""

    index: int
    folder: Path
    identity: DeviceIdentity
    certificate: Certificate
    trust: TrustStore
    keyring: Keyring
    scopes: frozenset[str]
    rng: random.Random
    skew: float
    peer: Peer | None = None
    incarnation: int = 0
    conns: dict[int, _Conn] = field(default_factory=dict)  #: live connections by other robot
    dialing: set[int] = field(default_factory=set)
    retry: dict[int, float] = field(default_factory=dict)
    commit_at: float | None = None
    writers: list[tuple[asyncio.Task[Write | None], Op]] = field(default_factory=list)
    to_ack: list[tuple[_Conn, DocId]] = field(default_factory=list)
    commits: int = 0

    @property
    def device_id(self) -> str:
        return self.identity.device_id


@dataclass(frozen=True)
class Outcome:
    """What one schedule did, and what the checkers found (no live objects: it pickles)."""

    seed: int
    peers: int
    faults: list[str]  #: the faults injected, described, in order
    fault_kinds: list[str]  #: their kinds, in the same order
    ops: int  #: writes attempted
    acknowledged: int  #: writes acknowledged (durable on their robot)
    findings: Findings
    errors: list[str]  #: exceptions that escaped, and protocol anomalies
    converge_s: float | None  #: simulated seconds from the heal to quiescence (None: never)
    trace: list[str]
    trace_digest: str  #: of the trace and of every robot's final documents
    messages: int
    messages_lost: int
    elapsed_s: float  #: wall-clock seconds the schedule took

    @property
    def ok(self) -> bool:
        f = self.findings
        return (
            not (f.lost or f.divergences or f.leaks or self.errors) and self.converge_s is not None
        )


class Simulation:
    """Run one `Plan`: ``outcome = await Simulation(plan, folder).run()``."""

    def __init__(self, plan: Plan, folder: Path) -> None:
        self.plan = plan
        self.scenario = plan.scenario
        self.folder = folder
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], Awaitable[None] | None]]] = []
        self._seq = 0
        self.net = random.Random(f"hearthsync-chaos-net-{plan.seed}")
        self.trace: list[str] = []
        self.errors: list[str] = []
        self.writes: list[Write] = []
        self.faults_injected: list[str] = []
        self.fault_kinds: list[str] = []
        self.robots: list[Robot] = []
        self._conn_seq = 0
        self._active: list[Fault] = []
        self._healed = False
        self.revoked: int | None = None
        self.revoked_epochs: dict[str, int] = {}
        self.messages = 0
        self.lost = 0
        self._in_flight = 0  # data frames (not heartbeats) on their way
        self._bug_counter = 0

    # ------------------------------------------------------------------ the event loop

    def at(self, when: float, action: Callable[[], Awaitable[None] | None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, action))

    def note(self, line: str) -> None:
        self.trace.append(f"t={self.now:8.3f} {line}")

    async def run(self) -> Outcome:
        started = time.perf_counter()
        try:
            await self._setup()
            for op in self.plan.ops:
                self.at(op.at, lambda op=op: self._op(op))  # type: ignore[misc]
            for fault in self.plan.faults:
                self.at(fault.at, lambda fault=fault: self._start_fault(fault))  # type: ignore[misc]
                if fault.until > fault.at or fault.kind == "crash":
                    self.at(fault.until, lambda fault=fault: self._end_fault(fault))  # type: ignore[misc]
            self.at(TICK_S, self._tick)
            heal = self.scenario.duration
            self.at(heal, self._heal)
            converged_at = await self._loop(heal + self.scenario.settle_limit)
            if converged_at is None:
                self.note(f"did not converge before the settle limit: {self._busy()}")
            else:
                self.note("quiescent: checking")
            for robot in self.robots:
                if robot.peer is None:  # cannot happen after the heal; be loud if it does
                    self.errors.append(f"r{robot.index} is down at the end")
                    await self._boot(robot)
                await _peer(robot).commit()
            findings = self._verify()
            final = "".join(digest(_peer(r)) for r in self.robots)
            hashed = hashlib.blake2b("\n".join([*self.trace, final]).encode(), digest_size=16)
            return Outcome(
                seed=self.plan.seed, peers=self.plan.peers, faults=self.faults_injected,
                fault_kinds=self.fault_kinds,
                ops=len(self.plan.ops), acknowledged=len(self.writes), findings=findings,
                errors=self.errors,
                converge_s=None if converged_at is None else converged_at - heal,
                trace=self.trace, trace_digest=hashed.hexdigest(), messages=self.messages,
                messages_lost=self.lost, elapsed_s=time.perf_counter() - started,
            )  # fmt: skip
        finally:
            await self._stop()

    def _verify(self) -> Findings:
        members = [
            Replica(r.index, _peer(r), r.scopes) for r in self.robots if r.index != self.revoked
        ]
        victim = self.robots[self.revoked] if self.revoked is not None else None
        return verify(
            members, self.writes,
            revoked=Replica(victim.index, _peer(victim), victim.scopes) if victim else None,
            revoked_epochs=self.revoked_epochs,
        )  # fmt: skip

    async def _loop(self, deadline: float) -> float | None:
        while self._heap:
            when, _, action = heapq.heappop(self._heap)
            if when > deadline:
                return None
            self.now = when
            try:
                result = action()
                if result is not None:
                    await result
            except Exception as exc:  # an escaped exception is a finding, not a crash here
                self.errors.append(f"t={self.now:.3f} {type(exc).__name__}: {exc}")
                log.exception("chaos: unexpected exception at t=%.3f", self.now)
            if self._healed and self._quiescent():
                return self.now
        return None

    # ------------------------------------------------------------------ setup and teardown

    async def _setup(self) -> None:
        plan = self.plan
        setup = random.Random(f"hearthsync-chaos-setup-{plan.seed}")
        owner = DeviceIdentity(SigningKey(setup.randbytes(32)))
        issued = int(BASE_WALL) - 86_400
        household = Household.create(owner, "Chaos Home", setup.randbytes)
        owner_cert = Certificate.self_signed_owner(
            owner, household, device_name="r0", scopes=SCOPES,
            issued_at=issued, expires_at=issued + YEAR_S,
        )  # fmt: skip
        keys = Keyring()
        for scope in SCOPES:
            keys.create_scope(scope, setup.randbytes)
            for user in FIRST_USERS + LATER_USERS:
                keys.create_data_key(user, scope, setup.randbytes)
        for index in range(plan.peers):
            identity = owner if index == 0 else DeviceIdentity(SigningKey(setup.randbytes(32)))
            scopes = plan.scopes[index]
            if index == 0:
                cert, keyring = owner_cert, keys
            else:
                cert = Certificate.issue(
                    owner, household_id=household.id, device_pk=bytes(identity.verify_key),
                    device_name=f"r{index}", role="member", scopes=scopes,
                    issued_at=issued, expires_at=issued + YEAR_S,
                )  # fmt: skip
                keyring = Keyring()
            trust = TrustStore.for_household(household)
            trust.add(owner_cert, issued)
            trust.add(cert, issued)
            if index:
                for grant in keys.grants_for(owner, identity.verify_key, scopes, setup.randbytes):
                    keyring.accept_grant(grant, identity, trust=trust, now=issued)
            folder = self.folder / f"r{index}"
            folder.mkdir(parents=True)
            key_file = folder / KEY_FILE
            key_file.write_bytes(bytes(identity.signing_key))
            key_file.chmod(0o600)
            skew = setup.uniform(-self.scenario.max_skew, self.scenario.max_skew)
            robot = Robot(
                index, folder, identity, cert, trust, keyring, frozenset(scopes),
                random.Random(setup.getrandbits(64)), skew,
            )  # fmt: skip
            self.robots.append(robot)
        for robot in self.robots:
            await self._boot(robot)
            for user in FIRST_USERS:
                self._writer(robot, _add_user(robot, user), Op(-1, robot.index, "user", 0, 0))
        for robot in self.robots:
            await self._commit(robot)

    async def _boot(self, robot: Robot) -> None:
        robot.incarnation += 1
        robot.peer = await Peer.start(
            robot.folder, device=f"r{robot.index}", embedder=_EMBEDDER,
            wall=lambda: self._wall(robot), rng=random.Random(robot.rng.getrandbits(64)),
            synchronous="OFF", auto_commit=False,
        )  # fmt: skip
        robot.peer.on_durable(lambda batch: self._forward(robot, batch))
        if self.scenario.bug == "lose-every-10th-commit":
            self._break_store(robot.peer)
        for other in self.robots:
            if other is not robot and robot.device_id > other.device_id:
                self.at(self.now, lambda other=other: self._dial(robot, other))  # type: ignore[misc]

    def _break_store(self, peer: Peer) -> None:
        """The deliberately broken build: every tenth delta is acknowledged, forwarded and
        kept in memory, but never written to SQLite (only a crash reveals it)."""
        store = peer._sqlite
        commit = store.commit

        async def lossy(batch: Batch) -> None:
            kept = []
            for update in batch.updates:
                self._bug_counter += 1
                if self._bug_counter % 10:
                    kept.append(update)
            batch.updates = kept
            await commit(batch)

        store.commit = lossy  # type: ignore[method-assign]

    def _wall(self, robot: Robot) -> float:
        return BASE_WALL + self.now + robot.skew

    async def _stop(self) -> None:
        for robot in self.robots:
            for task, _ in robot.writers:
                task.cancel()
            if robot.peer is not None:
                with contextlib.suppress(Exception):
                    await robot.peer.crash()  # the run is over: nothing more needs to land
                robot.peer = None

    # ------------------------------------------------------------------ writes

    async def _op(self, op: Op) -> None:
        robot = self.robots[op.robot]
        if robot.peer is None:
            self.note(f"op#{op.index} r{op.robot} {op.kind}: robot down, not attempted")
            return
        if _OP_SCOPE[op.kind] not in robot.scopes:
            self.note(f"op#{op.index} r{op.robot} {op.kind}: not in its scopes, not attempted")
            return
        rng = random.Random(op.seed)
        peer = robot.peer
        users = [u for u in peer.users() if u in FIRST_USERS + LATER_USERS]
        user = rng.choice(users) if users else FIRST_USERS[0]
        marker = f"r{op.robot}-{op.index}"
        coro: Awaitable[Write | None]
        match op.kind:
            case "pref":
                key = rng.choice(PREF_KEYS)
                condition = rng.choice((None, Condition(days="weekday"), Condition(days="weekend")))
                coro = _set_pref(robot, user, key, marker, condition)
            case "profile":
                coro = _set_profile(robot, user, marker)
            case "calibration":
                coro = _set_calibration(robot, user, round(rng.random(), 3))
            case "move":
                coro = _move(robot, rng.choice(OBJECTS), rng.choice(REGIONS), marker)
            case "event":
                coro = _record_event(robot, user, marker)
            case _:
                fresh = [u for u in LATER_USERS if u not in users]
                coro = _add_user(robot, rng.choice(fresh)) if fresh else _add_user(robot, user)
        self._writer(robot, coro, op)
        await asyncio.sleep(0)  # the writer runs up to its commit now, at its own time

    def _writer(self, robot: Robot, coro: Awaitable[Write | None], op: Op) -> None:
        task = asyncio.ensure_future(coro)
        robot.writers.append((task, op))
        self._schedule_commit(robot)

    def _schedule_commit(self, robot: Robot) -> None:
        if robot.commit_at is None:
            robot.commit_at = self.now + self.net.uniform(*self.scenario.commit_delay)
            incarnation = robot.incarnation
            self.at(robot.commit_at, lambda: self._commit_due(robot, incarnation))

    async def _commit_due(self, robot: Robot, incarnation: int) -> None:
        if robot.incarnation == incarnation and robot.peer is not None:
            await self._commit(robot)

    async def _commit(self, robot: Robot) -> None:
        """The group commit: everything queued lands, writers are acknowledged, updates from
        peers are acknowledged to them, and the durable deltas are forwarded (by the peer's
        commit listener, `_forward`)."""
        peer = robot.peer
        assert peer is not None
        robot.commit_at = None
        writers, robot.writers = robot.writers, []
        for _ in range(2):  # let every writer created so far queue its write
            await asyncio.sleep(0)
        await peer.commit()
        robot.commits += 1
        if writers:
            async with asyncio.timeout(30):  # they are all resolved: this only lets them end
                await asyncio.wait([task for task, _ in writers])
        for task, op in writers:
            self._writer_done(robot, task, op)
        to_ack, robot.to_ack = robot.to_ack, []
        for conn, doc_id in to_ack:
            side = conn.sides[robot.index]
            if side.alive:
                side.session.applied(doc_id, peer.state_vector(doc_id))
                self._flush(conn, robot.index)

    def _writer_done(self, robot: Robot, task: asyncio.Task[Write | None], op: Op) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ClosedError | NotFoundError):
            self.note(f"op#{op.index} r{robot.index} {op.kind}: not acknowledged ({exc})")
        elif exc is not None:
            self.errors.append(f"op#{op.index} r{robot.index} {op.kind}: {exc!r}")
        else:
            write = task.result()
            if write is not None:
                write.acked_at = self.now
                self.writes.append(write)
                self.note(f"ack {write.describe()}")

    # ------------------------------------------------------------------ connections

    def _reachable(self, a: int, b: int) -> bool:
        if self.robots[a].peer is None or self.robots[b].peer is None:
            return False
        for fault in self._active:
            if fault.kind == "partition":
                side = next(g for g in fault.groups if a in g)
                if b not in side:
                    return False
        return True

    def _dial(self, robot: Robot, other: Robot) -> None:
        if robot.peer is None or other.index in robot.conns or other.index in robot.dialing:
            return
        if robot.trust.is_revoked(other.device_id):
            return  # a revoked robot is not dialed again
        robot.dialing.add(other.index)
        incarnation = robot.incarnation
        if not self._reachable(robot.index, other.index):
            self.at(
                self.now + CONNECT_TIMEOUT_S, lambda: self._dial_failed(robot, other, incarnation)
            )
            return
        rtt = 2 * self.net.uniform(*self.scenario.latency)
        self.at(self.now + rtt, lambda: self._connected(robot, other, incarnation))

    def _dial_failed(self, robot: Robot, other: Robot, incarnation: int) -> None:
        if robot.incarnation != incarnation:
            return
        robot.dialing.discard(other.index)
        self._redial(robot, other)

    def _redial(self, robot: Robot, other: Robot) -> None:
        if robot.peer is None:
            return
        wait = robot.retry.get(other.index, FIRST_RETRY_S)
        robot.retry[other.index] = min(wait * 2, MAX_RETRY_S)
        if self._healed:
            wait = min(wait, 1.0)  # after the heal robots keep trying; cap it so runs end
        wait *= self.net.uniform(0.5, 1.5)  # jitter
        incarnation = robot.incarnation
        self.at(
            self.now + wait,
            lambda: self._dial(robot, other) if robot.incarnation == incarnation else None,
        )

    def _connected(self, dialer: Robot, acceptor: Robot, incarnation: int) -> None:
        dialer.dialing.discard(acceptor.index)
        if dialer.incarnation != incarnation or dialer.peer is None:
            return
        if acceptor.peer is None or not self._reachable(dialer.index, acceptor.index):
            self._redial(dialer, acceptor)
            return
        old = acceptor.conns.get(dialer.index)
        if old is not None:  # a half-open connection of the dialer's: the new one replaces it
            self._teardown(old, acceptor.index, "replaced by a new connection")
        self._conn_seq += 1
        conn = _Conn(self._conn_seq, {})
        for robot in (dialer, acceptor):
            assert robot.peer is not None
            session = Session(
                robot.identity, robot.certificate.to_wire(), robot.trust, robot.keyring,
                robot.peer.docs, robot.rng.randbytes, self._wall(robot),
            )  # fmt: skip
            conn.sides[robot.index] = _Side(robot.index, session, robot.incarnation)
            robot.conns[(acceptor if robot is dialer else dialer).index] = conn
        for robot in (dialer, acceptor):
            self._flush(conn, robot.index)

    def _teardown(self, conn: _Conn, robot_index: int, reason: str) -> None:
        """This robot's end of ``conn`` is gone (closed, reset or timed out)."""
        side = conn.sides[robot_index]
        if not side.alive:
            return
        side.alive = False
        robot = self.robots[robot_index]
        other = conn.other(robot_index)
        if robot.conns.get(other) is conn:
            del robot.conns[other]
        dialer = robot.device_id > self.robots[other].device_id
        if robot.peer is not None and robot.incarnation == side.incarnation and dialer:
            self._redial(robot, self.robots[other])

    def _flush(self, conn: _Conn, sender: int) -> None:
        side = conn.sides[sender]
        for data in side.session.data_to_send():
            self._send(conn, sender, data)
        if side.session.closed and side.alive:
            # the transport closes: the other side learns at once, if the network lets it
            self._teardown(conn, sender, "session closed")
            receiver = conn.other(sender)
            if self._reachable(sender, receiver):
                delay = self.net.uniform(*self.scenario.latency)
                self.at(self.now + delay, lambda: self._reset(conn, receiver))

    def _reset(self, conn: _Conn, robot: int) -> None:
        if conn.sides[robot].alive:
            conn.sides[robot].session.close("connection closed by the peer")
            conn.sides[robot].session.events_received()
            self._teardown(conn, robot, "reset")

    # ------------------------------------------------------------------ the network

    def _send(self, conn: _Conn, sender: int, data: bytes) -> None:
        receiver = conn.other(sender)
        self.messages += 1
        # what quiescence waits for: data frames between robots that are not revoked
        counted = not (len(data) > 1 and data[1] in _HEARTBEAT_FRAMES) and self.revoked not in (
            sender,
            receiver,
        )
        drop = dup = 0.0
        extra = 0.0
        reorder = 0.0
        pair = tuple(sorted((sender, receiver)))
        for fault in self._active:
            if fault.robots and fault.kind != "partition" and tuple(fault.robots) != pair:
                continue
            match fault.kind:
                case "drop":
                    drop = max(drop, fault.amount)
                case "duplicate":
                    dup = max(dup, fault.amount)
                case "delay":
                    extra += fault.amount
                case "reorder":
                    reorder = max(reorder, fault.amount)
        if drop and self.net.random() < drop:
            self.lost += 1
            return
        latency = self.net.uniform(*self.scenario.latency) + extra
        when = self.now + latency
        if reorder:
            when += self.net.uniform(0.0, reorder)
        else:
            when = max(when, conn.arrival.get(receiver, 0.0))
            conn.arrival[receiver] = when
        copies = 2 if dup and self.net.random() < dup else 1
        for copy in range(copies):
            if counted:
                self._in_flight += 1
            arrive = when + copy * self.net.uniform(0.0, 0.02)
            self.at(arrive, lambda: self._deliver(conn, sender, receiver, data, counted))

    async def _deliver(
        self, conn: _Conn, sender: int, receiver: int, data: bytes, counted: bool
    ) -> None:
        if counted:
            self._in_flight -= 1
        side = conn.sides[receiver]
        robot = self.robots[receiver]
        if not side.alive or robot.peer is None or not self._reachable(sender, receiver):
            self.lost += 1
            return
        side.session.receive_data(data, self._wall(robot))
        await self._events(robot, conn)
        self._flush(conn, receiver)

    async def _events(self, robot: Robot, conn: _Conn) -> None:
        side = conn.sides[robot.index]
        peer = robot.peer
        assert peer is not None
        for event in side.session.events_received():
            if isinstance(event, ApplyUpdate):
                try:
                    peer.receive_update(event.doc_id, event.update, origin=event.author)
                except HearthError as exc:
                    self.errors.append(f"r{robot.index} could not apply {event.doc_id}: {exc}")
                    side.session.close(f"could not apply {event.doc_id}")
                    continue
                if parse(event.doc_id).scope not in robot.scopes:
                    self.errors.append(f"r{robot.index} received {event.doc_id} outside its scopes")
                robot.to_ack.append((conn, event.doc_id))
                self._schedule_commit(robot)
            elif isinstance(event, RevocationsChanged):
                self.note(f"r{robot.index} learns revocations {sorted(event.revoked)}")
                self._trust_changed(robot)
            elif isinstance(event, PeerAuthenticated):
                robot.retry.pop(conn.other(robot.index), None)
            elif isinstance(event, LineageMismatch | SealFailed):
                self.errors.append(f"r{robot.index}: {event}")
            elif isinstance(event, KeyMissing | Closed):
                self.note(f"r{robot.index}<->r{conn.other(robot.index)} {event}")

    def _forward(self, robot: Robot, batch: Any) -> None:
        """The commit listener: send every durable delta to every open connection, one
        envelope per document (as `hearthsync.transport.link.Link` does), never back to the
        device it came from."""
        for _other, conn in sorted(robot.conns.items()):
            side = conn.sides[robot.index]
            if not side.alive:
                continue
            peer_id = side.session.peer_id
            by_doc: dict[str, list[bytes]] = {}
            for doc_id, delta, origin in batch:
                if peer_id is not None and origin == peer_id:
                    continue
                by_doc.setdefault(doc_id, []).append(delta)
            for doc_id, deltas in by_doc.items():
                merged = deltas[0] if len(deltas) == 1 else _merge(deltas)
                side.session.send_update(DocId(doc_id), merged)
            self._flush(conn, robot.index)

    def _trust_changed(self, robot: Robot) -> None:
        """A newer revocation list: drop revoked peers, tell the others (and, on the owner,
        grant the new keys)."""
        for _other, conn in sorted(robot.conns.items()):
            side = conn.sides[robot.index]
            if side.alive:
                side.session.send_revocations()
                side.session.send_grants()
                self._flush(conn, robot.index)

    # ------------------------------------------------------------------ heartbeats

    def _tick(self) -> None:
        for robot in self.robots:
            if robot.peer is None:
                continue
            for conn in [c for _, c in sorted(robot.conns.items())]:
                side = conn.sides[robot.index]
                if side.alive:
                    side.session.tick(self._wall(robot))
                    for event in side.session.events_received():
                        if isinstance(event, Closed):
                            self.note(f"r{robot.index}<->r{conn.other(robot.index)} {event}")
                    self._flush(conn, robot.index)
        self.at(self.now + TICK_S, self._tick)

    # ------------------------------------------------------------------ faults

    async def _start_fault(self, fault: Fault) -> None:
        if self._healed:
            return
        self.faults_injected.append(fault.describe())
        self.fault_kinds.append(fault.kind)
        self.note(f"fault {fault.describe()}")
        match fault.kind:
            case "crash":
                await self._crash(self.robots[fault.robots[0]])
            case "skew":
                self.robots[fault.robots[0]].skew += fault.amount
            case "revoke":
                self._revoke(self.robots[fault.robots[0]])
            case _:
                self._active.append(fault)

    async def _end_fault(self, fault: Fault) -> None:
        if fault.kind == "crash":
            robot = self.robots[fault.robots[0]]
            if robot.peer is None:
                self.note(f"restart r{robot.index}")
                await self._boot(robot)
        elif fault in self._active:
            self._active.remove(fault)
            self.note(f"end of fault #{fault.index}")

    async def _crash(self, robot: Robot) -> None:
        if robot.peer is None:
            return
        peer, robot.peer = robot.peer, None
        await peer.crash()
        for task, op in robot.writers:
            with contextlib.suppress(asyncio.CancelledError, HearthError):
                await task
            self._writer_done(robot, task, op)
        robot.writers = []
        robot.to_ack = []
        robot.commit_at = None
        robot.dialing.clear()
        for other, conn in sorted(robot.conns.items()):
            self._teardown(conn, robot.index, "crashed")
            if self._reachable_ignoring_crash(robot.index, other):  # the kernel resets it
                delay = self.net.uniform(*self.scenario.latency)
                self.at(self.now + delay, lambda conn=conn, other=other: self._reset(conn, other))  # type: ignore[misc]
        robot.conns.clear()
        robot.incarnation += 1

    def _reachable_ignoring_crash(self, a: int, b: int) -> bool:
        if self.robots[b].peer is None:
            return False
        for fault in self._active:
            if fault.kind == "partition":
                side = next(g for g in fault.groups if a in g)
                if b not in side:
                    return False
        return True

    def _revoke(self, victim: Robot) -> None:
        owner = self.robots[0]
        if owner.peer is None:
            self.note(f"revoke r{victim.index} skipped: the owner is down")
            return
        held = owner.trust.revocations
        revocations = Revocations.issue(
            owner.identity, household_id=owner.trust.household_id,
            serial=(held.serial + 1) if held else 1,
            revoked=sorted(owner.trust.revoked | {victim.device_id}),
        )  # fmt: skip
        owner.trust.accept_revocations(revocations, int(self._wall(owner)))
        scopes = owner.trust.scopes_of(victim.device_id) & owner.keyring.scopes
        epochs = owner.keyring.rotate_for_revocation(scopes, owner.rng.randbytes)
        self.revoked = victim.index
        self.revoked_epochs = {str(s): e for s, e in epochs.items()}
        self.note(f"r0 revokes r{victim.index}: new epochs {sorted(self.revoked_epochs.items())}")
        self._trust_changed(owner)

    async def _heal(self) -> None:
        """End every fault, restart every crashed robot; from now on the run only converges."""
        self._healed = True
        self._active.clear()
        self.note("heal: every fault ends")
        for robot in self.robots:
            if robot.peer is None:
                self.note(f"restart r{robot.index}")
                await self._boot(robot)
            for other in self.robots:
                if other is not robot and robot.device_id > other.device_id:
                    robot.retry[other.index] = FIRST_RETRY_S
                    self._dial(robot, other)

    # ------------------------------------------------------------------ quiescence

    def _members(self) -> list[Robot]:
        return [r for r in self.robots if r.index != self.revoked]

    def _quiescent(self) -> bool:
        return self._busy() is None

    def _busy(self) -> str | None:
        """Why the household is not quiescent yet (None: it is).  Quiescent means: every pair
        of (unrevoked) robots linked and authenticated, nothing in flight or waiting to
        commit, no session about to offer its inventory again or waiting for an answer."""
        if self._in_flight:
            return f"{self._in_flight} messages in flight"
        members = self._members()
        for robot in members:
            if robot.peer is None or robot.writers or robot.to_ack or robot.commit_at:
                return f"r{robot.index} is down or has writes to commit"
            for other in members:
                if other is robot:
                    continue
                conn = robot.conns.get(other.index)
                if conn is None:
                    return f"r{robot.index} has no connection to r{other.index}"
                session = conn.sides[robot.index].session
                if session.state.value != "open":
                    return f"r{robot.index}->r{other.index} is {session.state.value}"
                if session._requested:
                    return f"r{robot.index}->r{other.index} waits for {sorted(session._requested)}"
        # idle: converged when every pair holds the same state vectors in the scopes both
        # read (the checkers then compare content too); else a repair is still to come
        held = {r.index: self._state_vectors(r) for r in members}
        for i, a in enumerate(members):
            for b in members[i + 1 :]:
                shared = a.scopes & b.scopes
                mine = {d: sv for d, (scope, sv) in held[a.index].items() if scope in shared}
                theirs = {d: sv for d, (scope, sv) in held[b.index].items() if scope in shared}
                if mine != theirs:
                    return f"r{a.index} and r{b.index} have not converged yet"
        return None

    def _state_vectors(self, robot: Robot) -> dict[str, tuple[str, bytes]]:
        peer = _peer(robot)
        return {
            doc_id: (parse(doc_id).scope, peer.state_vector(doc_id))
            for doc_id in peer.document_ids()
        }


# ---------------------------------------------------------------------- the writes


def _merge(deltas: list[bytes]) -> bytes:
    from pycrdt import merge_updates

    return bytes(merge_updates(*deltas))


_EMBEDDER = HashingEmbedder()
_OP_SCOPE = {
    "pref": "core", "profile": "core", "calibration": "core", "move": "spatial",
    "event": "history", "user": "household",
}  # fmt: skip


def _peer(robot: Robot) -> Peer:
    assert robot.peer is not None
    return robot.peer


def _epoch(robot: Robot, scope: str, user: str | None = None) -> int:
    """The key epoch the robot seals ``user``'s documents of ``scope`` under, now."""
    return robot.keyring.sealing_epoch(scope, user)


async def _add_user(robot: Robot, user: str) -> Write | None:
    peer = _peer(robot)
    epoch = _epoch(robot, "household")
    await peer.add_user(user, name=user.title())
    return Write(robot.index, "user", DocId("household"), "household", "users", user, "", epoch)


async def _set_pref(
    robot: Robot, user: str, key: str, marker: str, condition: Condition | None
) -> Write:
    peer = _peer(robot)
    epoch = _epoch(robot, "core", user)
    record = await peer.set_preference(user, key, marker, condition=condition)
    slot = f"{PrefsDoc.slot_key(record)}\x1f{record.device}"
    return Write(
        robot.index, "pref", user_doc(user, Kind.PREFS), "core", "prefs", slot, record.set_at, epoch
    )


async def _set_profile(robot: Robot, user: str, marker: str) -> Write:
    peer = _peer(robot)
    epoch = _epoch(robot, "core", user)
    record = await peer.set_profile(user, attributes={"note": marker})
    slot = f"profile\x1f{record.device}"
    return Write(
        robot.index, "profile", user_doc(user, Kind.PROFILE), "core", "profile", slot,
        record.set_at, epoch,
    )  # fmt: skip


async def _set_calibration(robot: Robot, user: str, value: float) -> Write:
    peer = _peer(robot)
    epoch = _epoch(robot, "core", user)
    record = await peer.set_calibration(user, verbosity=value)
    slot = f"calibration\x1f{record.device}"
    return Write(
        robot.index, "calibration", user_doc(user, Kind.CALIBRATION), "core", "calibration",
        slot, record.set_at, epoch,
    )  # fmt: skip


async def _move(robot: Robot, thing: str, region: str, marker: str) -> Write:
    peer = _peer(robot)
    epoch = _epoch(robot, "spatial")
    record = await peer.place(thing, marker, region=region)
    slot = f"{thing}\x1f{record.device}"
    return Write(
        robot.index, "move", DocId(f"{HOME}/spatial"), "spatial", "placements", slot,
        record.set_at, epoch,
    )  # fmt: skip


async def _record_event(robot: Robot, user: str, marker: str) -> Write:
    peer = _peer(robot)
    epoch = _epoch(robot, "history", user)
    event = await peer.record_event(user, "OBSERVATION", "chaos", text=f"observed {marker}")
    month = time.strftime("%Y-%m", time.gmtime(event.ts // 1000))
    return Write(
        robot.index, "event", events_doc(user, month), "history", "events", event.id, "", epoch
    )


async def simulate(plan: Plan, folder: Path | None = None) -> Outcome:
    """Run ``plan`` in a fresh temporary folder (removed afterwards unless ``folder`` given)."""
    if folder is not None:
        return await Simulation(plan, folder).run()
    scratch = Path(tempfile.mkdtemp(prefix="hearth-chaos-", dir=_fast_tmp()))
    try:
        return await Simulation(plan, scratch).run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
