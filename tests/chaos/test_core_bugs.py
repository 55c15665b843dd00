"""Regression tests of core bugs the chaos harness found, each the smallest reproducer.

The first two come from one root: pycrdt merges an update whose author's earlier update is
missing (a clock gap), shows its content and applies its deletions, yet its state vector does
not count it, and the delta it reports holds only the deletions.  Chaos runs meet it whenever
drops or reordering lose one update of an author while a later one arrives (directly, or
relayed by a robot that had it).  The others are about forgetting a user across a household
whose robots miss messages, restart, and have not all met.

Each failed on the core as it was when the harness found it, and passes since the core's fix
(each test names what must hold).  The forgetting ones drive a simulated household step by step
(`hearthsync.chaos.Simulation`) or replay the schedule that found them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearthsync.chaos import Fault, Op, Scenario, Simulation, TinyEmbedder, make_plan, run_schedule
from hearthsync.chaos.harness import problems
from hearthsync.chaos.plan import SCOPES
from hearthsync.crdt.replica import event_field
from hearthsync.peer import Peer
from hearthsync.protocol.session import HEARTBEAT_S

SPATIAL = "home/spatial"


@pytest.fixture
async def robots(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer, Peer]]:
    """An author, a robot that relays what it gets, and a reader: real stores."""
    embedder = TinyEmbedder()
    async with (
        Peer.open(tmp_path / "author", device="author", embedder=embedder) as author,
        Peer.open(tmp_path / "relay", device="relay", embedder=embedder) as relay,
        Peer.open(tmp_path / "reader", device="reader", embedder=embedder) as reader,
    ):
        yield author, relay, reader


def durable_deltas(peer: Peer) -> list[bytes]:
    """Every delta of the spatial document ``peer`` commits from now on (what it forwards)."""
    deltas: list[bytes] = []
    peer.on_durable(lambda batch: deltas.extend(d for doc, d, _ in batch if doc == SPATIAL))
    return deltas


async def author_moves_the_mug(author: Peer) -> list[bytes]:
    """The mug moves three times; between the first two, the keys move (the update a flaky
    link will lose)."""
    deltas = durable_deltas(author)
    await author.place("mug", "one", region="shelf")
    await author.place("keys", "gap", region="hook")
    await author.place("mug", "two", region="sink")
    await author.place("mug", "three", region="table")
    assert len(deltas) == 4
    return deltas


async def test_a_register_survives_an_update_that_only_deletes_its_value(
    robots: tuple[Peer, Peer, Peer],
) -> None:
    author, relay, reader = robots
    first, _lost, second, third = await author_moves_the_mug(author)
    relayed = durable_deltas(relay)
    for delta in (first, second, third):  # the relay never gets the keys' move
        await relay.apply_update(SPATIAL, delta)
    await reader.apply_update(SPATIAL, first)
    placed = reader.placement("mug")
    assert placed is not None
    assert placed.label == "one"
    await reader.apply_update(SPATIAL, second)  # straight from the author
    await reader.apply_update(SPATIAL, relayed[-1])  # the relay's delta of the third move
    reader.placement("mug")  # was a KeyError: the slot in the index, not in the map
    await reader.place("mug", "four", region="hall")  # was a KeyError in the group commit
    again = reader.placement("mug")
    assert again is not None
    assert again.label == "four"


async def test_content_beyond_a_clock_gap_reaches_the_other_robots(tmp_path: Path) -> None:
    """Two robots of a household got the mug's moves from a robot that is gone (revoked, say):
    r0 the first and second (the keys' move between them was lost: the second is beyond a gap
    in that author's clock), r1 only the first.  Both show the first place, which the move
    held aside overwrites, for as long as the gap lasts (deleting it then lost the mug's place
    on every robot for good: seeds 2055, 490824); the catch-up passes what is held aside on;
    once the gap fills on one of them, both show the second."""
    outsider = tmp_path / "gone"
    async with Peer.open(outsider, device="gone", embedder=TinyEmbedder()) as gone:
        first, lost, second, _ = await author_moves_the_mug(gone)
    plan = make_plan(0, Scenario(scopes=(SCOPES,), edits=0, fault_rate=0))
    sim = Simulation(plan, tmp_path / "household")
    try:
        with sim.captured_logs():
            await sim.start()  # the robots dial each other: nothing has been exchanged yet
            r0, r1 = (robot.peer for robot in sim.robots)
            assert r0 is not None
            assert r1 is not None
            for peer, updates in ((r0, (first, second)), (r1, (first,))):
                for update in updates:
                    peer.receive_update(SPATIAL, update)
                await peer.commit()
            assert r0.state_vector(SPATIAL) == r1.state_vector(SPATIAL)

            def shown() -> list[str | None]:
                assert r0 is not None
                assert r1 is not None
                return [p.label if p else None for p in (r0.placement("mug"), r1.placement("mug"))]

            assert shown() == ["one", "one"]
            assert r0.docs.digest(SPATIAL) != r1.docs.digest(SPATIAL)  # an inventory tells
            await sim.heal()
            assert await sim.settle() is not None
            assert shown() == ["one", "one"]
            held = [peer._docs.get(SPATIAL).beyond for peer in (r0, r1)]  # type: ignore[union-attr,arg-type]
            assert len(held[0]) == len(held[1]) == 1, held  # the catch-up passed it on
            assert r0.docs.digest(SPATIAL) == r1.docs.digest(SPATIAL)

            r1.receive_update(SPATIAL, lost)  # the gap fills on one of them
            await r1.commit()
            assert await sim.settle() is not None
            assert shown() == ["two", "two"]
            assert [peer._docs.get(SPATIAL).beyond for peer in (r0, r1)] == [[], []]  # type: ignore[union-attr,arg-type]
            found = problems(await sim.finish())
            assert found == [], found
    finally:
        await sim.stop()


# ------------------------------------------------------------------ forgetting, in a household


async def household(folder: Path, *faults: Fault) -> Simulation:
    """Three robots that read every scope, linked (but for ``faults``, from the start),
    knowing alice and bob."""
    plan = make_plan(0, Scenario(scopes=(SCOPES, SCOPES), edits=0, fault_rate=0))
    sim = Simulation(plan, folder)
    await sim.start()
    for fault in faults:
        sim.add_fault(fault)
    await sim.advance(1.0)
    return sim


async def verdict(sim: Simulation) -> list[str]:
    """Heal, settle, check: every problem found."""
    await sim.heal()
    await sim.settle()
    return problems(await sim.finish())


def later_users(sim: Simulation, robot: int) -> set[str]:
    peer = sim.robots[robot].peer
    assert peer is not None
    return set(peer.users()) - {"alice", "bob"}


async def test_an_owner_that_missed_a_forget_rejoins_the_household(tmp_path: Path) -> None:
    sim = await household(tmp_path)
    try:
        with sim.captured_logs():
            sim.add_op(Op(1, 1, "user", sim.now, seed=1))  # r1 adds a user...
            await sim.advance(sim.now + 2.0)
            added = later_users(sim, 0)
            assert added  # ... that every robot, the owner too, now knows
            sim.add_fault(Fault(1, "crash", sim.now, sim.now + 3.0, robots=(0,)))
            sim.add_op(Op(2, 1, "forget", sim.now + 0.5, seed=2))  # ... and forgets, r0 down
            await sim.advance(sim.now + 4.0)
            assert later_users(sim, 1) == set()
            found = await verdict(sim)
            assert found == [], found
    finally:
        await sim.stop()


async def test_a_tombstone_relayed_from_a_robot_not_met_yet_is_honoured(tmp_path: Path) -> None:
    # r1 and r2 never hear each other (r0 relays between them) until the heal
    sim = await household(tmp_path, Fault(1, "drop", 0.0, 60.0, robots=(1, 2), amount=1.0))
    try:
        with sim.captured_logs():
            sim.add_op(Op(1, 2, "user", sim.now, seed=1))
            await sim.advance(sim.now + 2.0)
            assert later_users(sim, 1)
            sim.add_op(Op(2, 2, "forget", sim.now, seed=2))
            await sim.advance(sim.now + 3.0)
            found = await verdict(sim)
            assert found == [], found
    finally:
        await sim.stop()


def test_a_write_queued_during_a_purge_does_not_recreate_the_user() -> None:
    """Found by ``hearth chaos --seed 13 --schedules 1 --peers 4 --edits 10 --duration 8.0
    --fault-rate 0.5 --mix pref=1,user=1,forget=1,event=1,health=0.5,move=0.5`` (no fault
    needed: r1 writes a preference of dan just as r3's tombstone for dan arrives; the purge
    cancelled queued writes only of documents that existed, so this one recreated dan's)."""
    mix = {"pref": 1, "user": 1, "forget": 1, "event": 1, "health": 0.5, "move": 0.5}
    scenario = Scenario(peers=4, edits=10, duration=8.0, fault_rate=0.5, mix=mix)
    outcome = run_schedule(13, scenario, only_faults=set())
    assert problems(outcome) == []


async def test_a_forget_made_before_its_robot_was_revoked_counts_everywhere(
    tmp_path: Path,
) -> None:
    """Found by ``hearth chaos --seed 5048 --schedules 1 --peers 5 --edits 50``."""
    sim = await household(tmp_path)
    try:
        with sim.captured_logs():
            sim.add_op(Op(1, 1, "user", sim.now, seed=1))  # r1 adds a user, everyone learns
            await sim.advance(sim.now + 2.0)
            assert later_users(sim, 0)
            now = sim.now
            sim.add_fault(Fault(1, "partition", now, now + 2.0, groups=((0,), (1, 2))))
            sim.add_op(Op(2, 2, "forget", now + 0.2, seed=2))  # r2 forgets them, r1 hears it
            sim.add_fault(Fault(2, "revoke", now + 0.5, now + 0.5, robots=(2,)))  # then r0
            await sim.advance(now + 4.0)  # revokes r2, before the tombstone reaches it
            found = await verdict(sim)
            assert found == [], found
    finally:
        await sim.stop()


def test_a_merge_yrs_cannot_describe_does_not_stop_the_robot() -> None:
    """Found by ``hearth chaos --seed 5098 --schedules 1 --peers 5 --edits 50``: a merge into
    the household document made Yrs panic computing the keys it changed, inside pycrdt's own
    observer; the panic (a ``BaseException``) ended the robot's task and the schedule.  The
    household observers now read nothing, and views that need the keys fall back to rereading
    everything (`event_field`)."""
    outcome = run_schedule(5098, Scenario(peers=5, edits=50))
    assert problems(outcome) == []


class PanicException(BaseException):  # what PyO3 raises for a Rust panic, by name
    pass


class Unreadable:
    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    @property
    def keys(self) -> list[str]:
        raise self._exc


def test_event_field_turns_only_a_yrs_panic_into_unknown() -> None:
    assert event_field(Unreadable(PanicException("unwrap on None")), "keys") is None
    with pytest.raises(KeyboardInterrupt):  # anything else is not ours to swallow
        event_field(Unreadable(KeyboardInterrupt()), "keys")


def test_a_slot_yrs_takes_back_reads_as_absent_not_as_an_error() -> None:
    """Found by ``hearth chaos --seed 20613 --schedules 1 --edits 50``: a robot's view of the
    spatial document listed a slot of a revoked robot that a later merge had taken back
    without a change event (Yrs 0.28 and content beyond a gap that robot left); the next move
    on that robot failed with ``KeyError``.  A view now takes the map's word.

    The revoked robot's gap never fills; what lies beyond it is held aside on every robot
    (`Replica.beyond`), so they end showing the same."""
    outcome = run_schedule(20613, Scenario(edits=50, duration=30.0), only_faults={0, 3, 4})
    assert problems(outcome) == []


def test_a_writer_still_running_after_its_batch_is_acknowledged() -> None:
    """Found by ``hearth chaos --seed 20769 --schedules 1 --edits 50`` (a harness bug): adding
    a user opens the user's vector index after the write lands, which took more loop turns
    than the simulation gave it; the writer was never looked at again, so the robot never
    counted as idle and the schedule did not converge.  Such a writer is checked at the next
    commit, which is scheduled for it."""
    outcome = run_schedule(20769, Scenario(edits=50, duration=30.0))
    assert problems(outcome) == []


def test_registering_a_user_again_does_not_delete_their_entry() -> None:
    """Found by ``hearth chaos --seed 107399 --schedules 1 --edits 50`` (the 10,000-schedule
    run): r2 registered bob again, its update reached the others beyond a gap in its clock
    (drops) and r2 was revoked before the gap filled.  The overwrite's deletion of bob's entry
    applied at once, its new entry waited for good: bob was off the household's list on every
    robot.  Registering a user already listed under the same name no longer writes."""
    outcome = run_schedule(107399, Scenario(edits=50, duration=30.0), only_faults={0, 1, 4})
    assert problems(outcome) == []


async def test_a_connection_whose_far_end_restarted_in_a_partition_is_reset_after_it(
    tmp_path: Path,
) -> None:
    """The simulated network answers a message for a connection whose far end is gone with a
    reset, as a TCP stack does.  Before, a robot cut off while its peer crashed and restarted
    kept the dead connection until its heartbeat timeout (12 s), and, as the dialer, did not
    dial the restarted peer until then (the slowest schedules to converge after the heal)."""
    sim = await household(tmp_path)
    try:
        a, b = sorted(sim.robots[:2], key=lambda robot: robot.device_id, reverse=True)
        others = tuple(robot.index for robot in sim.robots if robot is not a)
        now = sim.now
        sim.add_fault(Fault(1, "partition", now, now + 3.0, groups=((a.index,), others)))
        sim.add_fault(Fault(2, "crash", now + 0.5, now + 1.0, robots=(b.index,)))
        await sim.advance(now + 2.0)
        old = a.conns.get(b.index)
        assert old is not None  # a cannot know b restarted: the reset was lost in the cut
        assert not old.sides[b.index].alive
        await sim.advance(now + 3.0 + HEARTBEAT_S + 1.0)  # a's next heartbeat meets the reset
        new = a.conns.get(b.index)
        assert new is not None
        assert new is not old
        assert new.sides[a.index].alive
        assert new.sides[b.index].alive
    finally:
        await sim.stop()
