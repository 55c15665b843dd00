"""The deterministic simulation: real sessions and real stores on a simulated network.

Every robot is a real `Peer` (its own SQLite file in a temporary folder, in RAM where the
machine has ``/dev/shm``) and every connection is a pair of real `Session` objects; only the
network and the clock are simulated.  One loop takes events from a heap ordered by (simulated
time, sequence number) and runs each to the end before the next, so the order of everything
(deliveries, commits, acknowledgements) is a function of the seed alone: the same seed gives
the same trace, bit for bit.

What the simulated network and clock add, and why each is realistic:

* **latency** per message (in order per connection, as TCP keeps it), **delay** (a slow link),
  **reorder** (messages overtake each other), **duplicate**, **drop**: the faults a relay's
  store-and-forward path or a flaky link produces; the protocol repairs them (SPEC §6.4);
* **partition** into two or three groups: messages between groups vanish, silently, as on a
  Wi-Fi split; connections die by heartbeat, and dialing fails until the heal;
* **crash**: the robot's memory is gone (`Peer.crash`); only what was committed survives, and
  the robot restarts from its store (after a crash of more than 10 s, a power cut, with its
  clock reset to 1970 until the heal, as a robot with no clock battery boots); the other side
  of its connections sees them reset, at once or, if a partition lost the reset, at the first
  message it sends after the heal (a host answers a segment for a connection it does not know
  with a reset);
* **skew**: each robot's wall clock is off by its own amount, and may jump (certificates and
  grants read it, as does the clock that stamps writes; session timers run on the simulation's
  monotonic time, as a link's run on ``time.monotonic``);
* **compaction**: each robot folds a document's update log into a snapshot once the log passes
  512 bytes (a robot in service: 16 KiB), so snapshots are taken at any point of a run, between
  any two arrivals;
* **revoke**: the owner revokes a robot mid-run (two at most); the checkers then prove each
  receives nothing written with the keys its revocation started, and holds none of them.

The simulation drives each session the way `hearthsync.transport.link.Link` does: a received
update is merged at once and acknowledged (with the state vector right after the merge) once
its group commit is durable; every durable delta, local or received, is forwarded to every
other open connection, merged per document, never back to the device it came from.  Writes
are acknowledged the way `Peer` acknowledges them: after their group commit, which happens a
drawn *commit delay* after the first queued write (a crash in between loses them,
unacknowledged, as a real crash would).

`Simulation.run` plays a whole `Plan`; the same steps are public (`start`, `add_op`,
`add_fault`, `advance`, `heal`, `settle`, `finish`, `stop`) for tests that drive the simulation
one step at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import os
import random
import selectors
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hearthsync import enrolment
from hearthsync.chaos import bugs, household, quiescence
from hearthsync.chaos.check import Findings, Holdings, Replica, Write, digest, verify
from hearthsync.chaos.household import BASE_WALL, TraceHandler
from hearthsync.chaos.inline_sqlite import inline_sqlite
from hearthsync.chaos.plan import FIRST_USERS, Fault, Op, Plan
from hearthsync.chaos.workload import OP_SCOPE, TinyEmbedder, Writer, perform
from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.enrolment import HouseholdState
from hearthsync.errors import ClosedError, HearthError, NotFoundError
from hearthsync.forgetting import PURGED
from hearthsync.ids import DocId
from hearthsync.offload import inline
from hearthsync.peer import DB_FILE, Peer
from hearthsync.protocol.session import (
    ApplyUpdate,
    Closed,
    KeyMissing,
    KeysChanged,
    KeysWanted,
    LineageMismatch,
    PeerAuthenticated,
    RevocationsChanged,
    Sealer,
    SealFailed,
    Session,
    State,
    answer_from,
)
from hearthsync.store.lock import pid_alive
from hearthsync.store.sqlite import read_meta, rows_of_subject
from hearthsync.transport.link import merged_for_sending

TICK_S = 0.5  #: how often every session's heartbeat timer runs (as `Link` does)
CONNECT_TIMEOUT_S = 1.0  #: a dial across a partition fails after this long
COMPACT_MIN_LOG_BYTES = 512  #: a simulated robot folds a document's log from this size
FIRST_RETRY_S = 0.2
MAX_RETRY_S = 10.0
_EMBEDDER = TinyEmbedder()
#: loop turns a writer takes from its batch landing to its end (its shielded future, its task)
WRITER_STEPS = 4
#: commits a restarted robot is given to finish its own background work (a resumed purge)
IDLE_TURNS = 50


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
    """One simulated robot: its credentials (the household file beside its store, read at
    every boot as `hearth run` reads it), its peer (None while crashed), its connections."""

    index: int
    folder: Path
    identity: DeviceIdentity
    state: HouseholdState  #: the credentials as loaded at the last boot (`Peer.household`)
    scopes: frozenset[str]
    rng: random.Random
    skew: float
    #: when the robot restarted with its clock reset to 1970 (a long crash), until the heal
    reset_at: float | None = None
    peer: Peer | None = None
    incarnation: int = 0
    conns: dict[int, _Conn] = field(default_factory=dict)  #: live connections by other robot
    dialing: set[int] = field(default_factory=set)
    retry: dict[int, float] = field(default_factory=dict)
    commit_at: float | None = None
    writers: list[tuple[asyncio.Task[Write | None], Op]] = field(default_factory=list)
    #: received updates merged in memory, to acknowledge once committed: (conn, doc, state)
    to_ack: list[tuple[_Conn, DocId, bytes]] = field(default_factory=list)
    #: shared by the robot's sessions (as `SyncService` shares one); new at every boot
    sealer: Sealer = field(default_factory=Sealer)

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def certificate(self) -> Certificate:
        return self.state.certificate

    @property
    def trust(self) -> TrustStore:
        return self.state.trust

    @property
    def keyring(self) -> Keyring:
        return self.state.keyring


@dataclass(frozen=True)
class Outcome:
    """What one schedule did, and what the checkers found (no live objects: it pickles)."""

    seed: int
    peers: int
    faults: list[str]  #: the faults injected, described, in order
    fault_kinds: list[str]  #: their kinds, in the same order
    ops: int  #: writes planned
    acknowledged: int  #: writes acknowledged (durable on their robot)
    findings: Findings
    errors: list[str]  #: exceptions that escaped, failed commits, protocol anomalies
    converge_s: float | None  #: simulated seconds from the heal to quiescence (None: never)
    trace: list[str]
    trace_digest: str  #: of the trace, every message delivered and every final document
    messages: int
    messages_lost: int
    elapsed_s: float  #: wall-clock seconds the schedule took

    @property
    def ok(self) -> bool:
        f = self.findings
        failed = f.lost or f.divergences or f.leaks or f.remnants or self.errors
        return not failed and self.converge_s is not None


class Simulation:
    """One simulated household: ``outcome = await Simulation(plan, folder).run()``."""

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
        self._settling = False
        #: the robots the owner revoked, in order, and the epochs each revocation started
        self.revoked: list[int] = []
        self.revoked_epochs: dict[int, dict[str, int]] = {}
        #: every user a forget op set out to forget, acknowledged or not (what may be forgotten)
        self.forget_targets: set[str] = set()
        #: per revoked robot, when each robot processed its revocation (and, `_keys_at`, new
        #: keys after it)
        self._revocation_at: dict[int, dict[int, float]] = {}
        self._keys_at: dict[int, dict[int, float]] = {}
        self.messages = 0
        self.lost = 0
        self._in_flight = 0  # messages on their way between robots that are not revoked
        self._bug_counter = 0
        self.converge_s: float | None = None
        #: every message delivered (who, when, bytes), hashed: the trace is for people and
        #: names events, this proves the same seed sent the same bytes in the same order
        self._wire = hashlib.blake2b(digest_size=16)

    # ------------------------------------------------------------------ the whole run

    async def run(self) -> Outcome:
        """Play the plan: writes and faults until ``duration``, then heal, settle, check."""
        started = time.perf_counter()
        with self.captured_logs(), self.captured_task_errors(asyncio.get_running_loop()):
            try:
                await self.start()
                for op in self.plan.ops:
                    self.add_op(op)
                for fault in self.plan.faults:
                    self.add_fault(fault)
                await self.advance(self.scenario.duration)
                await self.heal()
                await self.settle()
                outcome = await self.finish()
            finally:
                await self.stop()
        return _timed(replace(outcome, errors=list(self.errors)), time.perf_counter() - started)

    # ------------------------------------------------------------------ step by step

    async def start(self) -> None:
        """Make the household (certificates, keys, one store per robot), boot every robot
        and start the heartbeat timer; every robot knows the first users."""
        await self._setup()
        self.at(TICK_S, self._tick)

    def add_op(self, op: Op) -> None:
        """Make write ``op`` at its time (``op.at``, simulated seconds)."""
        self.at(op.at, lambda: self._op(op))

    def add_fault(self, fault: Fault) -> None:
        """Inject ``fault`` from ``fault.at`` until ``fault.until``."""
        self.at(fault.at, lambda: self._start_fault(fault))
        if fault.until > fault.at or fault.kind == "crash":
            self.at(fault.until, lambda: self._end_fault(fault))

    async def advance(self, until: float) -> None:
        """Run everything due up to simulated time ``until``."""
        await self._loop(until)
        self.now = max(self.now, until)

    async def heal(self) -> None:
        """End every fault now, restart every crashed robot, and redial every pair."""
        self._active.clear()
        self.note("heal: every fault ends")
        for robot in self.robots:
            robot.reset_at = None  # NTP answers: a clock reset to 1970 is set again
            if robot.peer is None:
                self.note(f"restart r{robot.index}")
                await self._boot(robot)
            for other in self.robots:
                if other is not robot and robot.device_id > other.device_id:
                    robot.retry[other.index] = FIRST_RETRY_S
                    self._dial(robot, other)

    async def settle(self) -> float | None:
        """No more faults from now on: run until the household is quiescent (every pair
        linked, nothing in flight, the same state vectors) or the settle limit passes.
        Returns the simulated seconds it took (None: the limit passed)."""
        self._settling = True
        healed_at = self.now
        converged_at = await self._loop(healed_at + self.scenario.settle_limit, until_quiet=True)
        if converged_at is None:
            self.note(f"did not converge before the settle limit: {self._busy()}")
            self.converge_s = None
        else:
            self.note("quiescent: checking")
            self.converge_s = converged_at - healed_at
        return self.converge_s

    async def finish(self) -> Outcome:
        """Commit what every robot holds and run the checkers."""
        for robot in self.robots:
            if robot.peer is None:  # cannot happen after a heal; be loud if it does
                self.errors.append(f"r{robot.index} is down at the end")
                await self._boot(robot)
            await self._commit(robot)
        findings = self.check()
        final = "".join(digest(_peer(r)) for r in self.robots)
        hashed = hashlib.blake2b("\n".join([*self.trace, final]).encode(), digest_size=16)
        hashed.update(self._wire.digest())
        findings = _merged(findings, await self.check_restarted())
        return Outcome(
            seed=self.plan.seed, peers=self.plan.peers, faults=self.faults_injected,
            fault_kinds=self.fault_kinds, ops=len(self.plan.ops), acknowledged=len(self.writes),
            findings=findings, errors=self.errors, converge_s=self.converge_s, trace=self.trace,
            trace_digest=hashed.hexdigest(), messages=self.messages, messages_lost=self.lost,
            elapsed_s=0.0,
        )  # fmt: skip

    @contextlib.contextmanager
    def captured_logs(self) -> Iterator[None]:
        """While in this block, hearthsync's log records go to this simulation's trace (and
        its errors to the findings), not to the console."""
        logger = logging.getLogger("hearthsync")
        handler = TraceHandler(self.note, self.errors.append, lambda: self.now, self.folder)
        propagate = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate

    @contextlib.contextmanager
    def captured_task_errors(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """While in this block, what ``loop`` reports (a robot's background task that failed
        and that nothing awaited: its indexer, replaced by the next) is an error of this
        schedule.  It went to asyncio's logger, printed on stderr, and the schedule passed
        (found in review)."""

        def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            self.errors.append(f"{context['message']}" + (f": {exc!r}" if exc else ""))

        # every task made meanwhile, to tell at the end which failed with nobody retrieving
        # its exception: asyncio tells only when the task is freed, and a task let go in a
        # reference cycle (its traceback holds its robot, which held it) is freed by the
        # collector, some time later: a full collection per schedule cost 3% of its time
        tasks: list[asyncio.Task[Any]] = []

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            tasks.append(task)
            return task

        before = loop.get_exception_handler()
        before_factory = loop.get_task_factory()
        loop.set_exception_handler(report)
        loop.set_task_factory(factory)
        try:
            yield
        finally:
            loop.set_task_factory(before_factory)
            for task in tasks:
                # asyncio's own mark of an exception nobody retrieved (what it logs on free)
                if task.done() and not task.cancelled() and task._log_traceback:
                    task._log_traceback = False
                    report(loop, {"message": "Task exception was never retrieved",
                                  "exception": task.exception()})  # fmt: skip
            loop.set_exception_handler(before)

    def check(self, *, views: bool = True) -> Findings:
        """The checkers (`hearthsync.chaos.check.verify`) on the household as it is now
        (``views``: the robots' typed views too, which a restart has just built afresh)."""
        members = [Replica(r.index, _peer(r), r.scopes) for r in self._members()]
        victims = [self.robots[v] for v in self.revoked]
        known = {
            victim: {r: max(at, keys[r]) for r, at in self._revocation_at[victim].items()
                     if r in keys}
            for victim, keys in self._keys_at.items()
        }  # fmt: skip
        return verify(
            members, self.writes,
            revoked=[Replica(v.index, _peer(v), v.scopes) for v in victims],
            revoked_epochs=self.revoked_epochs, forget_targets=self.forget_targets,
            revocation_known=known, views=views,
        )  # fmt: skip

    async def check_restarted(self) -> Findings:
        """Restart every robot from its store (as after a crash: what is only in memory is
        gone) and run the checkers again: memory ahead of the files (a forgotten user's rows
        left in the store, a write acknowledged but not stored) shows here.  The restarted
        robots are not linked: nothing more is exchanged."""
        stored: list[str] = []
        for robot in self.robots:
            peer, robot.peer = _peer(robot), None
            await peer.crash()
            stored += _purged_yet_stored(robot, self.forget_targets)
            await self._boot(robot, link=False)
        found = self.check(views=False)
        for robot in self.robots:  # what a boot resumes in the background (`Forgetting.resume`)
            await self._idle(robot)
        return replace(
            found,
            lost=[f"after a restart: {x}" for x in found.lost],
            divergences=[f"after a restart: {x}" for x in found.divergences],
            leaks=[f"after a restart: {x}" for x in found.leaks],
            remnants=stored + [f"after a restart: {x}" for x in found.remnants],
        )

    async def _idle(self, robot: Robot) -> None:
        """Let the robot's own background work (and its commits) run to its end."""
        peer = _peer(robot)
        for _ in range(IDLE_TURNS):
            if not quiescence.core_pending(peer):
                return
            for _ in range(WRITER_STEPS):
                await asyncio.sleep(0)
            await peer.commit()
        self.errors.append(f"r{robot.index} still busy {IDLE_TURNS} commits after a restart")

    async def stop(self) -> None:
        """Drop every robot (as a crash: the run is over, nothing more needs to land)."""
        for robot in self.robots:
            for task, _ in robot.writers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            robot.writers = []
            if robot.peer is not None:
                with contextlib.suppress(Exception):
                    await robot.peer.crash()
                robot.peer = None

    # ------------------------------------------------------------------ the event loop

    def at(self, when: float, action: Callable[[], Awaitable[None] | None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (max(when, self.now), self._seq, action))

    def note(self, line: str) -> None:
        self.trace.append(f"t={self.now:8.3f} {line}")

    async def _loop(self, deadline: float, *, until_quiet: bool = False) -> float | None:
        """Run events due until ``deadline``; with ``until_quiet``, stop (and return the time)
        as soon as the household is quiescent."""
        while self._heap and self._heap[0][0] <= deadline:
            when, _, action = heapq.heappop(self._heap)
            self.now = when
            try:
                result = action()
                if result is not None:
                    await result
            except Exception as exc:  # an escaped exception is a finding, not a crash here
                self.errors.append(f"t={self.now:.3f} {type(exc).__name__}: {exc}")
            if until_quiet and self._busy() is None:
                return self.now
        return None

    # ------------------------------------------------------------------ setup

    async def _setup(self) -> None:
        """The household (`hearthsync.chaos.household`), every robot booted from it and
        knowing the first users."""
        for member in household.create(self.plan, self.folder):
            self.robots.append(
                Robot(member.index, member.folder, member.identity, member.state,
                      member.scopes, member.rng, member.skew)
            )  # fmt: skip
        for index in self.plan.admins:
            self.note(f"r{index} is an admin: it makes and grants keys, as the owner r0 does")
        for robot in self.robots:
            await self._boot(robot)
            for n, user in enumerate(FIRST_USERS):
                op = Op(-1 - n, robot.index, "user", 0.0, 0)
                writer = Writer(robot.index, _peer(robot), robot.keyring)
                self._writer(robot, writer.add_user(user), op)
        for robot in self.robots:
            await self._commit(robot)

    async def _boot(self, robot: Robot, *, link: bool = True) -> None:
        robot.incarnation += 1
        robot.sealer = Sealer()
        with inline_sqlite():
            robot.peer = await Peer.start(
                robot.folder, device=f"r{robot.index}", embedder=_EMBEDDER,
                wall=lambda: self._wall(robot), rng=random.Random(robot.rng.getrandbits(64)),
                synchronous="OFF", auto_commit=False, offload=inline, monotonic=lambda: self.now,
            )  # fmt: skip
        # compact as a long-lived robot does, at any point of a run: the default threshold
        # (16 KiB of log) is rarely reached in 30 simulated seconds
        robot.peer._docs.compact_min_log_bytes = COMPACT_MIN_LOG_BYTES
        robot.peer.index_idle_s = 0.0  # no wall-clock wait: the seed decides every loop turn
        assert robot.peer.household is not None, "the household file was written at setup"
        robot.state = robot.peer.household  # what survived is what was saved
        if not link:
            return
        robot.peer.on_durable(lambda batch: self._forward(robot, batch))
        robot.peer.on_keys_made.append(lambda: self._send_grants(robot))
        if self.scenario.bug == "lose-every-10th-commit":
            bugs.lossy_store(robot.peer, self._bug_tick)
        bugs.install(self.scenario.bug, robot.peer, robot.state.keyring)
        for other in self.robots:
            if other is not robot and robot.device_id > other.device_id:
                self.at(self.now, lambda other=other: self._dial(robot, other))  # type: ignore[misc]

    def _wall(self, robot: Robot) -> float:
        """The robot's system clock; sessions and revocations read the robot's own clock,
        `Peer.wall`, which never reads earlier than the last time it read, as a running robot's
        `SyncService` does."""
        if robot.reset_at is not None:  # no clock battery: it counts from 1970 since its boot
            return self.now - robot.reset_at
        return BASE_WALL + self.now + robot.skew

    # ------------------------------------------------------------------ writes and commits

    async def _op(self, op: Op) -> None:
        robot = self.robots[op.robot]
        if robot.peer is None:
            self.note(f"op#{op.index} r{op.robot} {op.kind}: robot down, not attempted")
            return
        if OP_SCOPE[op.kind] not in robot.scopes:
            self.note(f"op#{op.index} r{op.robot} {op.kind}: not in its scopes, not attempted")
            return
        write = perform(op, robot.index, robot.peer, robot.keyring, self.forget_targets)
        self._writer(robot, write, op)
        await asyncio.sleep(0)  # the writer runs up to its commit now, at its own time

    def _writer(self, robot: Robot, coro: Awaitable[Any], op: Op) -> None:
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
        commit listener, `_forward`).  A failed commit is a finding: its writers are not
        acknowledged and the connections whose updates it held are closed, as `Link` does."""
        peer = _peer(robot)
        robot.commit_at = None
        writers, robot.writers = robot.writers, []
        to_ack, robot.to_ack = robot.to_ack, []
        for _ in range(2):  # let every writer created so far queue its write
            await asyncio.sleep(0)
        try:
            await peer.commit()
        except Exception as exc:
            self.errors.append(f"t={self.now:.3f} r{robot.index} commit failed: {exc!r}")
            self.note(f"r{robot.index} commit failed: {exc!r}")
            failed = True
        else:
            failed = False
        for _ in range(WRITER_STEPS):  # their batch landed: let them run to their end
            await asyncio.sleep(0)
        running = False
        for task, op in writers:
            if task.done():
                self._writer_done(robot, task, op, failed)
            else:  # a write of several steps (forgetting), or one with work after its write
                robot.writers.append((task, op))
                running = True
        # a writer of several steps queued its next write; or one still runs after its batch
        # landed (adding a user opens the user's vector index, which may rebuild it from the
        # store: more loop turns than WRITER_STEPS): look again at the next commit, or it is
        # never acknowledged and the robot never counts as idle (found by the harness, seed
        # 20769)
        if running or quiescence.core_pending(peer):
            self._schedule_commit(robot)
        for conn, doc_id, state in to_ack:
            side = conn.sides[robot.index]
            if not side.alive:
                continue
            if failed:
                side.session.close(f"could not commit {doc_id}")
            else:
                side.session.applied(doc_id, state)
            self._flush(conn, robot.index)

    def _writer_done(
        self,
        robot: Robot,
        task: asyncio.Task[Write | None],
        op: Op,
        failed: bool = False,
        crashed: bool = False,
    ) -> None:
        """A writer ended.  Not acknowledged is fine after a failed commit, a crash (it may
        end closed), or a refusal the writer explained (`Writer.explained`: the user was
        forgotten or unknown); anything else is an error."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and (
            failed or isinstance(exc, NotFoundError) or (crashed and isinstance(exc, ClosedError))
        ):
            self.note(f"op#{op.index} r{robot.index} {op.kind}: not acknowledged ({exc!r})")
        elif exc is not None:
            self.errors.append(f"op#{op.index} r{robot.index} {op.kind}: {exc!r}")
        else:
            write = task.result()
            if isinstance(write, Write):
                write.acked_at = self.now
                write.started_at = op.at
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
        if self._settling and robot.index not in self.revoked and other.index not in self.revoked:
            wait = min(wait, 1.0)  # after the heal members keep trying; cap it so runs end
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
            self._teardown(old, acceptor.index)
        self._conn_seq += 1
        conn = _Conn(self._conn_seq, {})
        for robot in (dialer, acceptor):
            session = Session(
                robot.identity, robot.certificate.to_wire(), robot.trust, robot.keyring,
                _peer(robot).docs, robot.rng.randbytes, self.now, _peer(robot).wall(),
                sealer=robot.sealer,
            )  # fmt: skip
            conn.sides[robot.index] = _Side(robot.index, session, robot.incarnation)
            robot.conns[(acceptor if robot is dialer else dialer).index] = conn
        for robot in (dialer, acceptor):
            self._flush(conn, robot.index)

    def _teardown(self, conn: _Conn, robot_index: int) -> None:
        """This robot's end of ``conn`` is gone (closed, reset or timed out)."""
        side = conn.sides[robot_index]
        if not side.alive:
            return
        side.alive = False
        robot = self.robots[robot_index]
        other = conn.other(robot_index)
        if robot.conns.get(other) is conn:
            del robot.conns[other]
            if robot.peer is not None and side.session.peer_id is not None:
                self._announce(robot)
        dialer = robot.device_id > self.robots[other].device_id
        if robot.peer is not None and robot.incarnation == side.incarnation and dialer:
            self._redial(robot, self.robots[other])

    def _announce(self, robot: Robot) -> None:
        """Tell each peer of ``robot`` which devices it now has open sessions with (as
        `SyncService` does whenever a link opens or closes)."""
        sessions = [conn.sides[robot.index].session for conn in robot.conns.values()]
        devices = {s.peer_id for s in sessions if s.peer_id and s.state is State.OPEN}
        for _other, conn in sorted(robot.conns.items()):
            side = conn.sides[robot.index]
            if side.alive and side.session.announce(devices):
                self._flush(conn, robot.index)

    def _flush(self, conn: _Conn, sender: int) -> None:
        side = conn.sides[sender]
        for data in side.session.data_to_send():
            self._send(conn, sender, data)
        if side.session.closed and side.alive:
            # the transport closes: the other side learns at once, if the network lets it
            self._teardown(conn, sender)
            receiver = conn.other(sender)
            if self._reachable(sender, receiver):
                delay = self.net.uniform(*self.scenario.latency)
                self.at(self.now + delay, lambda: self._reset(conn, receiver))

    def _reset(self, conn: _Conn, robot: int) -> None:
        if conn.sides[robot].alive:
            conn.sides[robot].session.close("connection closed by the peer")
            conn.sides[robot].session.events_received()
            self._teardown(conn, robot)

    # ------------------------------------------------------------------ the network

    def _send(self, conn: _Conn, sender: int, data: bytes) -> None:
        receiver = conn.other(sender)
        self.messages += 1
        # quiescence waits for every message between robots that are still members (heartbeats
        # included: they cost a round trip now and then, and need no look inside a frame)
        counted = sender not in self.revoked and receiver not in self.revoked
        drop = dup = extra = reorder = 0.0
        pair = (min(sender, receiver), max(sender, receiver))
        for fault in self._active:
            if fault.robots and fault.kind != "partition" and fault.robots != pair:
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
        when = self.now + self.net.uniform(*self.scenario.latency) + extra
        if reorder:
            when += self.net.uniform(0.0, reorder)
        else:  # in order per connection, as TCP delivers
            when = max(when, conn.arrival.get(receiver, 0.0))
            conn.arrival[receiver] = when
        copies = 2 if dup and self.net.random() < dup else 1
        for copy in range(copies):
            if counted:
                self._in_flight += 1
            arrive = when + copy * self.net.uniform(0.0, 0.02)
            self.at(arrive, lambda: self._deliver(conn, sender, receiver, data, counted))

    def _deliver(self, conn: _Conn, sender: int, receiver: int, data: bytes, counted: bool) -> None:
        if counted:
            self._in_flight -= 1
        side = conn.sides[receiver]
        robot = self.robots[receiver]
        if not side.alive or robot.peer is None or not self._reachable(sender, receiver):
            self.lost += 1
            if not side.alive and self._reachable_ignoring_crash(receiver, sender):
                # the receiver's end is gone (it crashed, or closed, while a partition lost
                # the reset or the close): its kernel answers a segment for a connection it
                # no longer knows with a reset, as TCP does.  Without it the sender's end
                # lived on until its heartbeat timeout, and the dialer, which does not dial a
                # peer it still holds a connection to, waited for it
                delay = self.net.uniform(*self.scenario.latency)
                self.at(self.now + delay, lambda: self._reset(conn, sender))
            return
        self._wire.update(b"%d>%d@%.6f:" % (sender, receiver, self.now))
        self._wire.update(data)
        side.session.receive_data(data, self.now, _peer(robot).wall())
        self._events(robot, conn)
        self._flush(conn, receiver)

    def _events(self, robot: Robot, conn: _Conn) -> None:
        side = conn.sides[robot.index]
        for event in side.session.events_received():
            if isinstance(event, ApplyUpdate):
                self._apply(robot, conn, event)
            elif isinstance(event, RevocationsChanged):  # keep it; tell the others (SyncService)
                self.note(f"r{robot.index} learns revocations {sorted(event.revoked)}")
                for victim in self.revoked:
                    if self.robots[victim].device_id in event.revoked:
                        self._revocation_at[victim].setdefault(robot.index, self.now)
                _peer(robot).trust_changed()
                self._to_every_link(robot, Session.send_revocations, but=conn)
            elif isinstance(event, KeysWanted):  # the owner keys them (`Link`)
                _peer(robot).keys_wanted(event.user)
            elif isinstance(event, KeysChanged):  # keep them; offer the others (SyncService)
                _peer(robot).keys_changed()
                self._to_every_link(robot, Session.keys_learned, but=conn)
                for victim, learnt in self._revocation_at.items():
                    if robot.index in learnt:
                        self._keys_at[victim].setdefault(robot.index, self.now)
            elif isinstance(event, PeerAuthenticated):
                robot.retry.pop(conn.other(robot.index), None)
                self._announce(robot)
            elif isinstance(event, LineageMismatch | SealFailed):
                self.errors.append(f"t={self.now:.3f} r{robot.index}: {event}")
            elif isinstance(event, KeyMissing | Closed):
                self.note(f"r{robot.index}<->r{conn.other(robot.index)} {event}")

    def _apply(self, robot: Robot, conn: _Conn, event: ApplyUpdate) -> None:
        """Merge a received update now; acknowledge it once its commit is durable, with the
        state vector right after the merge (`Link._apply`)."""
        peer = _peer(robot)
        session = conn.sides[robot.index].session
        if quiescence.scope_of(peer, event.doc_id) not in robot.scopes:
            self.errors.append(f"r{robot.index} received {event.doc_id} outside its scopes")
        broken = self.scenario.bug == "drop-every-10th-delta" and self._bug_tick()
        before = bugs.content(peer, event.doc_id) if broken else {}
        try:
            origin = session.peer_id or event.author
            if event.answer:  # not relayed as it came (`Session.relays`)
                origin = answer_from(origin)
            done = peer.receive_update(
                event.doc_id, event.update, origin=origin, packed=event.packed
            )
        except HearthError as exc:
            self.errors.append(f"t={self.now:.3f} r{robot.index} could not apply: {exc}")
            session.close(f"could not apply {event.doc_id}")
            return
        if broken:
            dropped = bugs.forget_merge(peer, event.doc_id, before)
            self.note(f"r{robot.index} loses {dropped} entries of {event.doc_id} (broken build)")
        state = peer.state_vector(event.doc_id)
        if done is None:  # nothing new: what it holds is already durable here
            session.applied(event.doc_id, state)
            return
        robot.to_ack.append((conn, event.doc_id, state))
        self._schedule_commit(robot)

    def _bug_tick(self) -> bool:
        """For a deliberately broken build: true once in `bugs.EVERY` calls."""
        self._bug_counter += 1
        return self._bug_counter % bugs.EVERY == 0

    def _forward(self, robot: Robot, batch: Any) -> None:
        """The commit listener: send every durable delta to every open connection, merged
        as `Link` merges them, never back to the device it came from."""
        for _other, conn in sorted(robot.conns.items()):
            side = conn.sides[robot.index]
            if not side.alive:
                continue
            relayed = [
                (doc_id, delta)
                for doc_id, delta, origin in batch
                if side.session.relays(DocId(doc_id), origin, delta)
            ]
            for doc_id, delta in merged_for_sending(relayed):
                side.session.send_update(DocId(doc_id), delta)
            self._flush(conn, robot.index)

    def _to_every_link(
        self, robot: Robot, call: Callable[[Session], object], but: _Conn | None = None
    ) -> None:
        """Call ``call`` on every open session of ``robot`` (but one), then send."""
        for _other, conn in sorted(robot.conns.items()):
            side = conn.sides[robot.index]
            if side.alive and conn is not but:
                call(side.session)
                self._flush(conn, robot.index)

    def _send_grants(self, robot: Robot) -> None:
        """The peer made keys (a new user on an admin robot): grant them (`on_keys_made`)."""
        self._to_every_link(robot, Session.send_grants)

    async def _tick(self) -> None:
        """Every session's heartbeat timer (`Link._tick`); and the core's own background work
        (a robot forgetting a user another robot forgot) gets its turn and its commit."""
        for _ in range(WRITER_STEPS):
            await asyncio.sleep(0)
        for robot in self.robots:
            if robot.peer is None:
                continue
            if quiescence.core_pending(robot.peer):
                self._schedule_commit(robot)
            for _other, conn in sorted(robot.conns.items()):
                side = conn.sides[robot.index]
                if side.alive:
                    side.session.tick(self.now, _peer(robot).wall())
                    self._events(robot, conn)
                    self._flush(conn, robot.index)
        self.at(self.now + TICK_S, self._tick)

    # ------------------------------------------------------------------ faults

    async def _start_fault(self, fault: Fault) -> None:
        if self._settling:
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
                if fault.amount:
                    robot.reset_at = self.now
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
            self._writer_done(robot, task, op, crashed=True)
        robot.writers = []
        robot.to_ack = []
        robot.commit_at = None
        robot.dialing.clear()
        for other, conn in sorted(robot.conns.items()):
            self._teardown(conn, robot.index)
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
        epochs = enrolment.revoke(
            owner.folder, owner.state, owner.identity, victim.device_id,
            now=int(_peer(owner).wall()), users=_peer(owner).users(),
            random_bytes=owner.rng.randbytes,
        )  # fmt: skip
        _peer(owner).trust_changed()  # as the console's 'revoke' does
        self.revoked.append(victim.index)
        self.revoked_epochs[victim.index] = dict(epochs)
        self._revocation_at[victim.index] = {owner.index: self.now}
        self._keys_at[victim.index] = {owner.index: self.now}
        # the victim's writes a member holds now are the household's: they must stay
        holdings = [(r.index, Holdings(r.peer)) for r in self._members() if r.peer is not None]
        for write in self.writes:
            if write.robot == victim.index:
                write.kept_by = frozenset(i for i, held in holdings if held.holds(write))
        self.note(f"r0 revokes r{victim.index}: new epochs {sorted(epochs.items())}")
        # as the console's 'revoke' does: gossip the list, which drops the revoked robot (the
        # new epochs' keys went to everyone still trusted with `trust_changed`, after the list)
        self._to_every_link(owner, Session.send_revocations)

    # ------------------------------------------------------------------ quiescence

    def _members(self) -> list[Robot]:
        return [r for r in self.robots if r.index not in self.revoked]

    def _busy(self) -> str | None:
        """Why the household is not quiescent yet (None: it is)."""
        if self._in_flight:
            return f"{self._in_flight} messages in flight"
        return quiescence.busy(self._members())


