"""The resolution rules, one by one, then as properties (Hypothesis).

The pure properties drive `resolve` with generated records and feedback; the peer properties
write through real peers and deliver their updates in generated orders.
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearthsync import Condition, Peer
from hearthsync.context import feedback, get_context
from hearthsync.context.feedback import Signal, signal_of
from hearthsync.context.resolve import Candidate, resolve
from hearthsync.context.situation import Situation, holds
from hearthsync.hlc import Timestamp
from hearthsync.model.records import InteractionEvent, Preference
from tests.conftest import MONDAY_MS, FakeWall
from tests.context.conftest import DAY, at, clock

KEY = "tea/mug"
DEVICES = ("AAAAAAAA", "BBBBBBBB", "CCCCCCCC")
VALUES = ("green-mug", "blue-mug", "red-mug")
SOURCES = ("explicit", "correction", "implicit", "learned")
CONDITIONS = (
    Condition(),
    Condition(days="weekday"),
    Condition(days="weekend"),
    Condition(after="18:00"),
    Condition(location="kitchen"),
    Condition(with_users=("bob",)),
)
MOMENTS = (  # Monday breakfast, Saturday evening in the kitchen with Bob, Sunday noon
    Situation(at(clock(0, "07:30"))),
    Situation(at(clock(5, "19:00")), "kitchen", frozenset({"bob"})),
    Situation(at(clock(6, "12:00")), "office"),
)


def hlc(ms: int, device: str, counter: int = 0) -> str:
    return str(Timestamp(ms, counter, device))


def pref(
    value: str,
    *,
    ms: int,
    device: str = DEVICES[0],
    source: str = "explicit",
    condition: Condition | None = None,
    confidence: float = 0.9,
) -> Preference:
    return Preference(
        user="alice",
        key=KEY,
        value=value,
        source=source,  # type: ignore[arg-type]
        confidence=confidence,
        condition=condition or Condition(),
        set_at=hlc(ms, device),
        device=device,
    )


def kept(value: str, *, ms: int, n: int = 0, outcome: str = "kept", key: str = KEY) -> Signal:
    event = InteractionEvent(
        id=f"ev-{ms:012x}{n:020x}",
        user="alice",
        type="FEEDBACK_IMPLICIT",
        domain=key.partition("/")[0],
        payload={"key": key, "value": value, "outcome": outcome},
        ts=ms,
        hlc=hlc(ms, DEVICES[0], n),
        device=DEVICES[0],
    )
    signal = signal_of(event)
    assert signal is not None
    return signal


def value_of(records: Sequence[Preference], now: Situation, signals: Sequence[Signal] = ()) -> Any:
    resolved = resolve(KEY, [Candidate.of(r) for r in records], now, signals)
    return resolved.value if resolved else None


MONDAY = MOMENTS[0]

# ----------------------------------------------------------------------- the rules


def test_an_explicit_correction_beats_a_newer_more_confident_learned_pattern() -> None:
    records = [
        pref("green-mug", ms=MONDAY_MS, source="correction", confidence=0.6),
        pref("blue-mug", ms=MONDAY_MS + DAY, source="learned", confidence=1.0, device=DEVICES[1]),
    ]

    resolved = resolve(KEY, [Candidate.of(r) for r in records], MONDAY)

    assert resolved is not None
    assert resolved.value == "green-mug"
    assert resolved.rule == "an explicit statement beats a learned pattern; applies always"
    assert [(a.value, a.reason) for a in resolved.set_aside] == [
        ("blue-mug", "a learned pattern; an explicit statement beats it")
    ]


def test_among_explicit_values_the_newest_statement_wins_not_the_newest_write() -> None:
    stated_first = pref("green-mug", ms=MONDAY_MS, device=DEVICES[0])
    # a consolidated copy, written later by another robot, of the first statement
    copy = stated_first.model_copy(
        update={
            "set_at": hlc(MONDAY_MS + 3 * DAY, DEVICES[2]),
            "device": DEVICES[2],
            "evidence": (f"hearth:stated={stated_first.set_at}",),
        }
    )
    stated_later = pref("blue-mug", ms=MONDAY_MS + DAY, device=DEVICES[1])

    assert value_of([stated_first, copy, stated_later], MONDAY) == "blue-mug"
    assert value_of([stated_first, copy], MONDAY) == "green-mug"


def test_conditions_select_and_a_newer_general_statement_covers_older_specific_ones() -> None:
    weekday = pref("oat latte", ms=MONDAY_MS, condition=Condition(days="weekday"))
    weekend = pref("cortado", ms=MONDAY_MS, condition=Condition(days="weekend"))
    saturday = MOMENTS[1]

    assert value_of([weekday, weekend], MONDAY) == "oat latte"
    assert value_of([weekday, weekend], saturday) == "cortado"
    anything = pref("espresso", ms=MONDAY_MS + DAY)
    assert value_of([weekday, weekend, anything], saturday) == "espresso"
    assert value_of([weekday], saturday) is None


def test_confirmations_raise_confidence_contradictions_lower_it_and_age_decays_it() -> None:
    record = pref("green-mug", ms=MONDAY_MS, source="correction", confidence=0.95)
    now = Situation(at(MONDAY_MS + DAY))

    def confidence(*signals: Signal, when: Situation = now) -> float:
        resolved = resolve(KEY, [Candidate.of(record)], when, signals)
        assert resolved is not None
        return resolved.confidence

    day2 = MONDAY_MS + DAY
    assert confidence(kept("green-mug", ms=day2)) == 0.98  # seed §4: 0.95 -> 0.98
    assert confidence(kept("green-mug", ms=day2), kept("green-mug", ms=day2, n=1)) == 0.992
    assert confidence(kept("green-mug", ms=day2, outcome="refused")) < 0.95 * 0.8 + 0.01
    # a year without evidence: half-life 90 days towards 0.5
    year_later = Situation(at(MONDAY_MS + 365 * DAY))
    assert confidence(when=year_later) == pytest.approx(0.5 + 0.45 * 0.5 ** (365 / 90), abs=1e-4)


def test_feedback_counts_only_where_the_condition_held() -> None:
    weekday = pref("oat latte", ms=MONDAY_MS, condition=Condition(days="weekday"))
    saturday_ms = clock(5, "08:00")

    chose_cortado_on_saturday = kept("cortado", ms=saturday_ms, outcome="chose")
    resolved = resolve(KEY, [Candidate.of(weekday)], MOMENTS[0], [chose_cortado_on_saturday])

    assert resolved is not None
    assert resolved.contradictions == 0


# ----------------------------------------------------------------------- pure properties


@st.composite
def stored(draw: st.DrawFn) -> list[Preference]:
    """Up to eight stored versions, each (time, device) unique, as hybrid clocks guarantee."""
    stamps = draw(
        st.lists(
            st.tuples(st.integers(0, 30 * DAY), st.sampled_from(DEVICES)),
            min_size=1,
            max_size=8,
            unique=True,
        )
    )
    return [
        pref(
            draw(st.sampled_from(VALUES)),
            ms=MONDAY_MS + offset,
            device=device,
            source=draw(st.sampled_from(SOURCES)),
            condition=draw(st.sampled_from(CONDITIONS)),
            confidence=draw(st.floats(0.05, 1.0)),
        )
        for offset, device in stamps
    ]


@st.composite
def evidence(draw: st.DrawFn) -> list[Signal]:
    picks = draw(
        st.lists(
            st.tuples(
                st.integers(0, 40 * DAY),
                st.sampled_from(VALUES),
                st.sampled_from(("kept", "refused", "chose")),
            ),
            max_size=10,
        )
    )
    return [
        kept(value, ms=MONDAY_MS + offset, n=i, outcome=outcome)
        for i, (offset, value, outcome) in enumerate(picks)
    ]


@given(stored(), evidence(), st.sampled_from(MOMENTS), st.data())
def test_a_newer_explicit_correction_always_wins(
    records: list[Preference], signals: list[Signal], now: Situation, data: st.DataObject
) -> None:
    newest = max(int(r.set_at.split(".")[0]) for r in records)
    condition = data.draw(st.sampled_from([c for c in CONDITIONS if holds(c, now)]))
    fix = pref(
        "yellow-mug",
        ms=newest + 1,
        device=data.draw(st.sampled_from(DEVICES)),
        source="correction",
        condition=condition,
        confidence=data.draw(st.floats(0.05, 1.0)),
    )

    resolved = resolve(KEY, [Candidate.of(r) for r in [*records, fix]], now, signals)

    assert resolved is not None
    assert resolved.value == "yellow-mug"
    assert resolved.provenance.hlc == fix.set_at


@given(stored(), evidence(), st.sampled_from(MOMENTS), st.randoms(use_true_random=False))
def test_resolution_does_not_depend_on_the_order_records_and_events_arrive_in(
    records: list[Preference], signals: list[Signal], now: Situation, rnd: random.Random
) -> None:
    candidates = [Candidate.of(r) for r in records]
    shuffled_candidates, shuffled_signals = candidates[:], signals[:]
    rnd.shuffle(shuffled_candidates)
    rnd.shuffle(shuffled_signals)

    assert resolve(KEY, shuffled_candidates, now, shuffled_signals) == resolve(
        KEY, candidates, now, signals
    )


@given(stored(), evidence(), st.sampled_from(MOMENTS), st.integers(0, 40 * DAY))
def test_feedback_about_a_value_nobody_stored_changes_nothing(
    records: list[Preference], signals: list[Signal], now: Situation, offset: int
) -> None:
    candidates = [Candidate.of(r) for r in records]
    unrelated = kept("purple-mug", ms=MONDAY_MS + offset, n=99, outcome="kept")

    assert resolve(KEY, candidates, now, [*signals, unrelated]) == resolve(
        KEY, candidates, now, signals
    )


# ----------------------------------------------------------------------- properties on peers

# (robot, what, value, condition index, minutes later): writes of a generated story
Op = tuple[int, str, str, int, int]
OPS = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from(("explicit", "correction", "learned", "kept", "refused", "chose")),
        st.sampled_from(VALUES),
        st.integers(0, 2),
        st.integers(1, 600),
    ),
    min_size=1,
    max_size=8,
)
PEER_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


async def _write(peer: Peer, op: Op) -> None:
    _, what, value, condition, _ = op
    if what in ("kept", "refused", "chose"):
        await feedback(peer, "alice", KEY, value, what)  # type: ignore[arg-type]
    else:
        await peer.set_preference("alice", KEY, value, source=what, condition=CONDITIONS[condition])


async def _robots(
    folder: Path, skew_ms: int, deltas: list[tuple[str, bytes]] | None = None
) -> list[tuple[Peer, FakeWall]]:
    """Two robots whose clocks differ by ``skew_ms``, each knowing Alice; every durable delta
    goes to ``deltas``."""
    robots = []
    for i, name in enumerate(("kitchen", "hall")):
        wall = FakeWall(MONDAY_MS + i * skew_ms)
        peer = await Peer.start(
            folder / name, device=name, wall=wall, rng=random.Random(i), synchronous="OFF"
        )
        if deltas is not None:
            peer.on_durable(lambda batch: deltas.extend((d, u) for d, u, _ in batch))
        await peer.add_user("alice", name="Alice")
        robots.append((peer, wall))
    return robots


async def _replica(
    folder: Path, name: str, deltas: Sequence[tuple[str, bytes]], writers: Sequence[Peer]
) -> Peer:
    """A third robot that receives ``deltas`` in the given order, then catches up from each
    writer by state vector, as a session's anti-entropy step does.  (Yrs leaves an update that
    arrives before the ones it depends on pending, sometimes for good: the catch-up heals it.)"""
    peer = await Peer.start(folder / name, device=name, rng=random.Random(9), synchronous="OFF")
    for doc_id, delta in deltas:
        await peer.apply_update(doc_id, delta)
    for writer in writers:
        for doc_id in writer.document_ids():
            await peer.apply_update(doc_id, writer.diff(doc_id, peer.state_vector(doc_id)))
    return peer


async def _preferences_seen(peer: Peer, moment: dt.datetime) -> object:
    context = await get_context(peer, "alice", task="general_assistant", time=moment)
    return context.preferences


@PEER_SETTINGS
@given(OPS, st.integers(-3_600_000, 3_600_000), st.randoms(use_true_random=False))
async def test_robots_resolve_the_same_however_updates_arrive(
    ops: list[Op], skew_ms: int, rnd: random.Random
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        deltas: list[tuple[str, bytes]] = []
        robots = await _robots(folder, skew_ms, deltas)
        opened = [peer for peer, _ in robots]
        try:  # every store is closed whatever fails: an open one's thread outlives the process
            for op in ops:
                peer, wall = robots[op[0]]
                wall.advance(op[4] * 60_000)
                await _write(peer, op)
            shuffled = deltas[:]
            rnd.shuffle(shuffled)
            writers = [peer for peer, _ in robots]
            in_order = await _replica(folder, "one", deltas, writers)
            opened.append(in_order)
            out_of_order = await _replica(folder, "two", shuffled, writers)
            opened.append(out_of_order)
            moment = at(MONDAY_MS + 2 * DAY)
            stated = [op for op in ops if op[1] in SOURCES and CONDITIONS[op[3]].days != "weekend"]
            seen = await _preferences_seen(in_order, moment)  # a Wednesday
            assert len(seen) == (1 if stated else 0)  # type: ignore[arg-type]
            assert seen == await _preferences_seen(out_of_order, moment)
        finally:
            for peer in opened:
                await peer.close()


@PEER_SETTINGS
@given(OPS, st.sampled_from(("kept", "refused", "chose")))
async def test_an_event_about_something_else_never_changes_a_result(
    ops: list[Op], outcome: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        robots = await _robots(Path(tmp), 0)
        peer, wall = robots[0]
        try:
            for op in ops:
                wall.advance(op[4] * 60_000)
                await _write(peer, op)
            moment = at(wall.ms + 1)
            before = await _preferences_seen(peer, moment)
            await feedback(peer, "alice", "beverage/coffee", "cortado", outcome)  # type: ignore[arg-type]
            await peer.record_event("alice", "COMMAND", "tea", text="tea please, the usual")
            assert await _preferences_seen(peer, moment) == before
        finally:
            for robot, _ in robots:
                await robot.close()
