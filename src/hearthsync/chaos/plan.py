"""What one chaos schedule will do, drawn from its seed before anything runs.

A schedule is a `Plan`: the household (how many robots, which scopes each may read), the
writes each robot makes and when, and the faults injected and when.  Drawing the whole plan up
front from its own random stream means that removing a fault from it (to find a smaller trace
that still fails) leaves every write where it was.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

#: every fault the simulation can inject ("relay", an outage of the cloud relay, joins once the
#: relay exists; a partition's heal is the end of the partition)
FAULT_KINDS = ("partition", "drop", "duplicate", "reorder", "delay", "crash", "skew", "revoke")
#: every kind of write a robot makes ("forget": a user added during the run is forgotten,
#: household-wide)
OP_KINDS = ("pref", "profile", "calibration", "move", "event", "user", "health", "forget")
SCOPES = ("core", "health", "history", "household", "spatial")
DEFAULT_FAULT_RATE = 0.25
#: the largest schedule a scenario may ask for: the plan is drawn whole before it runs, and
#: ``--edits 100000000`` or ``--duration 1e300`` drew until the machine ran out of memory
MAX_EDITS = 100_000  #: writes per robot
MAX_DURATION_S = 86_400.0  #: a simulated day (its heartbeats alone take about a minute)
MAX_FAULTS = 100_000  #: ``fault_rate * duration``, the faults drawn
#: revocations in one schedule, at most (each by the owner, of another robot)
MAX_REVOCATIONS = 2
#: users every robot knows from the start, and users a robot may create during the run
FIRST_USERS = ("alice", "bob")
LATER_USERS = ("carol", "dan")
PREF_KEYS = ("beverage/coffee", "tea/mug", "light/level")
OBJECTS = ("mug-green", "keys", "remote")
REGIONS = ("shelf-1", "shelf-2", "table", "sink")

DEFAULT_MIX: Mapping[str, float] = MappingProxyType(
    {
        "pref": 0.36, "profile": 0.08, "calibration": 0.1, "move": 0.17, "event": 0.2,
        "user": 0.04, "health": 0.05, "forget": 0.01,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scenario:
    """The knobs of a chaos run; every schedule of the run draws its plan from them."""

    peers: int | None = None  #: robots per schedule; None: 3 to 7, drawn from each seed
    edits: int = 50  #: writes per robot
    duration: float = 30.0  #: simulated seconds during which writes and faults happen
    faults: tuple[str, ...] = FAULT_KINDS
    fault_rate: float = DEFAULT_FAULT_RATE  #: faults started per simulated second, in all
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    latency: tuple[float, float] = (0.001, 0.02)  #: one-way, seconds
    commit_delay: tuple[float, float] = (0.001, 0.01)  #: from a write to its group commit
    max_skew: float = 2.0  #: each robot's wall clock starts up to this far from true time
    settle_limit: float = 300.0  #: simulated seconds allowed to converge after the heal
    #: a deliberately broken build, to prove the checkers catch it (`BUGS`); None: none
    bug: str | None = None
    #: the scopes of each robot after the owner (robot 0, which holds every scope): your own
    #: household, e.g. ``(("core", "history", "spatial"), ("core", "spatial"))`` for a kitchen
    #: robot and a hall robot that may read neither health nor history.  "household" is
    #: implied, as an invite implies it.  None: drawn per seed (a robot in four misses a scope)
    scopes: tuple[tuple[str, ...], ...] | None = None
    #: robot 1 is an admin (it makes keys and grants them, as the owner does, and holds every
    #: scope); None: drawn per seed, in half the schedules of three robots or more, unless
    #: ``scopes`` are given
    admin: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mix", dict(self.mix))  # a plain dict: it goes to workers
        if self.scopes is not None:
            if self.peers is not None and self.peers != len(self.scopes) + 1:
                raise ValueError(f"peers={self.peers}, but scopes are given for "
                                 f"{len(self.scopes)} robots besides the owner")  # fmt: skip
            unknown_scopes = {s for robot in self.scopes for s in robot} - set(SCOPES)
            if unknown_scopes:
                raise ValueError(f"unknown scopes {sorted(unknown_scopes)}; known: {SCOPES}")
        peers = self.peers if self.scopes is None else len(self.scopes) + 1
        if peers is not None and not 2 <= peers <= 16:
            raise ValueError(f"peers must be 2 to 16, not {peers}")
        if not (math.isfinite(self.duration) and math.isfinite(self.fault_rate)):
            raise ValueError("duration and fault_rate must be finite numbers")
        if self.edits < 0 or self.duration <= 0 or self.fault_rate < 0:
            raise ValueError("edits, duration and fault_rate must not be negative")
        if self.edits > MAX_EDITS or self.duration > MAX_DURATION_S:
            raise ValueError(f"a schedule has at most {MAX_EDITS} writes per robot and lasts "
                             f"at most {MAX_DURATION_S:.0f} simulated seconds")  # fmt: skip
        if self.fault_rate * self.duration > MAX_FAULTS:
            raise ValueError(f"a schedule draws at most {MAX_FAULTS} faults "
                             "(fault_rate * duration)")  # fmt: skip
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if set(self.mix) - set(OP_KINDS) or not any(w > 0 for w in self.mix.values()):
            raise ValueError(f"mix must weigh some of {OP_KINDS}")
        # drawn with `random.choices`, which raises on a total that is not finite (a
        # traceback from the plan's draw, found in review) and skips a weight below 0
        if not math.isfinite(sum(self.mix.values())):
            raise ValueError("mix weights must be finite, and add up to a finite number")
        if any(w < 0 for w in self.mix.values()):
            raise ValueError("mix weights must not be negative")
        if self.admin and peers is not None and peers < 2:
            raise ValueError("an admin needs a robot besides the owner")
        if self.bug is not None and self.bug not in BUGS:
            raise ValueError(f"unknown bug {self.bug!r}; known: {sorted(BUGS)}")


#: a crash longer than this is a power cut that drained the clock of a robot with no clock
#: battery: it restarts reading 1970, until the heal (when NTP answers) sets its clock
CLOCK_RESET_AFTER_S = 10.0


#: a clock jump (drawn from -30 to 30 s) above this one also leaps `GLITCH_AHEAD_S` ahead: a
#: clock that glitched days ahead, whose stamps every other robot's clock refuses to follow
#: (`hlc.MAX_AHEAD_MS`), while their writes must still overtake the versions it stamped
GLITCH_DRAW = 24.0
GLITCH_AHEAD_S = 3 * 86_400.0


#: deliberately broken builds (for testing the harness itself)
BUGS = {
    "lose-every-10th-commit": "every tenth delta committed is acknowledged but never stored",
    "drop-every-10th-delta": "every tenth update received is merged, acknowledged, then lost",
    "drop-merged-values": "profile and calibration changes are stamped but store defaults",
    "forget-an-extra-user": "forgetting anyone forgets bob as well",
    "refuse-every-preference": "every preference write fails as about an unknown user",
    "keep-forgotten-rows": "a forgotten user's documents stay in the store",
    "never-scrub-after-forgetting": "a purge stops silently before the vacuum and its end",
    "keep-forgotten-embeddings": "a purge leaves the embedding rows, and records its end",
    "purge-a-revoked-robots-writes": "learning a revocation deletes the revoked robot's writes",
    "seal-under-the-oldest-epoch": "a key rotation never takes effect: the oldest epoch seals",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: ``kind`` from ``at`` until ``until`` (simulated seconds)."""

    index: int
    kind: str
    at: float
    until: float
    robots: tuple[int, ...] = ()  #: whom it hits (a crash, a skew, a link's two ends, ...)
    groups: tuple[tuple[int, ...], ...] = ()  #: a partition's sides
    amount: float = 0.0  #: a probability, a delay or a clock jump, by kind

    def describe(self) -> str:
        who = "+".join(f"r{r}" for r in self.robots)
        match self.kind:
            case "partition":
                sides = " | ".join(",".join(f"r{r}" for r in g) for g in self.groups)
                what = f"partition {sides}"
            case "drop" | "duplicate":
                what = f"{self.kind} {self.amount:.0%} of messages {who or 'everywhere'}"
            case "reorder":
                what = f"reorder messages {who or 'everywhere'} (up to {self.amount * 1e3:.0f} ms)"
            case "delay":
                what = f"delay messages {who} by {self.amount:.2f} s"
            case "crash":
                what = f"crash {who}, restart after {self.until - self.at:.2f} s"
                if self.amount:
                    what += " with its clock reset to 1970"
            case "skew":
                what = f"clock of {who} jumps {self.amount:+.1f} s"
            case _:
                what = f"{self.kind} {who}"
        if self.kind in ("crash", "skew", "revoke"):
            return f"t={self.at:7.3f} #{self.index} {what}"
        return f"t={self.at:7.3f}..{self.until:7.3f} #{self.index} {what}"