# ---------------------------------------------------------------------- helpers


def _purged_yet_stored(robot: Robot, users: set[str]) -> list[str]:
    """What ``robot``'s store file, as a crash left it, holds of a user whose purge it records
    as finished.  Memory cannot show it (the update logs, the ``vectors`` rows), and a purge
    that records its end is trusted at every later open: it must have left no row behind."""
    db = robot.folder / DB_FILE
    found = []
    for user in sorted(users):
        if read_meta(db, PURGED.format(user=user)) != "1":
            continue  # not claimed done: the robot's own account says so (`Left`)
        left = [f"{what} ({n})" for what, n in rows_of_subject(db, user).items() if n]
        if left:
            found.append(f"r{robot.index}'s store records a finished purge of {user} yet "
                         f"holds {', '.join(left)} of them (forgotten)")  # fmt: skip
    return found


def _peer(robot: Robot) -> Peer:
    assert robot.peer is not None, f"r{robot.index} is down"
    return robot.peer


def _merged(first: Findings, again: Findings) -> Findings:
    """The findings of the check before a restart, with what only the second one found."""
    return replace(
        first,
        lost=first.lost + again.lost,
        divergences=first.divergences + again.divergences,
        leaks=first.leaks + again.leaks,
        remnants=first.remnants + again.remnants,
    )


