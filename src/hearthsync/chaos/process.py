"""Process mode of the chaos harness: real ``hearth run`` processes, real sockets, real crashes.

The deterministic simulator proves the protocol core converges under any schedule it can
draw; this mode proves the shipped program does, with everything the simulator abstracts away
left in: SQLite and its fsyncs, websockets, the dialers' backoff, the duplicate-link rule, a
process killed between two writes.  A household of robots is made with the real CLI
(``hearth init``, ``invite``, ``join``), each robot runs as ``hearth run --console
--no-mdns``, and every connection between two robots passes a `FaultProxy`: robot A reaches
robot B only through the proxy ``(A, B)``, so the harness owns the network.

A run has three parts, drawn up front from the seed by `draw_steps` (a pure function, so a
failing seed replays the same scenario):

1. **weather**: writes, with now and then a delay, a reset, lossy connects or a slow link (a
   bandwidth cap, the edge of the Wi-Fi) on a robot's paths;
2. **partition**: one robot is cut off (silently: its connections stay open and carry nothing)
   while every robot keeps writing, one robot is SIGKILLed and restarted meanwhile, and before
   the heal the harness checks that no write crossed the cut, in either direction.  The robot
   cut off adds a user first (`NEW_USER`) and writes of them: a member robot makes no keys,
   so that write reaches the others only once the owner hears of the user after the heal,
   keys them and grants the keys.  Then another robot forgets a user the household has known
   from the start (`FORGOTTEN`, of whom a write in four so far was), and the robot cut off,
   which cannot hear of it, writes of them once more: after the heal that write, and every
   other of theirs, must be gone from every robot, memory and store;
3. **revocation** (three robots or more): once every write so far is on every robot, the owner
   revokes another robot at its console (`Revoke`).  The revoked robot, still running, writes
   once more (`Stray`): that write must never reach the owner (the others may take it before
   they hear of the revocation, and keep it).  The owner writes next: what it writes from then
   on must never reach the revoked robot's store, and the revoked robot must hold no key of
   the epochs the revocation started, neither scope key nor any user's data key (its store
   and credentials are read back at the end);
4. **aftershock**: another robot is SIGKILLed and restarted cut off (a robot rebooting out of
   reach), writing while the others do, with more weather; then the final heal, from which
   convergence is timed.  The revoked robot takes no part: the others converge without it.

A write counts as acknowledged when its robot answered ``ACK`` (the write is durable there).
After the heal every robot (but a revoked one) must hold every acknowledged write (checked
with the console's ``wait``, which answers once the value is there: no polling here) and all of
them must agree on the digest of every document they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from hearthsync import enrolment
from hearthsync.chaos.check import digest
from hearthsync.chaos.harness import die_with_parent
from hearthsync.chaos.netns import Lan
from hearthsync.chaos.proxy import FaultProxy
from hearthsync.errors import HearthError
from hearthsync.forgetting import PURGED
from hearthsync.peer import DB_FILE, Peer
from hearthsync.store.sqlite import read_meta, rows_of_subject

USER = "alice"
NEW_USER = "erin"  #: added by the robot cut off, during the partition
#: known from the start, written of, and forgotten during the partition by a robot not cut off
FORGOTTEN = "frank"
LATE_KEY = "chaos/late"  #: the robot cut off writes of `FORGOTTEN` after the forgetting
SCOPES = "core,health,history,spatial"
LOG_FILE = "stderr.log"  #: in each robot's folder: its stderr, every start appended
START_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 20.0  #: a console command's answer, beyond the wait it asked for
STOP_TIMEOUT_S = 10.0  #: SIGTERM, then SIGKILL after this long
CLI_TIMEOUT_S = 60.0
LINK_TIMEOUT_S = 30.0  #: the household linking up before the workload starts
CUT_S = 1.0  #: how long a partition lasts, at least, before it is checked
CONVERGE_TIMEOUT_S = 40.0  #: from the final heal until every write is everywhere
#: from the owner's revocation until every robot linked to it holds the list (it crosses a
#: link in milliseconds: a robot that has not heard by then never will)
REVOKE_SPREAD_S = 10.0
WEATHER_P = 0.3  #: chance of a light fault before each write outside the partition
LAN_PORT = 7420  #: on a LAN of namespaces every robot has an address of its own


class RobotProcessError(HearthError):
    """A robot process did not start, answer or behave as the console promises."""


# ------------------------------------------------------------------------------ the steps


@dataclass(frozen=True, slots=True)
class Write:
    robot: str
    key: str
    value: int
    user: str = USER


@dataclass(frozen=True, slots=True)
class AddUser:
    robot: str
    user: str


@dataclass(frozen=True, slots=True)
class Forget:
    """``robot`` forgets ``user`` at its console (`Peer.forget`)."""

    robot: str
    user: str


@dataclass(frozen=True, slots=True)
class Delay:
    robot: str
    other: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Throttle:
    """The link between ``robot`` and ``other`` carries ``bytes_per_s`` each way until the heal."""

    robot: str
    other: str
    bytes_per_s: int


@dataclass(frozen=True, slots=True)
class Reset:
    robot: str


@dataclass(frozen=True, slots=True)
class Drop:
    robot: str
    probability: float
    seed: int  #: drawn with the steps: how many connects a run makes is timing, not seed


@dataclass(frozen=True, slots=True)
class Cut:
    robot: str


@dataclass(frozen=True, slots=True)
class Kill:
    robot: str


@dataclass(frozen=True, slots=True)
class Restart:
    robot: str


@dataclass(frozen=True, slots=True)
class Settle:
    """Wait until every write acknowledged so far is on every robot."""


@dataclass(frozen=True, slots=True)
class Revoke:
    """The owner (the first robot) revokes ``robot`` at its console."""

    robot: str


@dataclass(frozen=True, slots=True)
class Stray:
    """The revoked ``robot`` writes after its revocation: acknowledged by itself, and by
    no other robot ever held."""

    robot: str
    key: str
    value: int


@dataclass(frozen=True, slots=True)
class CheckCut:
    """Before the partition heals: no write of its part crossed it."""


@dataclass(frozen=True, slots=True)
class Heal:
    """Every proxy back to a perfect network."""


Step = (
    Write
    | AddUser
    | Forget
    | Delay
    | Throttle
    | Reset
    | Drop
    | Cut
    | Kill
    | Restart
    | Settle
    | Revoke
    | Stray
    | CheckCut
    | Heal
)
FAULTS = (Delay, Throttle, Reset, Drop, Cut, Kill, Revoke)
OWNER = "r0"  #: the robot that made the household: the one that revokes
ADMIN = "r1"  #: invited as an admin in the runs `admin_of` says


def admin_of(seed: int, peers: int) -> str | None:
    """The admin of a run (it invites members, and makes and grants the data keys of the
    people it adds): `ADMIN` in every other seed of three robots or more, none otherwise.
    Not drawn from the seed's random steps, so adding it left every seed's scenario as it
    was."""
    return ADMIN if peers >= 3 and seed % 2 == 1 else None


def robot_names(peers: int) -> list[str]:
    return [f"r{i}" for i in range(peers)]


def draw_steps(seed: int, peers: int, edits: int, *, weather: bool = True) -> list[Step]:
    """The scenario of a run: the same seed, peers and edits give the same steps (without
    ``weather``: no delays, slow links, resets or refused connects, the rest drawn as with it)."""
    if peers < 2 or edits < 6:
        raise ValueError("a chaos run needs at least 2 robots and 6 edits")
    rng = random.Random(seed)
    names = robot_names(peers)
    first, second = edits // 3, 2 * edits // 3
    steps: list[Step] = []
    down: set[str] = set()
    revoked: set[str] = set()

    def write(i: int, robot: str | None = None, user: str = USER) -> None:
        robot = robot or rng.choice([n for n in names if n not in down | revoked])
        steps.append(Write(robot, f"chaos/{i:03d}", rng.randrange(1_000_000), user))

    def some_weather() -> None:
        if rng.random() >= WEATHER_P or not weather:
            return
        robot = rng.choice(names)
        kind = rng.choice((Delay, Throttle, Reset, Drop))
        if kind is Delay:
            other = rng.choice([n for n in names if n != robot])
            steps.append(Delay(robot, other, round(rng.uniform(0.005, 0.05), 3)))
        elif kind is Throttle:
            other = rng.choice([n for n in names if n != robot])
            steps.append(Throttle(robot, other, rng.randrange(20_000, 200_000, 1_000)))
        elif kind is Reset:
            steps.append(Reset(robot))
        else:
            steps.append(Drop(robot, 0.5, rng.getrandbits(32)))

    def crash(start: int, end: int) -> tuple[int, int, str]:
        """A kill before edit ``kill_at`` and a restart before edit ``back_at`` (or at end)."""
        kill_at = rng.randrange(start, end)
        crashed = rng.choice([n for n in names if n not in revoked])
        return kill_at, min(kill_at + rng.randint(1, 2), end), crashed

    for i in range(first):
        some_weather()
        write(i, user=FORGOTTEN if i % 4 == 1 else USER)  # (no draw: seeds keep their runs)
    victim = rng.choice(names)
    steps += [Cut(victim), AddUser(victim, NEW_USER)]
    kill_at, back_at, crashed = crash(first + 1, second)  # after the victim's first write
    for i in range(first, second):
        if i == kill_at:
            steps.append(Kill(crashed))
            down.add(crashed)
        if i == back_at:
            steps.append(Restart(crashed))
            down.discard(crashed)
        if i == first:
            write(i, victim, NEW_USER)
            # forgotten by a robot the cut does not reach, then written of where it does
            steps.append(Forget(names[(names.index(victim) + 1) % len(names)], FORGOTTEN))
            steps.append(Write(victim, LATE_KEY, i, FORGOTTEN))
        else:
            write(i)
    if crashed in down:
        steps.append(Restart(crashed))
        down.discard(crashed)
    steps += [CheckCut(), Heal()]
    start = second
    if peers >= 3:  # two robots go on without it
        gone = rng.choice(names[1:])
        steps += [Settle(), Revoke(gone), Stray(gone, "chaos/stray", rng.randrange(1_000_000))]
        revoked.add(gone)
        write(second, OWNER)  # under the new epoch at once: it must never reach the revoked
        start = second + 1
    kill_at, back_at, crashed = crash(start, edits)
    for i in range(start, edits):
        if i == kill_at:  # and it comes back where no link reaches: the heal has work to do
            steps += [Kill(crashed), Cut(crashed)]
            down.add(crashed)
        if i == back_at:
            steps.append(Restart(crashed))
            down.discard(crashed)
        some_weather()
        write(i)
    if crashed in down:
        steps.append(Restart(crashed))
    steps.append(Heal())
    return steps


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True, slots=True)
class ProcessReport:
    """What a process-mode run did and found.  ``ok``: nothing lost, nothing diverged."""

    peers: int
    seed: int
    faults: int  #: delays, throttles, resets, drops, cuts, kills and revocations applied
    fault_trace: list[str]  #: every fault, restart and heal, as ``t=1.20 cut r1``
    acknowledged_writes: int
    verified_writes: int  #: acknowledged writes found, with their value, on every robot
    lost_writes: list[tuple[str, str]]  #: (robot that acked it, key) missing somewhere
    divergences: int  #: robots whose document digest differs from the first robot's
    converge_s: float  #: from the final heal until every write was verified everywhere
    isolated_writes: list[tuple[str, str]] = field(default_factory=list)
    """(robot, key) written during the partition and confirmed absent across it."""
    leaked_writes: list[tuple[str, str]] = field(default_factory=list)
    """(robot, key) written during the partition and found across it: the cut leaked."""
    bytes_forwarded: int = 0  #: through every proxy: the robots really talked through them
    refused_connections: int = 0  #: connects the proxies refused (`Drop`)
    links_across_cut: int = 0
    """Links across the partition still up when it was checked (robots count one each way):
    the heartbeat had not noticed it yet."""
    revoked: str = ""  #: the robot the owner revoked ("" if none: two robots)
    revocation_leaks: list[str] = field(default_factory=list)
    """What crossed a revocation: the revoked robot's later write held elsewhere, a key of an
    epoch the revocation started held by it, a robot still linked to it at the end."""
    forgotten: str = ""  #: the user a robot forgot during the partition ("" if none)
    exempt_writes: int = 0  #: acknowledged writes of the forgotten user: required gone
    forgetting_remnants: list[str] = field(default_factory=list)
    """What a robot (its memory, or its store and credentials as it left them) still held of
    the forgotten user at the end."""

    @property
    def ok(self) -> bool:
        return (
            not self.lost_writes
            and not self.leaked_writes
            and not self.revocation_leaks
            and not self.forgetting_remnants
            and self.divergences == 0
            and self.verified_writes + self.exempt_writes == self.acknowledged_writes
        )


# ------------------------------------------------------------------------------ one robot


def hearth_script() -> str:
    """The ``hearth`` console script installed beside the running Python."""
    found = shutil.which("hearth", path=str(Path(sys.executable).parent))
    if found is None:
        raise RobotProcessError(f"no 'hearth' script beside {sys.executable}: install the package")
    return found


async def hearth(*args: str, prefix: Sequence[str] = ()) -> str:
    """Run one ``hearth`` command to its end (``prefix``: a command that runs it, such as
    ``ip netns exec NS``); its output (which may hold an invite code: never log it)."""
    process = await asyncio.create_subprocess_exec(
        *prefix, hearth_script(), *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CLI_TIMEOUT_S):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RobotProcessError(f"'hearth {args[0]}' did not finish") from None
    if process.returncode != 0:  # stderr only, and not the arguments: they may hold a code
        raise RobotProcessError(f"'hearth {args[0]}' failed: {err.decode()[-2000:]}")
    return out.decode()


class Robot:
    """One ``hearth run --console`` process for the folder ``path``, restartable.

    Behind proxies it dials every address in ``dial`` (the proxies in front of the other
    robots), listens on a fresh loopback port each start and does without mDNS.  On a LAN of
    namespaces (``prefix``: ``ip netns exec NS``) it listens on its own address and finds the
    others by mDNS.  Commands go one at a time: one line in, one line out.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        dial: Sequence[tuple[str, int]] = (),
        *,
        prefix: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
    ) -> None:
        self.name = name
        self.path = path
        self.dial = list(dial)
        self.prefix = list(prefix)
        self.listen = listen
        self.mdns = bool(prefix)
        self.process: asyncio.subprocess.Process | None = None
        self.device_id = ""
        self.port = 0
        self.starts = 0
        self._turn = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the process and wait for its ``READY`` line."""
        peers = [arg for host, port in self.dial for arg in ("--peer", f"{host}:{port}")]
        self.starts += 1
        with (self.path / LOG_FILE).open("ab") as log_file:
            log_file.write(f"--- {self.name}: start {self.starts} at {time.time():.3f}\n".encode())
            log_file.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self.prefix, hearth_script(), "run", str(self.path), "--listen", self.listen,
                "--console", *([] if self.mdns else ["--no-mdns"]), *peers,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
                # a robot ends with the run that started it, killed or not (found in review:
                # a SIGTERM left one listening, its parent pid 1)
                preexec_fn=partial(die_with_parent, os.getpid()),
            )  # fmt: skip
        ready = await self._line(START_TIMEOUT_S)
        if not ready.startswith("READY "):
            raise RobotProcessError(f"{self.name} started with {ready!r}, not READY")
        _, self.device_id, address = ready.split()
        self.port = int(address.rsplit(":", 1)[1])

    async def ask(self, command: str, wait_s: float = 0.0) -> str:
        """Send one console command and return its answer (``wait_s``: the wait it asks for)."""
        async with self._turn:
            process = self._running()
            assert process.stdin is not None
            process.stdin.write(command.encode() + b"\n")
            await process.stdin.drain()
            return await self._line(wait_s + ANSWER_TIMEOUT_S)

    async def kill(self) -> None:
        """SIGKILL: no goodbye, no flush, no closed sockets but those the kernel closes."""
        process = self._running()
        process.kill()
        await process.wait()

    async def stop(self) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL if it takes too long; the exit code."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it died on its own meanwhile
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    def _running(self) -> asyncio.subprocess.Process:
        if self.process is None or self.process.returncode is not None:
            raise RobotProcessError(f"{self.name} is not running")
        return self.process

    async def _line(self, timeout_s: float) -> str:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                raw = await process.stdout.readline()
        except TimeoutError:
            raise RobotProcessError(f"{self.name} did not answer in {timeout_s:.0f} s") from None
        if not raw:
            code = await process.wait()
            raise RobotProcessError(f"{self.name} exited ({code}); see {self.path / LOG_FILE}")
        return raw.decode().strip()


# ------------------------------------------------------------------------------ the run


async def run_processes(
    folder: Path,
    *,
    peers: int = 3,
    seed: int = 0,
    edits: int = 20,
    log: Callable[[str], None] | None = None,
    cut_s: float = CUT_S,
    netns: bool = False,
) -> ProcessReport:
    """Run the `draw_steps` of ``seed`` against ``peers`` robots in ``folder`` (new or empty).

    ``cut_s`` is how long the partition lasts at least before it is checked: past the
    session's dead-peer timeout plus the websocket close timeout (about 22 s), the links across
    it must be gone (`ProcessReport.links_across_cut`); shorter, they survive it silently.
    With ``netns`` the robots run in network namespaces on one bridge and find each other by
    mDNS (`hearthsync.chaos.netns`), and a cut unplugs a robot from the bridge, mDNS included;
    there is no weather then (delays, slow links, resets and refused connects are the proxies'
    faults).
    Every process, proxy and namespace is gone before this returns, whatever happened.
    """
    names = robot_names(peers)
    steps = draw_steps(seed, peers, edits, weather=not netns)
    async with contextlib.AsyncExitStack() as network:
        lan = await network.enter_async_context(Lan(names)) if netns else None
        run = _Run(folder, names, log or (lambda _: None), cut_s, lan)
        for proxy in run.proxies.values():
            await network.enter_async_context(proxy)
        try:
            await run.setup(seed)
            for step in steps:
                await run.do(step)
            report = await run.verify(seed)
        finally:
            await run.shutdown()
    return report


class _Run:
    """The state of one run: robots, the proxy of each path, what was written and when."""

    def __init__(
        self,
        folder: Path,
        names: list[str],
        log: Callable[[str], None],
        cut_s: float,
        lan: Lan | None = None,
    ) -> None:
        self.folder = folder
        self.cut_s = cut_s
        self.log = log
        self.lan = lan
        #: (a, b): the proxy robot a dials to reach robot b (none on a LAN of namespaces)
        self.proxies = {
            (a, b): FaultProxy(name=f"{a}->{b}") for a in names for b in names if a != b
        } if lan is None else {}  # fmt: skip
        self.robots = {
            name: Robot(name, folder / name) if lan is None else Robot(
                name, folder / name, prefix=lan.prefix(name),
                listen=f"{lan.address(name)}:{LAN_PORT}",
            )
            for name in names
        }  # fmt: skip
        self.trace: list[str] = []
        self.faults = 0
        self.acked: list[Write] = []
        self.victim: str | None = None
        self.cut_writes: list[Write] = []
        self.isolated: list[tuple[str, str]] = []
        self.leaked: list[tuple[str, str]] = []
        self.links_across_cut = 0
        self.revoked: str | None = None
        self.epochs: dict[str, int] = {}  #: scope: the epoch the revocation started
        self.strays: list[Stray] = []
        self.unheard: list[str] = []  #: robots the revocation did not reach (`_revoke`)
        #: the owner's writes once it revoked: sealed under keys the revoked robot never gets
        self.owners_later: list[Write] = []
        self.forgotten: str | None = None
        #: acknowledged writes of the forgotten user: required on no robot, not on every one
        self.exempt: list[Write] = []
        self.t0 = time.monotonic()
        self.healed_at = self.t0

    # -------------------------------------------------------------- setup

    async def setup(self, seed: int) -> None:
        """A household made with the CLI, every robot running, linked, and knowing alice and
        frank; `admin_of` the seed invited as an admin."""
        self.folder.mkdir(parents=True, exist_ok=True)
        admin = admin_of(seed, len(self.robots))
        for name, robot in self.robots.items():  # on a LAN they find each other by mDNS
            robot.dial = [
                proxy.address for (dialer, _), proxy in self.proxies.items() if dialer == name
            ]
        owner, *others = self.robots.values()
        await hearth(
            "init", str(owner.path), "--household", f"chaos {seed}", "--device", owner.name
        )
        await self._start(owner)
        for user in (USER, FORGOTTEN):
            await self._expect(owner, f"user {user} {user.title()}", f"ACK user {user}")
        host = "127.0.0.1" if self.lan is None else self.lan.address(owner.name)
        for robot in others:  # the join dials the owner directly: enrolment is not under test
            out = await hearth("invite", str(owner.path), "--scopes", SCOPES,
                               "--address", f"{host}:{owner.port}",
                               *(["--admin"] if robot.name == admin else []))  # fmt: skip
            code = next(line.split()[1] for line in out.splitlines() if line.startswith("CODE "))
            await hearth("join", str(robot.path), code, "--device", robot.name,
                         prefix=robot.prefix)  # fmt: skip
        await asyncio.gather(*(self._start(robot) for robot in others))
        count = len(self.robots) - 1
        await asyncio.gather(*(
            self._expect(robot, f"waituser {user} {LINK_TIMEOUT_S}", f"OK user {user}",
                         LINK_TIMEOUT_S)
            for robot in self.robots.values() for user in (USER, FORGOTTEN)
        ))  # fmt: skip
        for robot in self.robots.values():
            answer = await robot.ask(f"waitpeers {count} {LINK_TIMEOUT_S}", LINK_TIMEOUT_S)
            if not answer.startswith("PEERS "):
                raise RobotProcessError(f"{robot.name} did not link up: {answer}")
        self.t0 = time.monotonic()
        how = f"{len(self.proxies)} proxies" if self.lan is None else "a bridge, by mDNS"
        self.log(f"household of {len(self.robots)} robots linked through {how}")
        if admin is not None:
            self._note(f"{admin} is an admin: it keys the people it adds, and grants keys")

    async def _start(self, robot: Robot) -> None:
        await robot.start()
        for (_, target), proxy in self.proxies.items():
            if target == robot.name:
                proxy.retarget("127.0.0.1", robot.port)

    # -------------------------------------------------------------- steps

    async def do(self, step: Step) -> None:
        if isinstance(step, FAULTS):
            self.faults += 1
        match step:
            case Write():
                await self._write(step)
            case AddUser(robot, user):
                await self._expect(self.robots[robot], f"user {user} {user.title()}",
                                   f"ACK user {user}")  # fmt: skip
                self._note(f"{robot} adds {user}")
            case Forget(robot, user):
                answer = await self.robots[robot].ask(f"forget {user}")
                if not answer.startswith(f"ACK forget {user} "):
                    raise RobotProcessError(f"{robot} answered {answer!r:.200} to forget {user}")
                self.forgotten = user
                self.exempt += [write for write in self.acked if write.user == user]
                self.acked = [write for write in self.acked if write.user != user]
                self.cut_writes = [write for write in self.cut_writes if write.user != user]
                self._note(f"{robot} forgets {user}")
            case Delay(robot, other, seconds):
                for pair in ((robot, other), (other, robot)):
                    self.proxies[pair].delay(seconds)
                self._note(f"delay {robot}<->{other} {seconds * 1000:.0f}ms")
            case Throttle(robot, other, bytes_per_s):
                for pair in ((robot, other), (other, robot)):
                    self.proxies[pair].throttle(bytes_per_s)
                self._note(f"throttle {robot}<->{other} {bytes_per_s / 1000:.0f} KB/s")
            case Reset(robot):
                for proxy in self._paths(robot):
                    proxy.reset()
                self._note(f"reset {robot}")
            case Drop(robot, probability, seed):
                rng = random.Random(seed)
                for proxy in self._paths(robot):
                    proxy.drop(probability, rng)
                self._note(f"drop {robot} {probability:.0%} of connects")
            case Cut(robot):
                for proxy in self._paths(robot):
                    proxy.cut()
                if self.lan is not None:
                    await self.lan.cut(robot)
                self.victim, self.cut_writes = robot, []
                self._note(f"cut {robot}")
            case Kill(robot):
                await self.robots[robot].kill()
                self._note(f"kill {robot}")
            case Restart(robot):
                await self._start(self.robots[robot])
                self._note(f"restart {robot}")
            case Settle():
                deadline = time.monotonic() + CONVERGE_TIMEOUT_S
                missing: set[tuple[str, str]] = set()  # the verdict's own wait decides loss
                live = self._live()
                found = await asyncio.gather(
                    *(self._arrived(robot, self.acked, deadline, missing) for robot in live)
                )
                if missing:
                    absent = [f"{w.robot}'s {w.key} on {robot.name}"
                              for robot, got in zip(live, found, strict=True)
                              for w in self.acked if w not in got]  # fmt: skip
                    raise RobotProcessError(f"the household did not settle: {', '.join(absent)}")
                self._note(f"settled: {len(self.acked)} writes on every robot")
            case Revoke(robot):
                await self._revoke(robot)
            case Stray(robot, key, value):
                command = f"pref {USER} {key} {value}"
                answer = await self.robots[robot].ask(command)
                if answer != f"ACK {command}":  # its own store takes it: nobody else may
                    raise RobotProcessError(f"{robot} refused {key}: {answer!r:.200}")
                self.strays.append(step)
                self._note(f"{robot}, revoked, writes {key}")
            case CheckCut():
                await self._check_cut()
            case Heal():
                for proxy in self.proxies.values():
                    proxy.heal()
                if self.lan is not None:
                    await self.lan.heal()
                self.victim = None
                self.healed_at = time.monotonic()
                self._note("heal")

    def _live(self) -> list[Robot]:
        """Every robot but the revoked one."""
        return [robot for name, robot in self.robots.items() if name != self.revoked]

    async def _revoke(self, name: str) -> None:
        gone = self.robots[name]
        answer = await self.robots[OWNER].ask(f"revoke {name}")
        prefix = f"ACK revoke {gone.device_id} "
        if not answer.startswith(prefix):
            raise RobotProcessError(f"{OWNER} answered {answer!r:.200} to revoke {name}")
        for made in answer.removeprefix(prefix).split(","):
            scope, epoch = made.split("@")
            self.epochs[scope] = int(epoch)
        self.revoked = name
        self._note(f"revoke {name}")
        # every other robot holds the list before the revoked one writes again: one that had
        # not heard of it yet rightly took the write, and passed it on to the owner in a
        # catch-up answer of its own (seen in CI: the owner's store held the stray write).
        # Knowing it, none may take it: the verdict checks them all
        others = [robot for robot in self._live() if robot.name != OWNER]
        answers = await asyncio.gather(*(
            robot.ask(f"waitrevoked {gone.device_id} {REVOKE_SPREAD_S}", REVOKE_SPREAD_S)
            for robot in others
        ))  # fmt: skip
        for robot, said in zip(others, answers, strict=True):
            if not said.startswith("REVOKED "):  # a failure of its own, and of the verdict
                self.unheard.append(f"{robot.name} did not hear of the revocation of {name} "
                                    f"in {REVOKE_SPREAD_S:.0f} s")  # fmt: skip
        self._note(f"every robot knows {name} is revoked" if not self.unheard
                   else "; ".join(self.unheard))  # fmt: skip

    def _paths(self, robot: str) -> list[FaultProxy]:
        return [proxy for pair, proxy in self.proxies.items() if robot in pair]

    def _note(self, text: str) -> None:
        line = f"t={time.monotonic() - self.t0:.2f} {text}"
        self.trace.append(line)
        self.log(line)

    async def _write(self, write: Write) -> None:
        command = f"pref {write.user} {write.key} {write.value}"
        answer = await self.robots[write.robot].ask(command)
        if answer != f"ACK {command}":
            # a live robot refuses nothing: a build that refused every write acknowledged
            # none, so lost none, and passed (found in review)
            raise RobotProcessError(f"{write.robot} refused {write.key}: {answer!r:.200}")
        if write.user == self.forgotten:  # by a robot that has not heard yet: gone later
            self.exempt.append(write)
            return
        self.acked.append(write)
        if self.victim is not None:
            self.cut_writes.append(write)
        if self.revoked is not None and write.robot == OWNER:
            self.owners_later.append(write)

    async def _check_cut(self) -> None:
        """No write made during the cut crossed it: the victim's writes are on no other robot,
        the others' are not on the victim.  Each robot first waits ``cut_s`` for one of them
        (so the rest had that long to leak), then reads the rest; then each tells which links
        it still has across the cut."""
        victim = self.victim
        assert victim is not None, "CheckCut outside a partition"
        across: dict[str, list[Write]] = {name: [] for name in self.robots}
        for write in self.cut_writes:
            for name in self.robots:
                if (write.robot == victim) != (name == victim):
                    across[name].append(write)

        async def check(name: str, writes: list[Write]) -> set[Write]:
            robot = self.robots[name]
            crossed = set()
            for n, write in enumerate(writes):
                if n == 0:
                    answer = await robot.ask(
                        f"wait {write.user} {write.key} {self.cut_s}", self.cut_s
                    )
                    if answer.split()[0] not in ("OK", "TIMEOUT"):
                        raise RobotProcessError(f"{name} answered {answer!r} to wait")
                    arrived = answer.startswith("OK ")
                else:
                    arrived = await self._value(robot, write) is not None
                if arrived:
                    crossed.add(write)
            return crossed

        found = await asyncio.gather(*(check(name, writes) for name, writes in across.items()))
        crossed = set().union(*found)
        checked = {write for writes in across.values() for write in writes}
        self.leaked += [(w.robot, w.key) for w in self.cut_writes if w in crossed]
        self.isolated += [(w.robot, w.key) for w in self.cut_writes if w in checked - crossed]
        self.links_across_cut = sum(await asyncio.gather(*(
            self._links_across(robot, victim) for robot in self.robots.values()
        )))  # fmt: skip
        self._note(f"checked the cut: {len(checked - crossed)} writes isolated, "
                   f"{len(crossed)} leaked, {self.links_across_cut} links still up")  # fmt: skip

    async def _links_across(self, robot: Robot, victim: str) -> int:
        answer = await robot.ask("peers")
        if not answer.startswith("PEERS"):
            raise RobotProcessError(f"{robot.name} answered {answer!r} to peers")
        linked = set(answer.removeprefix("PEERS").strip().split(","))
        across = [
            r.device_id
            for r in self.robots.values()
            if (r.name == victim) != (robot.name == victim)
        ]
        return len(linked.intersection(across))

    # -------------------------------------------------------------- the verdict

    async def _arrived(
        self, robot: Robot, writes: list[Write], deadline: float, missing: set[tuple[str, str]]
    ) -> list[Write]:
        """The ``writes`` that reach ``robot`` by ``deadline`` (waited for, not polled); the
        others are added to ``missing``."""
        found = []
        for write in writes:
            left = max(0.1, deadline - time.monotonic())
            answer = await robot.ask(f"wait {write.user} {write.key} {left:.2f}", left)
            if answer == f"OK {write.user} {write.key}":
                found.append(write)
            else:
                missing.add((write.robot, write.key))
        return found

    async def verify(self, seed: int) -> ProcessReport:
        """Every acknowledged write on every robot but a revoked one (waited for, not polled),
        then digests, then what crossed the revocation."""
        deadline = self.healed_at + CONVERGE_TIMEOUT_S
        missing: set[tuple[str, str]] = set()  # acknowledged, and not everywhere
        live = self._live()
        found = await asyncio.gather(
            *(self._arrived(robot, self.acked, deadline, missing) for robot in live)
        )
        remnants = await self._check_forgotten(live, deadline)
        converge_s = time.monotonic() - self.healed_at
        for robot, writes in zip(live, found, strict=True):
            for write in writes:  # arrived: with the value that was acknowledged?
                if await self._value(robot, write) != write.value:
                    missing.add((write.robot, write.key))
        digests = [await self._digest(robot) for robot in live]
        self.log(f"converged in {converge_s:.2f} s; digests {sorted(set(digests))}")
        leaks = await self._check_revocation(live)
        # then as after a crash: what only memory held is gone.  Every robot is killed and
        # its store read back; without this a robot that acknowledged what it never stored
        # passed (found in review: memory alone was checked)
        stored_digests = await self._check_stored(missing, leaks, remnants)
        digests += stored_digests
        lost = sorted(missing)
        proxies = [proxy.counters for proxy in self.proxies.values()]
        return ProcessReport(
            peers=len(self.robots), seed=seed, faults=self.faults, fault_trace=list(self.trace),
            acknowledged_writes=len(self.acked) + len(self.exempt),
            verified_writes=len(self.acked) - len({key for _, key in lost}),
            lost_writes=lost, divergences=sum(d != digests[0] for d in digests),
            converge_s=converge_s, isolated_writes=list(self.isolated),
            leaked_writes=list(self.leaked), links_across_cut=self.links_across_cut,
            bytes_forwarded=sum(c.bytes_forwarded for c in proxies),
            refused_connections=sum(c.refused for c in proxies),
            revoked=self.revoked or "", revocation_leaks=leaks,
            forgotten=self.forgotten or "", exempt_writes=len(self.exempt),
            forgetting_remnants=remnants,
        )  # fmt: skip

    async def _check_forgotten(self, live: list[Robot], deadline: float) -> list[str]:
        """Every robot but a revoked one holds nothing of the forgotten user by ``deadline``
        (waited for, not polled): what each still holds then, one line per remnant."""
        if self.forgotten is None:
            return []
        user = self.forgotten
        left = max(0.1, deadline - time.monotonic())
        answers = await asyncio.gather(
            *(robot.ask(f"forgotten {user} {left:.2f}", left) for robot in live)
        )
        remnants = []
        for robot, answer in zip(live, answers, strict=True):
            if answer == f"FORGOTTEN {user}":
                continue
            if not answer.startswith(f"TIMEOUT forgotten {user}: "):
                raise RobotProcessError(f"{robot.name} answered {answer!r:.200} to forgotten")
            held = answer.removeprefix(f"TIMEOUT forgotten {user}: ").split("; ")
            remnants += [f"{robot.name} {line}" for line in held]
        return remnants

    async def _check_revocation(self, live: list[Robot]) -> list[str]:
        """Once the others converged: no robot holds what the revoked one wrote after every
        robot knew of its revocation (`_revoke` waits for that), and no robot is still
        linked to the revoked one."""
        if self.revoked is None:
            return []
        gone = self.robots[self.revoked]
        leaks = list(self.unheard)
        for robot in live:
            for stray in self.strays:
                write = Write(stray.robot, stray.key, stray.value)
                if await self._value(robot, write) is not None:
                    leaks.append(f"{robot.name} holds {stray.key}, written by "
                                 f"{stray.robot} after its revocation")  # fmt: skip
            answer = await robot.ask("peers")
            if gone.device_id in answer.removeprefix("PEERS").strip().split(","):
                leaks.append(f"{robot.name} is still linked to {gone.name}, revoked")
        return leaks

    async def _check_stored(
        self, missing: set[tuple[str, str]], leaks: list[str], remnants: list[str]
    ) -> list[str]:
        """Kill every robot, open each store here, and add to ``missing`` each acknowledged
        write it lacks (or holds with another value); the stores' digests.  The revoked
        robot's store is not required to hold anything: its credentials must hold no key of
        an epoch its revocation started (else added to ``leaks``).  What a store or the
        credentials still hold of the forgotten user, read as the robot left them (opening a
        store finishes a purge a crash cut short), is added to ``remnants``."""
        for robot in self.robots.values():
            if robot.alive:
                await robot.kill()
        digests = []
        for robot in self._live():
            if self.forgotten is not None:
                remnants += [f"{robot.name}'s {line}"
                             for line in _stored_remnants(robot.path, self.forgotten)]  # fmt: skip
            async with Peer.open(robot.path) as stored:
                for write in self.acked:
                    found = stored.preference(write.user, write.key)
                    if found is None or found.value != write.value:
                        missing.add((f"{write.robot} (in {robot.name}'s store)", write.key))
                for stray in self.strays:
                    if stored.preference(USER, stray.key) is not None:
                        leaks.append(f"{robot.name}'s store holds {stray.key}, written by "
                                     f"{stray.robot} after its revocation")  # fmt: skip
                digests.append(digest(stored))
        if self.revoked is not None:
            gone = self.robots[self.revoked]
            async with Peer.open(gone.path) as stored:  # what the owner wrote since: never
                for write in self.owners_later:
                    if stored.preference(write.user, write.key) is not None:
                        leaks.append(f"{gone.name}, revoked, holds {write.key}, written by "
                                     f"{OWNER} after the revocation")  # fmt: skip
            state = enrolment.load(gone.path)
            assert state is not None, "a robot of the household has credentials"
            for scope, epoch in sorted(self.epochs.items()):
                held = state.keyring.newest_held(scope)  # a scope key or any user's data key
                if held >= epoch:
                    leaks.append(f"{self.revoked}, revoked, holds a key of {scope} epoch {held} "
                                 f"(its revocation started {epoch})")  # fmt: skip
        self._note("killed every robot and read back its store")
        return digests

    async def _value(self, robot: Robot, write: Write) -> object:
        answer = await robot.ask(f"get {write.user} {write.key}")
        prefix = f"VALUE {write.user} {write.key} "
        if not answer.startswith(prefix):
            raise RobotProcessError(f"{robot.name} answered {answer!r} to get")
        return json.loads(answer.removeprefix(prefix))

    async def _digest(self, robot: Robot) -> str:
        answer = await robot.ask("digest")
        if not answer.startswith("DIGEST "):
            raise RobotProcessError(f"{robot.name} answered {answer!r} to digest")
        return answer.removeprefix("DIGEST ")

    async def _expect(self, robot: Robot, command: str, expected: str, wait_s: float = 0) -> None:
        answer = await robot.ask(command, wait_s)
        if answer != expected:
            raise RobotProcessError(f"{robot.name} answered {answer!r} to {command.split()[0]}")

    async def shutdown(self) -> None:
        """Heal first (a robot shutting down behind a cut would wait out its close handshake),
        then SIGTERM every robot at once, SIGKILL the slow ones."""
        for proxy in self.proxies.values():
            proxy.heal()
        if self.lan is not None:
            with contextlib.suppress(HearthError):
                await self.lan.heal()
        codes = await asyncio.gather(
            *(robot.stop() for robot in self.robots.values()), return_exceptions=True
        )  # one robot failing to stop must not leave the others running
        unclean = {n: c for n, c in zip(self.robots, codes, strict=True) if c not in (0, None)}
        if unclean:
            self.log(f"robots that did not stop cleanly: {unclean}")


def _stored_remnants(path: Path, user: str) -> list[str]:
    """What the store and credentials in ``path`` hold of ``user``, forgotten, as a killed
    robot left them: read-only, not as a store (opening it as a `Peer` would finish a purge cut
    short, and hide that it was).  See `hearthsync.forgetting` for what a purge deletes."""
    found = [
        f"store holds {count} {what} of {user}"
        for what, count in rows_of_subject(path / DB_FILE, user).items()
        if count
    ]
    if read_meta(path / DB_FILE, PURGED.format(user=user)) != "1":
        found.append(f"store does not record a finished purge of {user}")
    state = enrolment.load(path)
    if state is not None and not state.keyring.is_forgotten(user):
        found.append(f"credentials hold the data keys of {user}")
    return found