@dataclass(frozen=True, slots=True)
class Op:
    """One write: robot ``robot`` makes a write of ``kind`` at ``at``; details are drawn when
    it runs (from ``seed``), since they depend on what the robot knows then."""

    index: int
    robot: int
    kind: str
    at: float
    seed: int


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    scenario: Scenario
    peers: int
    scopes: tuple[tuple[str, ...], ...]  #: per robot, the scopes its certificate grants
    ops: tuple[Op, ...]
    faults: tuple[Fault, ...]
    admins: tuple[int, ...] = ()  #: robots certified as admins (robot 0 is the owner)

    def without_faults(self, dropped: set[int]) -> Plan:
        return replace(self, faults=tuple(f for f in self.faults if f.index not in dropped))

    def only_faults(self, kept: set[int]) -> Plan:
        return replace(self, faults=tuple(f for f in self.faults if f.index in kept))


def make_plan(seed: int, scenario: Scenario) -> Plan:
    """Draw the plan of schedule ``seed`` (the same seed, the same plan, on any machine)."""
    rng = random.Random(f"hearthsync-chaos-plan-{seed}")
    if scenario.scopes is not None:
        given = [tuple(s for s in SCOPES if s in robot or s == "household")
                 for robot in scenario.scopes]  # fmt: skip
        peers, scopes = len(given) + 1, [SCOPES, *given]
    else:
        peers = scenario.peers if scenario.peers is not None else rng.randint(3, 7)
        scopes = [SCOPES]  # robot 0, the owner, holds every scope
        for _ in range(1, peers):
            if rng.random() < 0.25:  # some robots may not read health or history
                missing = rng.choice(("health", "history", "spatial"))
                scopes.append(tuple(s for s in SCOPES if s != missing))
            else:
                scopes.append(SCOPES)
    kinds = [k for k in OP_KINDS if scenario.mix.get(k, 0) > 0]
    weights = [scenario.mix[k] for k in kinds]
    ops: list[Op] = []
    for robot in range(peers):
        for _ in range(scenario.edits):
            at = rng.uniform(0.0, scenario.duration)
            ops.append(Op(0, robot, rng.choices(kinds, weights)[0], at, rng.getrandbits(32)))
    ops.sort(key=lambda op: (op.at, op.robot))
    ops = [replace(op, index=i) for i, op in enumerate(ops)]
    faults = _faults(rng, scenario, peers)
    # from a stream of its own: the writes and faults of every seed stay what they were
    admin = scenario.admin
    if admin is None:  # never in a household given robot by robot: it says what each reads
        admin = (
            scenario.scopes is None
            and peers >= 3
            and random.Random(f"hearthsync-chaos-admin-{seed}").random() < 0.5
        )
    admins = (1,) if admin else ()
    if admin:
        scopes[1] = SCOPES  # an admin grants the keys of every scope, so it holds them all
    return Plan(seed, scenario, peers, tuple(scopes), tuple(ops), tuple(faults), admins)