def _timed(outcome: Outcome, elapsed: float) -> Outcome:
    return replace(outcome, elapsed_s=elapsed)


class _Unpolled(selectors.DefaultSelector):
    """A selector that skips the system call when asked not to wait.

    An asyncio loop polls its selector once per turn, with a zero timeout while callbacks are
    ready; a simulation takes several turns per event (every ``await asyncio.sleep(0)`` of a
    writer or a commit) and has no socket to poll, so those polls were about a twentieth of
    a schedule.  A turn that would wait (nothing ready) still polls, so the loop's own wake-up
    pipe (a signal, a thread handing back work) is read as before.
    """

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return []
        return super().select(timeout)


def new_loop() -> asyncio.AbstractEventLoop:
    """An event loop made for simulations (`_Unpolled`): ``asyncio.Runner(loop_factory=...)``."""
    return asyncio.SelectorEventLoop(_Unpolled())


#: a schedule's scratch folder: ``hearth-chaos-<pid>-<random>``, the pid of the process
#: running it, so that `sweep_scratch` can tell one whose process is gone
SCRATCH_PREFIX = "hearth-chaos-"


def scratch_root() -> Path:
    """Where schedules make their scratch folders."""
    return Path(_fast_tmp() or tempfile.gettempdir())


def sweep_scratch(root: Path | None = None) -> int:
    """Remove the scratch folders of schedules whose process is gone (killed before it could
    clean up: SIGKILL, the machine's OOM killer); return how many.  /dev/shm is memory: each
    one left there held its robots' stores until the next reboot.  Folders of live processes,
    and any without a pid in their name, are left alone."""
    removed = 0
    for folder in (root or scratch_root()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid_text = folder.name[len(SCRATCH_PREFIX) :].partition("-")[0]
        if not pid_text.isdigit() or not folder.is_dir() or pid_alive(int(pid_text)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


async def simulate(plan: Plan, folder: Path | None = None) -> Outcome:
    """Run ``plan`` in a fresh temporary folder (removed afterwards unless ``folder`` given)."""
    if folder is not None:
        return await Simulation(plan, folder).run()
    prefix = f"{SCRATCH_PREFIX}{os.getpid()}-"
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_root()))
    try:
        return await Simulation(plan, scratch).run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
