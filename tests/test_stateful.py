"""A peer behaves like a plain in-memory model, across compactions and restarts (Hypothesis).

Hypothesis drives one peer through random sequences of writes (preferences with conditions,
deletions, events over several months, placements, calibration, bursts of concurrent writes
that share a group commit), compactions, wall-clock jumps (also backwards) and close/reopen
cycles, and after every step compares everything the peer reads back with a model made of
dicts and lists.  A reopen must also give back every document bit for bit: same state vector,
same client id, same content.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pycrdt import Doc

from hearthsync.crdt.handles import ROOTS
from hearthsync.errors import NotFoundError
from hearthsync.model import Condition
from hearthsync.peer import HISTORY, Peer
from tests.conftest import MONDAY_MS, FakeWall

T = TypeVar("T")
DAY = 86_400_000

USERS = ("alice", "bob")
KEYS = ("beverage/coffee", "beverage/tea", "music/genre")
CONDITIONS = (
    None,
    Condition(days="weekday"),
    Condition(days="weekend"),
    Condition(location="kitchen", after="06:00", before="10:00"),
)
OBJECTS = ("green-mug", "keys", "remote")
REGIONS = ("shelf-1", "shelf-2", "sink", None)
CALIBRATION = ("proactivity", "verbosity", "pace", "personal_space_m")
CALIBRATION_DEFAULTS = {"proactivity": 0.5, "verbosity": 0.5, "pace": 0.5, "personal_space_m": 0.8}

json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.text(max_size=12),
    st.lists(st.integers(0, 9), max_size=3),
)
users = st.sampled_from(USERS)
conditions = st.sampled_from(CONDITIONS)
# explicit event times over three months (so three monthly documents), or the wall clock
event_times = st.one_of(
    st.none(),
    st.sampled_from((-40 * DAY, 0, 3, 35 * DAY)).map(lambda offset: MONDAY_MS + offset),
)
unit = st.floats(0.0, 1.0, allow_nan=False)
calibrations = st.fixed_dictionaries(
    {},
    optional={
        "proactivity": unit,
        "verbosity": unit,
        "pace": unit,
        "personal_space_m": st.floats(0.0, 5.0, allow_nan=False),
    },
).filter(bool)  # a change names at least one field
words = st.lists(st.sampled_from(("oat", "latte", "jazz", "lamp", "mug", "tea")), max_size=4)


def cond_key(condition: Condition | None) -> str:
    return (condition or Condition()).key()


def decode_state_vector(raw: bytes) -> dict[int, int]:
    """A Yrs v1 state vector as {client id: clock}, independent of encoding order."""
    pos = 0

    def varuint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    return {varuint(): varuint() for _ in range(varuint())}


def documents(peer: Peer) -> dict[str, tuple[int, str, dict[int, int], dict[str, Any]]]:
    """Every non-empty document: client id, lineage, state vector and decoded content."""
    found = {}
    for doc_id, replica in peer._docs.replicas.items():
        state = decode_state_vector(replica.state_vector())
        if not state:
            continue  # created in memory by a read, never written: nothing to persist
        mirror: Doc[Any] = Doc()
        mirror.apply_update(replica.encode_state())
        content = {
            name: mirror.get(name, type=kind).to_py() for name, kind in ROOTS[replica.info.kind]
        }
        found[doc_id] = (replica.client_id, replica.lineage, state, content)
    return found


class PeerMachine(RuleBasedStateMachine):
    """One peer in a fresh folder, driven on a private event loop, checked against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "robot"
        self.wall = FakeWall()
        self.rng = random.Random(7)  # one stream across reopens: ids are never replayed
        self.peer: Peer | None = None
        # the model
        self.prefs: dict[tuple[str, str, str], Any] = {}  # (user, key, condition key) -> value
        self.conditions: dict[str, Condition] = {cond_key(c): c or Condition() for c in CONDITIONS}
        self.events: dict[str, list[tuple[int, int, str, str]]] = {u: [] for u in USERS}
        self.placed: dict[str, tuple[str, str | None]] = {}  # object -> (label, region)
        self.changes: list[tuple[str, str | None, str | None]] = []
        self.calibration = {u: dict(CALIBRATION_DEFAULTS) for u in USERS}
        self.writes = 0  # orders events written with the same ts (their HLC must agree)

    def run(self, work: Awaitable[T] | Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` on the loop; a callable is called there (writes need a running loop)."""

        async def go() -> T:
            return await (work() if callable(work) else work)

        return self.loop.run_until_complete(go())

    @property
    def p(self) -> Peer:
        assert self.peer is not None
        return self.peer

    @initialize()
    def open_peer(self) -> None:
        self.peer = self.run(self._start(device="kitchen"))
        for user in USERS:
            self.run(self.p.add_user(user, name=user.title()))

    async def _start(self, device: str | None = None) -> Peer:
        return await Peer.start(
            self.path, device=device, wall=self.wall, rng=self.rng, synchronous="NORMAL"
        )

    def teardown(self) -> None:
        try:
            if self.peer is not None:
                self.run(self.peer.close())
        finally:
            self.loop.close()
            self.tmp.cleanup()

    # ------------------------------------------------------------------ writes

    def _set_pref(self, user: str, key: str, condition: Condition | None, value: Any) -> Any:
        self.prefs[user, key, cond_key(condition)] = value
        return lambda: self.p.set_preference(user, key, value, condition=condition)

    def _record(self, user: str, domain: str, text: str, ts: int | None) -> Any:
        async def write() -> None:
            event = await self.p.record_event(user, "COMMAND", domain, text=text, ts=ts)
            self.events[user].append((event.ts, order, event.id, text))

        self.writes += 1
        order = self.writes
        return write

    def _place(self, obj: str, region: str | None) -> Any:
        before = self.placed.get(obj)
        if before is None or before[1] != region:
            self.changes.append((obj, before[1] if before else None, region))
        self.placed[obj] = (f"the {obj}", region)
        return lambda: self.p.place(obj, f"the {obj}", region=region)

    @rule(user=users, key=st.sampled_from(KEYS), condition=conditions, value=json_values)
    def set_preference(self, user: str, key: str, condition: Condition | None, value: Any) -> None:
        self.run(self._set_pref(user, key, condition, value))

    @precondition(lambda self: bool(self.prefs))
    @rule(data=st.data())
    def delete_preference(self, data: st.DataObject) -> None:
        user, key, ckey = data.draw(st.sampled_from(sorted(self.prefs)))
        del self.prefs[user, key, ckey]
        self.run(lambda: self.p.delete_preference(user, key, self.conditions[ckey]))

    @rule(user=users, key=st.sampled_from(KEYS), condition=conditions)
    def delete_absent_preference(self, user: str, key: str, condition: Condition | None) -> None:
        if (user, key, cond_key(condition)) in self.prefs:
            return
        with pytest.raises(NotFoundError):
            self.run(lambda: self.p.delete_preference(user, key, condition))

    @rule(user=users, domain=st.sampled_from(("beverage", "music")), text=words, ts=event_times)
    def record_event(self, user: str, domain: str, text: list[str], ts: int | None) -> None:
        self.run(self._record(user, domain, " ".join(text), ts))

    @rule(obj=st.sampled_from(OBJECTS), region=st.sampled_from(REGIONS))
    def place(self, obj: str, region: str | None) -> None:
        self.run(self._place(obj, region))

    def _calibrate(self, user: str, fields: dict[str, float]) -> Any:
        self.calibration[user].update(fields)
        return lambda: self.p.set_calibration(user, **fields)

    @rule(user=users, fields=calibrations)
    def set_calibration(self, user: str, fields: dict[str, float]) -> None:
        self.run(self._calibrate(user, fields))

    @rule(
        ops=st.lists(
            st.one_of(
                st.tuples(st.just("pref"), users, st.sampled_from(KEYS), conditions, json_values),
                st.tuples(st.just("event"), users, words, event_times),
                st.tuples(st.just("place"), st.sampled_from(OBJECTS), st.sampled_from(REGIONS)),
                st.tuples(st.just("calibrate"), users, calibrations),
            ),
            min_size=2,
            max_size=8,
        )
    )
    def burst(self, ops: list[tuple[Any, ...]]) -> None:
        """Concurrent writes, several to one document, committed by one group commit.

        Moves of one object and calibration changes read the current value: inside the batch
        they must see the writes queued before them, as if the calls had run one by one.
        """
        writes = []
        for op in ops:
            if op[0] == "pref":
                writes.append(self._set_pref(*op[1:]))
            elif op[0] == "event":
                writes.append(self._record(op[1], "burst", " ".join(op[2]), op[3]))
            elif op[0] == "place":
                writes.append(self._place(*op[1:]))
            else:
                writes.append(self._calibrate(*op[1:]))
        batches = self.p._docs.batches_committed

        async def together() -> None:
            await asyncio.gather(*(write() for write in writes))  # queued in list order

        self.run(together())
        assert self.p._docs.batches_committed - batches == 1, "one group commit for the burst"

    @rule(ms=st.integers(-120_000, 2 * DAY))
    def move_wall_clock(self, ms: int) -> None:
        """Robot clocks drift and get corrected, also backwards; the HLC must not."""
        self.wall.advance(ms)

    @rule()
    def compact(self) -> None:
        self.run(self.p.compact())
        status = self.run(self.p.status())
        assert status.corrupt == {}
        assert [d.doc_id for d in status.documents if d.log_entries] == []

    @rule()
    def reopen(self) -> None:
        before = documents(self.p)
        self.run(self.p.close())
        self.peer = None
        self.peer = self.run(self._start())
        assert self.p.corrupt == {}
        assert documents(self.p) == before

    @precondition(lambda self: any(self.events.values()))
    @rule(data=st.data())
    def recall(self, data: st.DataObject) -> None:
        """Every event is indexed exactly once (in the graph or staged for it) and recall
        finds it by its own words."""
        user = data.draw(st.sampled_from([u for u in USERS if self.events[u]]))
        wanted = {event_id for _, _, event_id, _ in self.events[user]}
        *_, text = data.draw(st.sampled_from(self.events[user]))
        hits = self.run(self.p.recall(user, text or "beverage", k=len(wanted)))
        assert {hit.event.id for hit in hits} == wanted
        index = self.run(self.p._vectors.open_index(user, HISTORY))
        assert index.count + index.pending == len(wanted)

    # ------------------------------------------------------------------ the model

    @invariant()
    def reads_match_the_model(self) -> None:
        if self.peer is None:
            return
        peer = self.p
        assert peer.users() == sorted(USERS)
        for user in USERS:
            live = {(pref.key, pref.condition.key()): pref.value for pref in peer.preferences(user)}
            assert live == {(k, c): v for (u, k, c), v in self.prefs.items() if u == user}
            for key in KEYS:
                for condition in CONDITIONS:
                    found = peer.preference(user, key, condition)
                    slot = (user, key, cond_key(condition))
                    assert (found.value if found else None, found is not None) == (
                        self.prefs.get(slot),
                        slot in self.prefs,
                    )
            model_events = sorted(self.events[user])
            got = peer.events(user)
            assert [(e.id, e.text) for e in got] == [(i, t) for _, _, i, t in model_events]
            assert [e.ts for e in got] == [ts for ts, _, _, _ in model_events]
            calibration = peer.calibration(user)
            assert {f: getattr(calibration, f) for f in CALIBRATION} == self.calibration[user]
        placements = {p.object: (p.label, p.region) for p in peer.placements()}
        assert placements == self.placed
        for obj in OBJECTS:
            found_place = peer.placement(obj)
            got_place = (found_place.label, found_place.region) if found_place else None
            assert got_place == self.placed.get(obj)
        changes = [(c.object, c.from_region, c.to_region) for c in peer.spatial_changes()]
        assert changes == self.changes


PeerMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,  # shrink one failure well rather than several slowly
)
# Passing takes ~15 s; a failure is shrunk for up to Hypothesis's own 5 minutes, so leave it
# the time to report a minimal example instead of being cut off by the suite's timeout.
TestPeerMatchesTheModel = pytest.mark.timeout(600)(PeerMachine.TestCase)


# ---------------------------------------------------------------------- found by the machine
# Minimal forms of two failures the machine found in bursts (reads inside a group commit saw
# the state before the batch): pinned as plain examples.


async def test_two_moves_in_one_group_commit_keep_the_history(peer: Peer) -> None:
    await peer.place("green-mug", "Green mug", region="shelf-0")
    await asyncio.gather(
        peer.place("green-mug", "Green mug", region="shelf-1"),
        peer.place("green-mug", "Green mug", region="shelf-2"),
    )
    moves = [(c.from_region, c.to_region) for c in peer.spatial_changes("green-mug")]
    assert moves == [(None, "shelf-0"), ("shelf-0", "shelf-1"), ("shelf-1", "shelf-2")]


async def test_concurrent_calibration_changes_both_survive(peer: Peer) -> None:
    await asyncio.gather(
        peer.set_calibration("alice", proactivity=0.1),
        peer.set_calibration("alice", verbosity=0.9),
    )
    calibration = peer.calibration("alice")
    assert (calibration.proactivity, calibration.verbosity) == (0.1, 0.9)


async def test_recall_and_events_agree_on_the_time_window(peer: Peer) -> None:
    first = await peer.record_event("alice", "COMMAND", "beverage", text="tea", ts=MONDAY_MS)
    await peer.record_event("alice", "COMMAND", "beverage", text="tea", ts=MONDAY_MS + 1000)
    window = {"since": MONDAY_MS, "until": MONDAY_MS + 1000}
    assert [e.id for e in peer.events("alice", **window)] == [first.id]
    hits = await peer.recall("alice", "tea", k=5, **window)
    assert [hit.event.id for hit in hits] == [first.id]