def _faults(rng: random.Random, scenario: Scenario, peers: int) -> list[Fault]:
    if not scenario.faults or scenario.fault_rate == 0:
        return []
    count = max(1, round(rng.gauss(scenario.fault_rate * scenario.duration, 1.0)))
    kinds = list(scenario.faults)
    revoked: list[int] = []
    faults: list[Fault] = []
    for _ in range(count):
        kind = rng.choice(kinds)
        at = rng.uniform(0.0, scenario.duration * 0.9)
        span = rng.choice((rng.uniform(0.1, 2.0), rng.uniform(2.0, 20.0)))
        until = min(at + span, scenario.duration)
        robot = rng.randrange(peers)
        other = rng.choice([r for r in range(peers) if r != robot])
        match kind:
            case "partition":
                faults.append(Fault(0, kind, at, until, groups=_groups(rng, peers)))
            case "drop" | "duplicate":
                link = () if rng.random() < 0.5 else tuple(sorted((robot, other)))
                faults.append(Fault(0, kind, at, until, link, amount=rng.uniform(0.05, 0.5)))
            case "reorder":
                link = () if rng.random() < 0.5 else tuple(sorted((robot, other)))
                faults.append(Fault(0, kind, at, until, link, amount=rng.uniform(0.01, 0.2)))
            case "delay":
                link = tuple(sorted((robot, other)))
                faults.append(Fault(0, kind, at, until, link, amount=rng.uniform(0.05, 3.0)))
            case "crash":
                down = rng.choice((rng.uniform(0.05, 1.0), rng.uniform(1.0, 15.0)))
                reset = 1.0 if down > CLOCK_RESET_AFTER_S else 0.0
                faults.append(Fault(0, kind, at, at + down, (robot,), amount=reset))
            case "skew":
                amount = rng.uniform(-30.0, 30.0)
                if amount > GLITCH_DRAW:  # one jump in ten: days ahead, too far to follow
                    amount += GLITCH_AHEAD_S
                faults.append(Fault(0, kind, at, at, (robot,), amount=amount))
            case "revoke":
                # robot 0, the owner, revokes (it alone may), at most two robots, and leaves
                # two robots at least
                if len(revoked) == MAX_REVOCATIONS or peers - len(revoked) < 3:
                    continue
                victim = (
                    rng.choice([r for r in range(1, peers) if r not in revoked])
                    if revoked else rng.randrange(1, peers)
                )  # fmt: skip
                revoked.append(victim)
                faults.append(Fault(0, kind, at, at, (victim,)))
    faults.sort(key=lambda f: (f.at, f.kind))
    return [replace(f, index=i) for i, f in enumerate(faults)]


def _groups(rng: random.Random, peers: int) -> tuple[tuple[int, ...], ...]:
    """Two or three sides (three only from four robots up), each holding at least one robot."""
    count = 3 if peers >= 4 and rng.random() < 0.3 else 2
    shuffled = rng.sample(range(peers), peers)
    cuts = sorted(rng.sample(range(1, peers), count - 1))
    bounds = [0, *cuts, peers]
    sides = [tuple(sorted(shuffled[a:b])) for a, b in itertools.pairwise(bounds)]
    return tuple(sorted(sides))
