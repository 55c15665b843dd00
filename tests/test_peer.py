"""The public API of one robot's memory."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

import hearthsync.peer as peer_module
from hearthsync import BlockedFieldError, Condition, NotFoundError, Peer, ValidationError, enrolment
from hearthsync.crdt.handles import ProfileDoc
from hearthsync.crdt.kinds import Kind, user_doc
from hearthsync.crypto.identity import KEY_FILE, DeviceIdentity
from hearthsync.errors import ClosedError
from hearthsync.hlc import Timestamp
from hearthsync.model.records import MAX_LIST, MAX_REMOVED, Profile, merge_fields
from hearthsync.store.vectors import decode_rows
from tests.conftest import MONDAY_MS, FakeWall
from tests.test_forgetting import enrol_household

DAY = 86_400_000
T = TypeVar("T")


async def durable_rows(peer: Peer) -> int:
    """Committed update rows, read through the peer's own connection: while it runs, its file
    is locked against every other (exclusive locking mode)."""
    return int((await peer._sqlite._rows("SELECT count(*) FROM updates"))[0][0])


def state(peer: Peer) -> dict[str, bytes]:
    return {doc_id: r.state_vector() for doc_id, r in peer._docs.replicas.items()}


@pytest.mark.parametrize(
    ("write", "field"),
    [
        (lambda p: p.set_preference("alice", "Bad Key", 1), "key"),
        (lambda p: p.set_preference("alice", "a/b", 1, confidence=7), "confidence"),
        (lambda p: p.set_preference("alice", "contact/x", {"phone": "x"}), "value.phone"),
        (lambda p: p.set_calibration("alice", verbosity=-1), "verbosity"),
        (lambda p: p.set_calibration("alice"), "fields"),
        (lambda p: p.set_calibration("alice", set_at="9" * 16), "set_at"),
        (lambda p: p.set_profile("alice", device="hall"), "device"),
        (lambda p: p.record_event("alice", "GOSSIP", "social"), "type"),
        (lambda p: p.record_event("alice", "COMMAND", "x", text="mail a@b.org"), "text"),
        (lambda p: p.place("Mug!", "Mug"), "object"),
        (lambda p: p.set_region("r", "R", polygon=[(0, 0)] * 300), "polygon"),
        (lambda p: p.set_routine("r", "R", days=["caturday"]), "days.0"),
        (lambda p: p.relate("alice", "", "bob"), "relation"),
        (lambda p: p.add_user("carol", name="C", household_role="queen"), "household_role"),
        (lambda p: p.record_event("alice", "COMMAND", "x", text="t", ts=2**53 - 1), "ts"),
    ],
)
async def test_invalid_write_is_refused_and_changes_nothing(
    peer: Peer, peer_path: Path, write: object, field: str
) -> None:
    await peer.set_preference("alice", "beverage/tea", "green")
    before, rows = state(peer), await durable_rows(peer)
    with pytest.raises(ValidationError) as caught:
        await write(peer)  # type: ignore[operator]
    assert caught.value.field == field
    await peer.flush()
    assert state(peer) == before
    assert await durable_rows(peer) == rows


async def test_times_out_of_any_calendar_are_refused_by_name(peer: Peer) -> None:
    """A time no calendar holds (an event in the year 285,000, a context for the year 1)
    names the field that is wrong rather than escaping as an OverflowError."""
    with pytest.raises(ValidationError) as caught:
        peer.events("alice", since=0, until=2**62)
    assert caught.value.field == "until"
    for year, offset in ((1, 0), (9999, -5)):
        moment = dt.datetime(year, 12, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=offset)))
        with pytest.raises(ValidationError) as caught:
            await peer.get_context("alice", task="general_assistant", time=moment)
        assert caught.value.field == "time"


async def test_blocked_personal_data_is_its_own_error(peer: Peer) -> None:
    with pytest.raises(BlockedFieldError, match="card number"):
        await peer.set_preference("alice", "pay/card", "4111-1111-1111-1111")


async def test_writes_for_an_unknown_user_are_refused(peer: Peer) -> None:
    with pytest.raises(NotFoundError, match="unknown user 'carol'"):
        await peer.set_preference("carol", "beverage/tea", "green")
    assert peer.preferences("carol") == []


async def test_conditions_select_among_values(peer: Peer) -> None:
    weekday, weekend = Condition(days="weekday"), Condition(days="weekend")
    await peer.set_preference("alice", "beverage/coffee", "oat latte", condition=weekday)
    await peer.set_preference("alice", "beverage/coffee", "cortado", condition=weekend)
    assert peer.preference("alice", "beverage/coffee", weekday).value == "oat latte"  # type: ignore[union-attr]
    assert peer.preference("alice", "beverage/coffee", weekend).value == "cortado"  # type: ignore[union-attr]
    assert peer.preference("alice", "beverage/coffee") is None
    assert len(peer.preferences("alice", "beverage/")) == 2


async def test_a_condition_may_be_given_as_a_mapping_of_its_fields(peer: Peer) -> None:
    # found in review: a dict raised AttributeError ('dict' object has no attribute 'key')
    await peer.set_preference("alice", "beverage/coffee", "cortado", condition={"days": "weekend"})
    held = peer.preference("alice", "beverage/coffee", Condition(days="weekend"))
    assert held is not None
    assert held.value == "cortado"
    assert peer.preference("alice", "beverage/coffee", {"days": "weekend"}) == held
    for bad, field in (({"days": "someday"}, "condition.days"), (5, "condition")):
        with pytest.raises(ValidationError) as caught:
            peer.set_preference("alice", "beverage/coffee", "x", condition=bad)  # type: ignore[arg-type]
        assert caught.value.field == field
    await peer.delete_preference("alice", "beverage/coffee", {"days": "weekend"})
    assert peer.preference("alice", "beverage/coffee", {"days": "weekend"}) is None


async def test_the_later_write_wins_and_delete_leaves_nothing(peer: Peer, wall: FakeWall) -> None:
    await peer.set_preference("alice", "beverage/mug", "blue-mug")
    wall.advance(60_000)
    await peer.set_preference("alice", "beverage/mug", "green-mug", source="correction")
    assert peer.preference("alice", "beverage/mug").value == "green-mug"  # type: ignore[union-attr]
    await peer.delete_preference("alice", "beverage/mug")
    assert peer.preference("alice", "beverage/mug") is None
    assert peer.preferences("alice") == []
    with pytest.raises(NotFoundError):
        await peer.delete_preference("alice", "beverage/mug")


async def test_a_delete_follows_a_set_queued_before_it(peer: Peer) -> None:
    # writes are queued in call order; found in review: the set was not found
    written = peer.set_preference("alice", "tea/mug", "green")
    deleted = peer.delete_preference("alice", "tea/mug")
    await asyncio.gather(written, deleted)
    assert peer.preference("alice", "tea/mug") is None
    assert (await deleted).value == "green"
    with pytest.raises(NotFoundError):
        peer.delete_preference("alice", "tea/mug")  # nothing left to delete, nothing queued


async def test_a_move_is_recorded_only_when_the_region_changes(peer: Peer) -> None:
    await peer.place("green-mug", "Green mug", region="shelf-2", owner="alice")
    await peer.place("green-mug", "Green mug", region="shelf-2", pose={"x": 0.1})
    await peer.place("green-mug", "Green mug", region="dishwasher")
    moves = [(c.from_region, c.to_region) for c in peer.spatial_changes("green-mug")]
    assert moves == [(None, "shelf-2"), ("shelf-2", "dishwasher")]
    assert [p.object for p in peer.placements(region="dishwasher")] == ["green-mug"]


async def test_events_span_months_and_filter_by_window_and_domain(peer: Peer) -> None:
    for day in range(0, 60, 3):
        await peer.record_event(
            "alice",
            "COMMAND",
            "beverage" if day % 2 else "lights",
            text=f"day {day}",
            ts=MONDAY_MS + day * DAY,
        )
    everything = peer.events("alice")
    assert [e.ts for e in everything] == sorted(e.ts for e in everything)
    assert len(everything) == 20
    window = peer.events("alice", since=MONDAY_MS + 30 * DAY, until=MONDAY_MS + 45 * DAY)
    assert [e.text for e in window] == [f"day {d}" for d in range(30, 45, 3)]
    assert all(e.domain == "beverage" for e in peer.events("alice", domain="beverage"))


async def test_recall_finds_the_similar_event_within_the_window(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    texts = [
        "turn the hallway lights off",
        "play some jazz in the living room",
        "not the blue one, I want the green mug",
        "water the plants on the balcony",
    ]
    for i, text in enumerate(texts):
        await peer.record_event("alice", "COMMAND", "misc", text=text, ts=MONDAY_MS + i * DAY)
    hits = await peer.recall("alice", "which mug, the green one", k=2)
    assert hits[0].event.text == texts[2]
    assert hits[0].score > hits[1].score
    later = await peer.recall("alice", "green mug", k=4, since=MONDAY_MS + 3 * DAY)
    assert [h.event.text for h in later] == [texts[3]]
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        again = await reopened.recall("alice", "which mug, the green one", k=1)
        assert again[0].event.id == hits[0].event.id


async def test_recall_finds_what_is_committed_before_the_graph_holds_it(
    peer: Peer, peer_path: Path, wall: FakeWall
) -> None:
    """Recall never waits for the HNSW graph: what is committed and not yet inserted (the
    indexer waits for the store to fall idle) is searched exactly, and a close inserts it."""
    peer.index_idle_s = 3600.0  # the store never looks idle: the graph takes nothing
    texts = ["the green mug is on shelf two", "jazz in the living room", "water the plants"]
    for i, text in enumerate(texts):
        await peer.record_event("alice", "COMMAND", "misc", text=text, ts=MONDAY_MS + i * DAY)
    assert peer._vectors.pending == 3
    # a status report counts them, and leaves them staged: inserting them on a worker
    # thread while the flusher stages more would race on the staging buffers
    assert (await peer.status()).vectors == {"alice.history": 3, "bob.history": 0}
    assert peer._vectors.pending == 3
    hits = await peer.recall("alice", "where is the green mug", k=1)
    assert hits[0].event.text == texts[0]
    windowed = await peer.recall("alice", "green mug", k=3, since=MONDAY_MS + DAY)
    assert sorted(h.event.text for h in windowed) == sorted(texts[1:])
    await peer.close()
    async with Peer.open(peer_path, wall=wall) as reopened:
        index = await reopened._vectors.open_index("alice", "history")
        assert (index.count, index.pending) == (3, 0)
        assert reopened._vectors.last_sync("alice", "history").action == "loaded"


async def test_events_of_a_user_heard_of_from_another_robot_go_into_the_graph(
    tmp_path: Path,
) -> None:
    """The hall robot learns of Alice by sync, so her index was not open: every event of
    hers merged since went unstaged, and the first recall rebuilt them all while it waited
    (0.7 s at 5,000 events).  The indexer opens it once her first events are committed."""
    async with kitchen_and_hall(tmp_path) as (kitchen, _, hall, _):
        hall.index_idle_s = 0.01
        texts = [f"task {i} in the kitchen" for i in range(30)]
        for i, text in enumerate(texts):
            await kitchen.record_event("alice", "COMMAND", "misc", text=text, ts=MONDAY_MS + i)
        await send_all(kitchen, hall)
        await hall.commit()
        assert hall._indexer is not None
        await asyncio.wait_for(hall._indexer, timeout=10)  # it ends when nothing is staged
        assert hall._vectors.last_sync("alice", "history") is not None  # opened, not by recall
        index = await hall._vectors.open_index("alice", "history")
        assert (index.count, index.pending) == (30, 0)
        hits = await hall.recall("alice", "task 7 in the kitchen", k=1)
        assert [hit.event.text for hit in hits] == [texts[7]]


async def test_what_is_staged_is_what_the_stored_rows_decode_to(peer: Peer) -> None:
    """The flusher stages the vectors its embedder made, not decoded again from the rows it
    committed: they must be the very vectors an open that stages those rows gets."""
    peer.index_idle_s = 3600.0  # left staged
    writes = [
        peer.record_event(user, "COMMAND", "misc", text=f"task {i} of {user}", ts=MONDAY_MS + i)
        for i in range(6)
        for user in ("alice", "bob")
    ]
    await asyncio.gather(*writes)
    for user in ("alice", "bob"):
        index = await peer._vectors.open_index(user, "history")
        rows = await peer._sqlite.vector_rows(f"{user}.history", 0, 100)
        rowids, ts, vectors = decode_rows(rows, index.dim)
        keys, staged_ts, unit = index._staged_view()
        assert keys.tolist() == rowids.tolist()
        assert staged_ts.tolist() == ts.tolist()
        expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        assert np.array_equal(unit, expected)


async def test_the_indexer_fills_the_graph_once_the_store_is_idle(peer: Peer) -> None:
    peer.index_idle_s = 0.01
    for i in range(5):
        await peer.record_event("alice", "COMMAND", "misc", text=f"task {i}", ts=MONDAY_MS + i)
    assert peer._indexer is not None
    await asyncio.wait_for(peer._indexer, timeout=10)  # it ends when nothing is staged
    index = await peer._vectors.open_index("alice", "history")
    assert (index.count, index.pending) == (5, 0)


async def test_a_backlog_goes_into_the_graph_while_writes_go_on(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `INDEX_BACKLOG` staged vectors the indexer inserts without waiting for idle, so
    the exact search over what is staged stays bounded under a write load that never stops."""
    monkeypatch.setattr(peer_module, "INDEX_BACKLOG", 8)
    monkeypatch.setattr(peer_module, "INDEX_CHUNK", 4)
    peer.index_idle_s = 3600.0
    for i in range(40):
        await peer.record_event("alice", "COMMAND", "misc", text=f"task {i}", ts=MONDAY_MS + i)
        for _ in range(5):  # a few loop turns, as a busy robot's other tasks would give
            await asyncio.sleep(0)
        assert peer._vectors.pending <= 8 + 1
    index = await peer._vectors.open_index("alice", "history")
    assert index.count >= 40 - 8


async def test_a_store_belongs_to_one_device(peer: Peer, peer_path: Path) -> None:
    await peer.close()
    with pytest.raises(ValidationError, match="belongs to device 'kitchen'"):
        async with Peer.open(peer_path, device="hall"):
            pass
    with pytest.raises(ValidationError, match="needs a device name"):
        async with Peer.open(peer_path.parent / "fresh"):
            pass
    with pytest.raises(ValidationError, match="device"):
        async with Peer.open(peer_path.parent / "fresh", device="Not A Name!"):
            pass
    # refused before anything was made: no key, store or lock file of a half-made peer
    assert not (peer_path.parent / "fresh").exists()


async def test_device_key_is_private_and_never_printed(peer: Peer, peer_path: Path) -> None:
    key_file = peer_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_bytes()
    assert secret.hex() not in repr(peer.identity)
    assert len(peer.device_id) == 16


async def test_clock_never_goes_back_across_a_restart(peer: Peer, peer_path: Path) -> None:
    first = await peer.set_preference("alice", "a/b", 1)
    await peer.close()
    async with Peer.open(peer_path, wall=FakeWall(MONDAY_MS - 10 * DAY)) as reopened:
        second = await reopened.set_preference("alice", "a/b", 2)
        assert second.set_at > first.set_at
        assert reopened.preference("alice", "a/b").value == 2  # type: ignore[union-attr]


async def test_a_robot_whose_clock_reset_still_opens_and_keeps_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot with no battery-backed clock boots in 1970 in a house without internet: it
    must still open (its household's certificates check out), keep the keys it is granted,
    revoke a robot, and stamp what it records no earlier than the last time it read, moving on
    from there, until its clock is set."""
    enrol_household(tmp_path, ["owner", "hall"])
    path, started = tmp_path / "owner", float(int(time.time()))
    async with Peer.open(path, device="owner", wall=lambda: started) as peer:
        await peer.add_user("alice", name="Alice")
        before = await peer.record_event("alice", "COMMAND", "drink", text="tea, please")
    hall = DeviceIdentity.load_or_create(tmp_path / "hall").device_id
    uptime = [0.0]
    monkeypatch.setattr(time, "time", lambda: 0.0)  # the system clock, wherever it is read
    async with Peer.open(path, wall=lambda: 0.0, monotonic=lambda: uptime[0]) as peer:
        assert peer.household is not None  # certificates are checked against the floor
        assert peer.wall() == before.ts / 1000
        enrolment.revoke(path, peer.household, peer.identity, hall, now=int(peer.wall()))
        peer.household.seen = None  # as if another process wrote the file meanwhile
        peer.keys_changed()  # a grant arrived: the credentials file is read and written
        uptime[0] = 90.0
        after = await peer.record_event("alice", "COMMAND", "drink", text="more tea")
        assert after.ts == before.ts + 90_000  # from the floor, at the monotonic rate
        assert after.hlc > before.hlc
        assert [e.id for e in peer.events("alice", since=before.ts)] == [before.id, after.id]
    set_again = started + 3_600  # NTP answers: the system clock, ahead of the floor, wins
    async with Peer.open(path, wall=lambda: set_again) as peer:
        assert peer.wall() == set_again
        assert peer.household is not None
        assert peer.household.trust.is_revoked(hall)


@pytest.mark.parametrize(
    ("write", "field"),
    [
        (lambda p: p.place("mug", "Mug", region="kitchen", pose={"x": math.nan, "y": 0}), "pose.x"),
        (lambda p: p.set_region("hall", "Hall", polygon=[(math.inf, 0), (1, 0), (0, 1)]),
         "polygon.0.0"),
        (lambda p: p.set_preference("alice", "tea/mug", math.nan), "value"),
        (lambda p: p.set_preference("alice", "tea/mug", {"sizes": [1, math.inf]}),
         "value.sizes.1"),
        (lambda p: p.set_preference("alice", "tea/mug", {"float": [math.nan]}), "value.float.0"),
        (lambda p: p.set_profile("alice", attributes={"height": math.nan}), "attributes.height"),
        (lambda p: p.set_preference("alice", "tea/mug", "green \ud800"), "value"),
        (lambda p: p.set_health("alice", "medication/x", {"dose": "\ud800"}), "value"),
        (lambda p: p.record_event("alice", "COMMAND", "tea", payload={"a": "\ud800"}), "payload"),
        (lambda p: p.record_event("alice", "COMMAND", "tea", ts=1.5e12), "ts"),
        (lambda p: p.record_event("alice", "COMMAND", "tea", ts=-5), "ts"),
    ],
)  # fmt: skip
async def test_what_json_or_utf_8_cannot_hold_is_refused_at_the_call(
    peer: Peer, write: Callable[[Peer], Any], field: str
) -> None:
    """Found in review: a NaN was stored as null (a placement or region lost at the next
    read, a fact removed), and a lone surrogate failed at the commit, outside any check,
    leaving an empty document behind.  The field is named as the caller gave it, without the
    JSON branches pydantic puts in the location (it was ``value.float``)."""
    await peer.set_region("kitchen", "Kitchen")
    before = {d: peer.state_vector(d) for d in peer.document_ids()}
    with pytest.raises(ValidationError) as caught:
        write(peer)
    assert caught.value.field == field
    assert {d: peer.state_vector(d) for d in peer.document_ids()} == before


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda p: p.set_preference("alice", "tea/mug", "green", evidence=None), "evidence"),
        (lambda p: p.events("alice", since="0"), "since"),
        (lambda p: p.recall("alice", "tea", k="3"), "k"),
        (lambda p: p.recall("alice", "tea", k=2.5), "k"),
        (lambda p: p.recall("alice", "tea", until=1.5), "until"),
    ],
)
async def test_arguments_of_the_wrong_type_are_refused_naming_them(
    peer: Peer, call: Callable[[Peer], Any], field: str
) -> None:
    # found in review: TypeError, or numpy's UFuncTypeError
    async def calling() -> None:
        result = call(peer)
        if asyncio.iscoroutine(result):
            await result

    with pytest.raises(ValidationError) as caught:
        await calling()
    assert caught.value.field == field


async def test_an_update_that_holds_nothing_makes_no_document_and_no_user(peer: Peer) -> None:
    # found in review: it made a user appear, who then took writes
    await peer.apply_update("user/zed/profile", b"\x00\x00")
    assert "zed" not in peer.users()
    assert "user/zed/profile" not in peer.document_ids()


async def test_a_user_forgotten_while_being_added_stays_forgotten(peer: Peer) -> None:
    # found in review: the add, queued after the forget, put the name back in the household
    forgetting = asyncio.ensure_future(peer.forget("alice"))
    await asyncio.sleep(0)  # one turn: the forget has queued its tombstone
    added, _ = await asyncio.gather(
        peer.add_user("alice", name="Zorgblatt"), forgetting, return_exceptions=True
    )
    assert isinstance(added, ValidationError)
    assert "Zorgblatt" not in peer.diff("household").decode("latin-1")
    assert "alice" not in peer.users()


async def test_one_glitched_read_of_the_clock_does_not_stamp_every_write_after_a_restart(
    tmp_path: Path,
) -> None:
    """Found in review: the last stamp, given while the clock read 2106 once, was followed
    again at every open, so every later write of the robot said 2106."""
    wall = FakeWall()
    async with Peer.open(tmp_path / "r", device="kitchen", wall=wall) as robot:
        await robot.add_user("alice", name="Alice")
        wall.ms = 4_294_967_295_000  # 2106, for one read
        robot.wall()
        wall.ms = MONDAY_MS + 1_000
        glitched = await robot.set_preference("alice", "tea/mug", "blue")
    assert glitched.set_at > f"{4_294_967_295_000:016d}"
    wall.ms = MONDAY_MS + 5_000
    async with Peer.open(tmp_path / "r", wall=wall) as robot:
        other = await robot.set_preference("alice", "tea/milk", "oat")
        assert other.set_at.startswith(f"{MONDAY_MS + 5_000:016d}.")
        again = await robot.set_preference("alice", "tea/mug", "green")  # still overtakes it
        assert again.set_at > glitched.set_at
        held = robot.preference("alice", "tea/mug")
        assert held is not None
        assert held.value == "green"


async def test_an_idle_robot_keeps_the_time_it_reads(tmp_path: Path) -> None:
    """A robot that writes nothing for days still stores the time it reads (every
    `KEEP_TIME_S`, and when it closes): booted without a clock, it resumes from there, not
    from its last write."""
    wall = FakeWall(MONDAY_MS)
    async with Peer.open(tmp_path / "hall", device="hall", wall=wall) as peer:
        await peer.add_user("alice", name="Alice")
        wall.advance(2 * DAY)  # a quiet weekend
        await peer.keep_time()
        assert await peer._sqlite.get_meta("wall") == f"{(MONDAY_MS + 2 * DAY) / 1000:.3f}"
        wall.advance(DAY)
    async with Peer.open(tmp_path / "hall", wall=lambda: 0.0) as peer:
        assert peer.wall() == (MONDAY_MS + 3 * DAY) / 1000


async def test_storing_the_time_while_a_batch_commits_takes_nothing_from_it(
    peer: Peer,
) -> None:
    """The time keeper writes on its own timer, so it can land while the flusher's batch is
    in flight: it must not take or reset the batch's update numbers (it once did, and every
    later write failed on a duplicate number until the robot restarted)."""
    store, commit, kept = peer._sqlite, peer._sqlite.commit, []

    async def commit_and_keep_time(batch: Any) -> None:
        if batch.updates and not kept:  # the keeper's turn comes while this batch commits
            kept.append(asyncio.ensure_future(peer.keep_time()))
        await commit(batch)

    store.commit = commit_and_keep_time  # type: ignore[method-assign]
    await peer.set_preference("alice", "k/a", 1)
    await kept[0]
    for i in range(3):
        await peer.set_preference("alice", f"k/b{i}", i)
    assert await durable_rows(peer) >= 4


async def send_all(src: Peer, dst: Peer) -> None:
    for doc_id in src.document_ids():
        await dst.apply_update(doc_id, src.diff(doc_id, dst.state_vector(doc_id)), origin="x")


async def test_a_write_follows_what_its_robot_received_whatever_its_clock(
    tmp_path: Path,
) -> None:
    """DESIGN invariant 3: the hall robot's clock is a minute slow.  It receives the kitchen
    robot's "blue" (and its event), then Alice says "green" to it: "green" is the later
    statement and must win on both robots, whichever wall clock is ahead."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS - 60_000)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await kitchen.add_user("alice", name="Alice")
        blue = await kitchen.set_preference("alice", "drink/mug", "blue")
        said = await kitchen.record_event("alice", "COMMAND", "drink", text="the blue mug")
        await send_all(kitchen, hall)
        kitchen_wall.advance(1_000)
        hall_wall.advance(1_000)
        green = await hall.set_preference("alice", "drink/mug", "green")
        corrected = await hall.record_event("alice", "CORRECTION", "drink", text="green")
        await send_all(hall, kitchen)
        assert green.set_at > blue.set_at
        assert corrected.hlc > said.hlc
        for robot in (kitchen, hall):
            assert robot.preference("alice", "drink/mug").value == "green"  # type: ignore[union-attr]


async def test_a_stamp_like_value_does_not_drag_the_household_clock(tmp_path: Path) -> None:
    """A value that holds what looks like a stamp far in the future (or a robot whose clock
    glitched there) is stored and synced, but the robots that receive it do not follow it."""
    wall = FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall,
    ):
        await kitchen.add_user("alice", name="Alice")
        odd = {"at": "9999999999999999.99999.X"}
        await kitchen.set_preference("alice", "misc/odd", odd)
        await send_all(kitchen, hall)
        assert hall.preference("alice", "misc/odd").value == odd  # type: ignore[union-attr]
        written = await hall.set_preference("alice", "misc/even", 1)
        assert Timestamp.parse(written.set_at).ms == MONDAY_MS
    async with Peer.open(tmp_path / "hall", wall=wall) as reopened:
        assert reopened.preference("alice", "misc/even") is not None


async def test_a_stamp_like_name_does_not_drag_the_household_clock(tmp_path: Path) -> None:
    """Found in review: the household document holds a person's name as they typed it, not
    inside a record's JSON, so a name shaped like a stored stamp 23 hours ahead dragged the
    clock of every robot that synced it 23 hours ahead (and one further ahead pinned its
    'ahead' mark).  Nothing in the household document is a record's stamp to follow."""
    wall = FakeWall(MONDAY_MS)
    ahead = f"{MONDAY_MS + 23 * 3_600_000:016d}.00000"
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=wall) as hall,
    ):
        await kitchen.add_user("alice", name=f'"hlc":"{ahead}.x')
        await send_all(kitchen, hall)
        assert hall.users() == ["alice"]
        written = await hall.set_preference("alice", "misc/even", 1)
        assert Timestamp.parse(written.set_at).ms == MONDAY_MS


async def test_a_robot_days_behind_still_overwrites_what_it_shows(tmp_path: Path) -> None:
    """The hall robot was off for three days in a house without internet, and its clock (no
    battery) resumed from when it stopped.  What the kitchen robot wrote meanwhile is stamped
    three days ahead of it: too far for its clock to follow (`MAX_AHEAD_MS`).  Alice corrects
    the hall robot all the same: her corrections win on both robots, and the hall's clock is
    not dragged along (its other writes keep its own time)."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS - 3 * DAY)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await kitchen.add_user("alice", name="Alice")
        await kitchen.set_preference("alice", "drink/mug", "blue")
        await kitchen.set_preference("alice", "drink/milk", "oat")
        await kitchen.set_calibration("alice", verbosity=0.9)
        await kitchen.set_profile("alice", household_role="guest")
        await kitchen.set_health("alice", "med/evening", "aspirin")
        await kitchen.place("mug", "Alice's mug", region="shelf-1")
        await kitchen.set_region("shelf-1", "the top shelf")
        await kitchen.set_routine("wake", "wake up", user="alice")
        await kitchen.relate("alice", "likes", "bob", note="old friends")
        await send_all(kitchen, hall)
        green = await hall.set_preference("alice", "drink/mug", "green")
        await hall.delete_preference("alice", "drink/milk")
        await hall.set_calibration("alice", verbosity=0.2)
        await hall.set_profile("alice", household_role="owner")
        await hall.set_health("alice", "med/evening", "none")
        await hall.place("mug", "Alice's mug", region="shelf-2")
        await hall.set_region("shelf-1", "the good shelf")
        await hall.set_routine("wake", "wake up gently", user="alice")
        await hall.relate("alice", "likes", "bob", note="neighbours")
        unrelated = await hall.set_preference("alice", "music/volume", 3)
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            assert robot.preference("alice", "drink/mug").value == "green"  # type: ignore[union-attr]
            assert robot.preference("alice", "drink/milk") is None
            assert robot.calibration("alice").verbosity == 0.2
            assert robot.profile("alice").household_role == "owner"  # type: ignore[union-attr]
            assert [r.value for r in robot.health("alice")] == ["none"]
            assert robot.placement("mug").region == "shelf-2"  # type: ignore[union-attr]
            assert [r.label for r in robot.regions()] == ["the good shelf"]
            assert [r.label for r in robot.routines("alice")] == ["wake up gently"]
            assert [r.note for r in robot.relationships()] == ["neighbours"]
        assert Timestamp.parse(green.set_at).ms > MONDAY_MS - DAY  # after "blue"
        assert Timestamp.parse(unrelated.set_at).ms == hall_wall.ms


async def blue_mug_stamped_in_2106(kitchen: Peer, kitchen_wall: FakeWall, hall: Peer) -> None:
    """The kitchen robot's clock glitches to 2106 while it stores Alice's mug, then NTP sets
    it right; the hall robot receives the mug."""
    await kitchen.add_user("alice", name="Alice")
    kitchen_wall.ms = 4_294_967_295_000  # 2106-02-07
    await kitchen.set_preference("alice", "drink/mug", "blue")
    kitchen_wall.ms = MONDAY_MS
    await send_all(kitchen, hall)


async def test_a_value_stamped_by_a_clock_years_ahead_can_still_be_corrected(
    tmp_path: Path,
) -> None:
    """The kitchen robot's clock glitched to 2106 for a moment, while it stored Alice's mug;
    then NTP set it right.  Every other robot refuses to follow that stamp, so without more
    no later write could ever outrank the value.  A correction made on the hall robot wins
    on both, and still does after a reopen; the hall's clock stays in 2026."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await blue_mug_stamped_in_2106(kitchen, kitchen_wall, hall)
        await hall.set_preference("alice", "drink/mug", "green")
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            assert robot.preference("alice", "drink/mug").value == "green"  # type: ignore[union-attr]
    async with Peer.open(tmp_path / "hall", wall=hall_wall) as hall:
        await hall.set_preference("alice", "drink/mug", "red")
        assert hall.preference("alice", "drink/mug").value == "red"  # type: ignore[union-attr]
        other = await hall.set_preference("alice", "drink/milk", "oat")
        assert Timestamp.parse(other.set_at).ms == MONDAY_MS


async def test_two_corrections_in_one_instant_over_a_stamp_far_ahead_keep_their_order(
    tmp_path: Path,
) -> None:
    """Alice corrects the hall robot twice before its group commit runs, while the mug it
    holds was stamped in 2106: each write overtakes what the key holds, and the second must
    also overtake the first, which is not in the document yet.  Stamped alike, the robots
    would hold the second value while the first's stamp says it is just as recent."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await blue_mug_stamped_in_2106(kitchen, kitchen_wall, hall)
        green = hall.set_preference("alice", "drink/mug", "green")
        red = hall.set_preference("alice", "drink/mug", "red")
        first, second = await green, await red
        assert first.set_at < second.set_at
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            held = robot.preference("alice", "drink/mug")
            assert (held.value, held.set_at) == ("red", second.set_at)  # type: ignore[union-attr]
        other = await hall.set_preference("alice", "drink/milk", "oat")
        assert Timestamp.parse(other.set_at).ms == MONDAY_MS  # the clock stayed in 2026


async def test_overtaking_one_record_far_ahead_leaves_a_record_of_the_same_name_alone(
    tmp_path: Path,
) -> None:
    """Found in review: the stamps given by overtaking were remembered by document and key,
    and a region and a thing may share a name in the spatial document: correcting a region
    stamped in 2106 stamped the next move of the thing of that name in 2106 too."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        kitchen_wall.ms = 4_294_967_295_000  # 2106-02-07
        await kitchen.set_region("fridge", "Fridge corner")
        kitchen_wall.ms = MONDAY_MS
        await send_all(kitchen, hall)
        corrected = hall.set_region("fridge", "Fridge corner, left")
        placed = hall.place("fridge", "The fridge", region="kitchen")  # in the same batch
        assert Timestamp.parse((await corrected).set_at).ms == 4_294_967_295_000
        assert Timestamp.parse((await placed).set_at).ms == MONDAY_MS


async def test_a_forgotten_users_keys_are_not_remembered_for_overtaking(tmp_path: Path) -> None:
    """Found in review: the key of a forgotten user's record, overtaken over a stamp in 2106,
    stayed in the robot's memory after the forget."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await kitchen.add_user("alice", name="Alice")
        kitchen_wall.ms = 4_294_967_295_000
        await kitchen.set_health("alice", "condition/diabetes", "type 2")
        kitchen_wall.ms = MONDAY_MS
        await send_all(kitchen, hall)
        await hall.set_health("alice", "condition/diabetes", "type 1")
        assert any("alice" in str(mark) for mark in hall._overtaking)
        await hall.forget("alice")
        assert not any("alice" in str(mark) for mark in hall._overtaking)


async def test_a_store_from_before_the_ahead_mark_reads_what_it_holds_once(
    tmp_path: Path,
) -> None:
    """A store written before the clock kept ``meta.ahead`` may hold a version stamped years
    ahead (synced then): the first open reads its documents' stamps once, so a correction
    still overtakes it, and stores the mark from then on."""
    import sqlite3

    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await blue_mug_stamped_in_2106(kitchen, kitchen_wall, hall)
    db = sqlite3.connect(tmp_path / "hall" / "hearth.db")
    assert db.execute("DELETE FROM meta WHERE key = 'ahead'").rowcount == 1
    db.commit()
    db.close()
    async with Peer.open(tmp_path / "hall", wall=hall_wall) as hall:
        await hall.set_preference("alice", "drink/mug", "green")
        assert hall.preference("alice", "drink/mug").value == "green"  # type: ignore[union-attr]
    db = sqlite3.connect(tmp_path / "hall" / "hearth.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'ahead'").fetchone()[0]
    db.close()


@contextlib.asynccontextmanager
async def kitchen_and_hall(
    tmp_path: Path, **alice: Any
) -> AsyncIterator[tuple[Peer, FakeWall, Peer, FakeWall]]:
    """Two robots (the hall's clock 5 s ahead), both knowing Alice, added on the kitchen one."""
    kitchen_wall, hall_wall = FakeWall(MONDAY_MS), FakeWall(MONDAY_MS + 5_000)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=kitchen_wall) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        await kitchen.add_user("alice", name="Alice", **alice)
        await send_all(kitchen, hall)
        yield kitchen, kitchen_wall, hall, hall_wall


async def test_fields_changed_on_two_robots_apart_both_survive(tmp_path: Path) -> None:
    """Calibration and profile merge field by field: partitioned, the kitchen robot learns
    that Alice wants less initiative and the hall robot that she wants shorter answers; once
    they meet, both robots hold both changes, and a later change of one field wins it alone."""
    async with kitchen_and_hall(tmp_path) as (kitchen, kitchen_wall, hall, hall_wall):
        await kitchen.set_calibration("alice", proactivity=0.1)
        await kitchen.set_profile("alice", languages=["en", "zh"])
        await hall.set_calibration("alice", verbosity=0.2, pace=0.7)
        await hall.set_profile("alice", household_role="owner")
        await send_all(kitchen, hall)
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            calibration, profile = robot.calibration("alice"), robot.profile("alice")
            assert (calibration.proactivity, calibration.verbosity, calibration.pace) == (
                0.1, 0.2, 0.7,
            )  # fmt: skip
            assert profile is not None
            assert (profile.name, profile.languages, profile.household_role) == (
                "Alice", ["en", "zh"], "owner",
            )  # fmt: skip
        kitchen_wall.advance(60_000)
        await kitchen.set_calibration("alice", pace=0.3)  # later than the hall's 0.7
        await send_all(kitchen, hall)
        for robot in (kitchen, hall):
            calibration = robot.calibration("alice")
            assert (calibration.proactivity, calibration.verbosity, calibration.pace) == (
                0.1, 0.2, 0.3,
            )  # fmt: skip
    async with Peer.open(tmp_path / "hall", wall=hall_wall) as reopened:
        assert reopened.calibration("alice").pace == 0.3
        assert reopened.profile("alice").languages == ["en", "zh"]  # type: ignore[union-attr]


async def test_facts_about_a_person_learnt_on_two_robots_apart_both_survive(
    tmp_path: Path,
) -> None:
    """Profile attributes merge fact by fact: partitioned, the kitchen robot learns Alice's
    height and the hall robot that she is left-handed; once they meet, both hold both.  A
    removal (``None``) outranks the older value, on both robots and after a reopen, and a
    fact set again after its removal comes back."""
    async with kitchen_and_hall(tmp_path, attributes={"team": "Lyon"}) as (
        kitchen,
        kitchen_wall,
        hall,
        _hall_wall,
    ):
        written = await kitchen.set_profile("alice", attributes={"height_cm": 165})
        assert written.attributes == {"height_cm": 165, "team": "Lyon"}
        await hall.set_profile("alice", attributes={"hand": "left"})
        await send_all(kitchen, hall)
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            profile = robot.profile("alice")
            assert profile is not None
            assert profile.attributes == {"hand": "left", "height_cm": 165, "team": "Lyon"}
        kitchen_wall.advance(60_000)
        removed = await kitchen.set_profile("alice", attributes={"team": None})
        assert removed.attributes == {"hand": "left", "height_cm": 165}
        await send_all(kitchen, hall)
        await hall.set_profile("alice", attributes={"hand": "right"})  # keeps the removal
        await send_all(hall, kitchen)
        for robot in (kitchen, hall):
            assert robot.profile("alice").attributes == {"hand": "right", "height_cm": 165}  # type: ignore[union-attr]
    async with Peer.open(tmp_path / "kitchen", wall=kitchen_wall) as reopened:
        assert reopened.profile("alice").attributes == {"hand": "right", "height_cm": 165}  # type: ignore[union-attr]
        kitchen_wall.advance(60_000)
        await reopened.set_profile("alice", attributes={"team": "Nantes"})
        assert reopened.profile("alice").attributes["team"] == "Nantes"  # type: ignore[union-attr]


async def test_too_many_facts_about_a_person_are_refused_and_change_nothing(
    peer: Peer,
) -> None:
    await peer.set_profile("alice", attributes={f"fact{i}": i for i in range(MAX_LIST)})
    with pytest.raises(ValidationError) as refused:
        peer.set_profile("alice", attributes={"one_more": 1})
    assert refused.value.field == "attributes"
    assert "one_more" not in peer.profile("alice").attributes  # type: ignore[union-attr]
    await peer.set_profile("alice", attributes={"fact0": None, "one_more": 1})  # room made
    profile = peer.profile("alice")
    assert profile is not None
    assert len(profile.attributes) == MAX_LIST
    assert "fact0" not in profile.attributes


async def test_patches_queued_together_keep_to_the_limit_of_facts(peer: Peer) -> None:
    # found in review: each was checked against the profile before any of them, and 69 landed
    results = await asyncio.gather(
        *(peer.set_profile("alice", attributes={f"fact{i}": i}) for i in range(MAX_LIST + 5)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, ValidationError)]
    assert len(refused) == 5
    assert all(r.field == "attributes" for r in refused)
    assert len(peer.profile("alice").attributes) == MAX_LIST  # type: ignore[union-attr]


async def test_the_later_of_two_values_of_one_fact_wins_on_both_robots(tmp_path: Path) -> None:
    """Robots apart that set the same fact differently agree on the later value, in either
    order of arrival."""
    async with kitchen_and_hall(tmp_path) as (kitchen, _kitchen_wall, hall, _hall_wall):
        await hall.set_profile("alice", attributes={"hand": "right", "team": "Lyon"})
        await kitchen.set_profile("alice", attributes={"hand": "left"})  # earlier clock
        await send_all(hall, kitchen)
        await send_all(kitchen, hall)
        for robot in (kitchen, hall):
            assert robot.profile("alice").attributes == {"hand": "right", "team": "Lyon"}  # type: ignore[union-attr]


async def test_facts_are_a_patch_for_add_user_too(peer: Peer) -> None:
    """Registering a known user again patches their facts, within the same limit."""
    await peer.add_user("alice", name="Alice", attributes={f"a{i}": i for i in range(MAX_LIST)})
    with pytest.raises(ValidationError) as refused:
        await peer.add_user("alice", name="Alice", attributes={"b": 1})
    assert refused.value.field == "attributes"
    assert len(peer.profile("alice").attributes) == MAX_LIST  # type: ignore[union-attr]


async def test_robots_apart_may_add_more_facts_than_one_may_and_still_change_the_profile(
    tmp_path: Path,
) -> None:
    """Found in review: two robots apart each added 40 facts; the 80 they show together
    refused every later change, a rename included.  A change that does not add to them is
    taken, one that adds is refused, and removing more than `MAX_REMOVED` facts on both
    robots apart brings none of them back when the kept removals are trimmed."""
    async with kitchen_and_hall(tmp_path) as (kitchen, kitchen_wall, hall, _hall_wall):
        await kitchen.set_profile("alice", attributes={f"k{i}": i for i in range(MAX_LIST)})
        await hall.set_profile("alice", attributes={f"h{i}": i for i in range(MAX_LIST)})
        await send_all(kitchen, hall)
        await send_all(hall, kitchen)
        assert len(kitchen.profile("alice").attributes) == 2 * MAX_LIST  # type: ignore[union-attr]
        await kitchen.set_profile("alice", name="Alicia")  # a rename is taken
        with pytest.raises(ValidationError):
            kitchen.set_profile("alice", attributes={"one_more": 1})
        # each robot removes its own facts, apart: 128 removals between them
        await kitchen.set_profile("alice", attributes=dict.fromkeys(map("k{}".format, range(64))))
        await hall.set_profile("alice", attributes=dict.fromkeys(map("h{}".format, range(64))))
        await send_all(kitchen, hall)
        await send_all(hall, kitchen)
        kitchen_wall.advance(60_000)
        await kitchen.set_profile("alice", household_role="owner")  # trims the removals kept
        await send_all(kitchen, hall)
        for robot in (kitchen, hall):
            profile = robot.profile("alice")
            assert profile is not None
            assert (profile.name, profile.attributes) == ("Alicia", {})
        handle = kitchen._peek(user_doc("alice", Kind.PROFILE), ProfileDoc)
        assert handle is not None
        own = [v for v in handle.profile.versions("profile") if v.device == kitchen.device_id]
        assert len(own[0].attributes) == MAX_REMOVED  # what the hall still holds


async def test_facts_past_the_limit_can_be_changed_and_removed_but_not_added_to(
    tmp_path: Path,
) -> None:
    """Found in a second review: three robots apart add 50 facts each; a change that removes
    all 150 in one go was refused (the change was counted, removals included), and a change
    that removed one fact and added another was taken, so robots apart could keep adding
    past the limit round after round.  Past the limit, a person may change and remove
    facts, not add any; a new person's first facts are within the limit too."""
    walls = [FakeWall(MONDAY_MS + i * 1_000) for i in range(3)]
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen", wall=walls[0]) as kitchen,
        Peer.open(tmp_path / "hall", device="hall", wall=walls[1]) as hall,
        Peer.open(tmp_path / "garden", device="garden", wall=walls[2]) as garden,
    ):
        with pytest.raises(ValidationError) as refused:
            await kitchen.add_user("bob", name="Bob", attributes={f"b{i}": i for i in range(65)})
        assert refused.value.field == "attributes"
        assert "bob" not in kitchen.users()
        await kitchen.add_user("alice", name="Alice")
        robots = (kitchen, hall, garden)
        for robot in robots[1:]:
            await send_all(kitchen, robot)
        for n, robot in enumerate(robots):
            await robot.set_profile("alice", attributes={f"r{n}f{i}": i for i in range(50)})
        for one in robots:
            for other in robots:
                if one is not other:
                    await send_all(one, other)
        shown = kitchen.profile("alice")
        assert shown is not None
        assert len(shown.attributes) == 150
        await kitchen.set_profile("alice", attributes={"r0f0": "changed"})  # a change: taken
        await kitchen.set_profile("alice", attributes={"r0f1": None})  # a removal: taken
        with pytest.raises(ValidationError):  # one out, one in: still adds past the limit
            kitchen.set_profile("alice", attributes={"r0f2": None, "new": 1})
        everything = dict.fromkeys(kitchen.profile("alice").attributes)  # type: ignore[union-attr]
        await kitchen.set_profile("alice", attributes=everything)  # all 149 out at once
        for robot in robots[1:]:
            await send_all(kitchen, robot)
        for robot in robots:
            assert robot.profile("alice").attributes == {}  # type: ignore[union-attr]


async def test_a_fact_named_like_a_phone_number_is_refused_in_any_form(peer: Peer) -> None:
    """Found in a second review: a key in a phone number's usual written forms failed the
    name rule first, and that error repeated it (message and field)."""
    for key in ("+33612345678", "06 12 34 56 78", "alice@example.com"):
        with pytest.raises(BlockedFieldError) as refused:
            peer.set_profile("alice", attributes={key: "mum"})
        assert key not in str(refused.value)
        assert key not in str(refused.value.field)
    with pytest.raises(BlockedFieldError) as refused:  # and as a user id (found in review)
        peer.set_profile("+1 555 123 4567", attributes={"a": 1})
    assert "555" not in str(refused.value)
    # a removal carries nothing: it can take out a fact stored before the check refused it
    await peer.set_profile("alice", attributes={"555-123-4567": None})
    assert peer.profile("alice").attributes == {}  # type: ignore[union-attr]


async def test_a_phone_number_as_a_fact_is_refused_without_repeating_it(peer: Peer) -> None:
    with pytest.raises(BlockedFieldError) as refused:
        peer.set_profile("alice", attributes={"555-123-4567": "mum"})
    assert refused.value.field == "attributes"
    assert "555" not in str(refused.value)
    assert peer.profile("alice").attributes == {}  # type: ignore[union-attr]


def test_a_profile_from_before_fact_stamps_merges_its_facts_at_its_field_stamp() -> None:
    """A stored version with one stamp for all its attributes (before facts had their own)
    set the whole mapping then: a fact it lacks, it had removed (found in review: upgrading
    brought such facts back).  A version with its own stamps counts each fact at its own."""
    t0, t1, t2, t3 = (f"00017730144{n:05d}.00000.X" for n in range(4))
    older = Profile.derived(
        user="alice", name="Alice", attributes={"hand": "left", "team": "Lyon"},
        stamps={"attributes": t1}, device="A",
    )  # fmt: skip
    newer = Profile.derived(
        user="alice", name="Alice", attributes={"hand": "left"}, stamps={"attributes": t2},
        device="B",
    )  # fmt: skip
    keyed = Profile.derived(
        user="alice", name="Alice", attributes={"hand": None, "pet": "cat"},
        stamps={"attributes": t3}, key_stamps={"attributes": {"hand": t0, "pet": t3}},
        device="C",
    )  # fmt: skip
    for versions in ([older, newer, keyed], [keyed, newer, older], [newer, keyed, older]):
        merged = merge_fields(versions)
        assert merged is not None
        assert merged.shown().attributes == {"hand": "left", "pet": "cat"}
        assert merged.key_stamps["attributes"]["hand"] == t2


async def test_profile_and_calibration_round_trip(peer: Peer) -> None:
    await peer.set_profile("alice", languages=["en", "zh-Hans"], household_role="owner")
    await peer.set_calibration("alice", proactivity=0.2)
    await peer.set_calibration("alice", verbosity=0.9)
    profile, calibration = peer.profile("alice"), peer.calibration("alice")
    assert profile is not None
    assert profile.name == "Alice"
    assert profile.languages == ["en", "zh-Hans"]
    assert (calibration.proactivity, calibration.verbosity) == (0.2, 0.9)
    assert peer.calibration("bob").proactivity == 0.5  # defaults when never set


async def test_registering_again_or_renaming_never_overwrites_the_household_entry(
    peer: Peer,
) -> None:
    """The household's list entry of a user is written once.  An overwrite deletes the entry
    before it, and that deletion applies at once even where the new entry waits beyond a gap
    in its author's clock: a revoked robot could take the user off every robot's list."""
    household = peer._docs.replicas["household"]
    before = household.state_vector()
    await peer.add_user("alice", name="Alice")
    await peer.add_user("alice", name="Alice Liddell")
    assert household.state_vector() == before  # nothing written to the household document
    profile = peer.profile("alice")
    assert profile is not None
    assert profile.name == "Alice Liddell"  # the rename is the profile's
    assert peer.users() == ["alice", "bob"]


async def test_blocking_work_runs_where_offload_says(tmp_path: Path) -> None:
    """Embedding and index inserts go through ``offload`` (a simulation runs them inline);
    nothing runs on another thread then."""
    ran: list[str] = []
    threads: set[int] = set()

    async def recording(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        ran.append(getattr(func, "__name__", repr(func)))
        threads.add(threading.get_ident())
        return func(*args, **kwargs)

    async with Peer.open(tmp_path / "p", device="a", offload=recording) as peer:
        await peer.add_user("alice", name="Alice")
        await peer.record_event("alice", "OBSERVATION", "kitchen", text="the kettle is on")
        found = await peer.recall("alice", "kettle", k=1)
    assert ran, "record_event embedded and indexed without the offload"
    assert threads == {threading.get_ident()}
    assert [hit.event.text for hit in found] == ["the kettle is on"]


async def test_status_counts_documents_and_vectors(peer: Peer) -> None:
    await peer.record_event("alice", "COMMAND", "beverage", text="tea", ts=MONDAY_MS)
    status = await peer.status()
    assert status.users == ["alice", "bob"]
    docs = {d.doc_id: d for d in status.documents}
    assert docs["user/alice/events/2026-03"].records == 1
    assert status.vectors["alice.history"] == 1
    assert status.file_bytes > 0


async def test_a_store_refuses_a_different_embedder(peer: Peer, peer_path: Path) -> None:
    from hearthsync.store.embedding import HashingEmbedder

    await peer.close()
    with pytest.raises(ValidationError, match="embedded with 'hashing-v1-384'"):
        async with Peer.open(peer_path, embedder=HashingEmbedder(dim=128)):
            pass


async def test_with_manual_commits_a_crash_loses_exactly_what_was_not_committed(
    tmp_path: Path,
) -> None:
    """The chaos simulation's contract: ``auto_commit=False`` writes land only at `commit`;
    `crash` drops the rest as a killed process would, and writers learn it was not durable."""
    peer = await Peer.start(tmp_path / "p", device="a", auto_commit=False)
    added = asyncio.create_task(peer.add_user("alice", name="Alice"))
    await asyncio.sleep(0)  # the writer runs up to its commit
    assert not added.done()
    await peer.commit()
    await added
    lost = peer.set_preference("alice", "tea/mug", "green")
    assert not lost.done()  # queued, waiting for a commit that never comes
    await peer.crash()
    with pytest.raises(ClosedError):
        await lost
    async with Peer.open(tmp_path / "p") as again:
        assert again.users() == ["alice"]
        assert again.preference("alice", "tea/mug") is None


async def test_a_record_another_robot_wrote_that_does_not_decode_fails_nothing_here(
    tmp_path: Path,
) -> None:
    """Another robot (a bug, a newer schema) stores a version of the mug's place that does not
    decode, and an event that does not either.  Here they are skipped: the moves queued in the
    same batch are acknowledged and durable, and reads list everything else."""
    from pycrdt import Array, Doc, Map

    from hearthsync.ids import DocId

    async with Peer.open(tmp_path / "a", device="a", wall=FakeWall()) as robot:
        await robot.add_user("alice", name="Alice")
        await robot.place("mug-b", "Mug B", region="shelf-1")
        said = await robot.record_event("alice", "COMMAND", "drink", text="tea", ts=MONDAY_MS)
        moved_a = robot.place("mug-a", "Mug A", region="shelf-2")
        moved_b = robot.place("mug-b", "Mug B", region="shelf-3")
        for doc_id, root, bad in (
            ("home/spatial", "placements", '{"not": "a placement"}'),
            ("user/alice/events/2026-03", "events", '{"id": "not an event"}'),
        ):
            other = Doc(client_id=4242)
            other.apply_update(robot._docs.replicas[DocId(doc_id)].encode_state())
            before = other.get_state()
            if root == "events":
                other.get(root, type=Array).append(bad)
            else:
                other.get(root, type=Map)["mug-b\x1fOTHERDEVICE"] = bad
            robot.receive_update(doc_id, other.get_update(before))
        assert (await moved_a).region == "shelf-2"
        assert (await moved_b).region == "shelf-3"
        assert robot.placement("mug-b").region == "shelf-3"  # type: ignore[union-attr]
        assert [e.id for e in robot.events("alice")] == [said.id]
    async with Peer.open(tmp_path / "a", wall=FakeWall()) as reopened:
        assert {p.object: p.region for p in reopened.placements()} == {
            "mug-a": "shelf-2",
            "mug-b": "shelf-3",
        }


async def test_a_change_that_raises_fails_its_writer_alone(peer: Peer, peer_path: Path) -> None:
    """Changes run when their batch does, in one transaction per document: one that raises
    fails its own writer, and the others of the transaction are acknowledged and durable."""
    from hearthsync.crdt.handles import PrefsDoc
    from hearthsync.ids import DocId

    def broken(_: object) -> None:
        raise RuntimeError("this change is broken")

    doc_id = DocId("user/alice/prefs")
    before = peer.set_preference("alice", "k/before", 1)
    failing = peer._docs.write(doc_id, broken)
    after = peer.set_preference("alice", "k/after", 2)
    with pytest.raises(RuntimeError, match="broken"):
        await failing
    assert (await before).value == 1
    assert (await after).value == 2
    assert peer._handle(doc_id, PrefsDoc).prefs.get("k/after#") is not None
    await peer.close()
    async with Peer.open(peer_path, wall=FakeWall()) as reopened:
        assert {p.key for p in reopened.preferences("alice")} >= {"k/before", "k/after"}


async def test_forgetting_drops_the_views_of_the_users_documents(tmp_path: Path) -> None:
    """A typed view holds its replica, and with it what the user said: forgetting the user
    must not leave them in memory for as long as the robot runs."""
    async with Peer.open(tmp_path / "robot", device="hall", wall=FakeWall()) as robot:
        await robot.add_user("alice", name="Alice")
        await robot.set_health("alice", "med/evening", "two pills")
        await robot.record_event("alice", "COMMAND", "drink", text="tea", ts=MONDAY_MS)
        assert robot.health("alice")
        assert robot.events("alice")
        assert [d for d in robot._handles if d.startswith("user/alice/")]
        await robot.forget("alice")
        assert [d for d in robot._handles if d.startswith("user/alice/")] == []


async def test_a_move_from_a_place_stored_under_older_rules_is_recorded(
    tmp_path: Path,
) -> None:
    """The move's history entry copies the place it leaves, stored under the rules of its day
    (a region id "bay-012-034-056" would be refused as a phone number today): the move is made
    and recorded, where it failed after the new place was already written."""
    from hearthsync.crdt.handles import SpatialDoc
    from hearthsync.ids import DocId
    from hearthsync.model.records import Placement

    async with Peer.open(tmp_path / "robot", device="hall", wall=FakeWall()) as robot:
        first = await robot.place("box-7", "a box", region="shelf-1")
        old = Placement.model_validate(
            first.model_dump() | {"region": "bay-012-034-056"}, context={"stored": True}
        )
        spatial = DocId("home/spatial")
        await robot._docs.write(
            spatial,
            lambda _: robot._handle(spatial, SpatialDoc).placements.put("box-7", old, old.device),
        )
        await robot.place("box-7", "a box", region="shelf-2")
        assert [(c.from_region, c.to_region) for c in robot.spatial_changes("box-7")] == [
            (None, "shelf-1"),
            ("bay-012-034-056", "shelf-2"),
        ]


async def test_what_a_robot_stores_is_its_own_user_s_alone(tmp_path: Path) -> None:
    """The store holds what people told the robot, in plaintext (health included): its folder
    and files are readable by the robot's own account only, as its key files are (the store
    was created 0644 in a 0755 folder), a folder made by someone else included."""
    made_by_hand = tmp_path / "robot"
    made_by_hand.mkdir(mode=0o755)
    made_by_hand.chmod(0o755)
    for folder in (made_by_hand, tmp_path / "new" / "robot"):
        async with Peer.open(folder, device="hall", wall=FakeWall()) as robot:
            await robot.add_user("alice", name="Alice")
            await robot.set_health("alice", "med/evening", "two pills")
            files = [folder / "hearth.db", folder / "hearth.db-wal"]
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            for path in files:
                if path.exists():
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_a_malformed_user_id_in_the_household_names_no_one(tmp_path: Path) -> None:
    """Any robot of the household may write the users list: a malformed id there made
    `Peer.open` fail and stopped the owner keying every user sorted after it (found in
    review)."""
    from hearthsync.ids import DocId

    path = tmp_path / "robot"
    async with Peer.open(path, device="kitchen") as peer:
        await peer.add_user("alice", name="Alice")

        def bad(_: object) -> None:
            peer._household().users["Mallory!"] = "x"

        await peer._docs.write(DocId("household"), bad)
        assert peer.users() == ["alice"]
    async with Peer.open(path) as again:
        assert again.users() == ["alice"]
        await again.add_user("zoe", name="Zoe")
        assert again.users() == ["alice", "zoe"]


def test_the_errors_a_caller_catches_are_importable_from_the_package() -> None:
    """The reference names them; two lived only in submodules (found by a new user)."""
    import hearthsync
    from hearthsync.context.scopes import ScopeDeniedError
    from hearthsync.errors import ClosedError as Closed
    from hearthsync.errors import StoreInUseError

    exported = {name: getattr(hearthsync, name) for name in hearthsync.__all__}
    assert exported["ScopeDeniedError"] is ScopeDeniedError
    assert exported["StoreInUseError"] is StoreInUseError
    assert exported["ClosedError"] is Closed
    for name in ("ValidationError", "BlockedFieldError", "NotFoundError", "CorruptDocumentError"):
        assert issubclass(exported[name], hearthsync.HearthError)


async def test_a_forgotten_user_is_never_written_back_as_someone_present(peer: Peer) -> None:
    """Found in review: after `forget("bob")`, an owner, a routine's user and a relationship
    naming bob were refused, but a condition's ``with_users`` and an event's
    ``people_present`` took his id back into the documents, for good."""
    await peer.forget("bob")
    before = state(peer)
    with pytest.raises(NotFoundError, match=r"condition\.with_users"):
        peer.set_preference("alice", "music/genre", "jazz", condition={"with_users": ["bob"]})
    with pytest.raises(NotFoundError, match=r"context\.people_present"):
        peer.record_event("alice", "OBSERVATION", "kitchen", context={"people_present": ["bob"]})
    await peer.flush()
    assert state(peer) == before


@pytest.mark.parametrize("field", ["deleted", "set_at", "device"])
async def test_fields_the_peer_writes_are_not_taken_from_a_caller(peer: Peer, field: str) -> None:
    """Found in review: ``deleted=True`` removed a region or routine (no delete is
    documented), and ``set_at`` or ``device`` raised a TypeError."""
    await peer.set_region("kitchen", "Kitchen")
    await peer.set_routine("nap", "Nap")
    before = state(peer)
    value: Any = True if field == "deleted" else "x"
    with pytest.raises(ValidationError) as region:
        peer.set_region("kitchen", "Kitchen", **{field: value})
    with pytest.raises(ValidationError) as routine:
        peer.set_routine("nap", "Nap", **{field: value})
    assert region.value.field == routine.value.field == field
    await peer.flush()
    assert state(peer) == before
    assert [r.id for r in peer.regions()] == ["kitchen"]


async def test_reading_the_home_makes_no_document(peer_path: Path, wall: FakeWall) -> None:
    """Found in review: reading regions, places, routines or relationships of a home that
    had none made empty documents, stored at close and listed by `status`."""
    async with Peer.open(peer_path, device="kitchen", wall=wall) as fresh:
        assert fresh.regions() == []
        assert fresh.placements() == []
        assert fresh.placement("mug") is None
        assert fresh.spatial_changes() == []
        assert fresh.routines() == []
        assert fresh.relationships() == []
        assert fresh.document_ids() == ["household"]
    async with Peer.open(peer_path, wall=wall) as reopened:
        assert reopened.document_ids() == ["household"]


@pytest.mark.parametrize("stop", ["close", "crash"])
async def test_a_failed_indexer_does_not_keep_the_robot_from_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stop: str
) -> None:
    """Found in review: an indexer task that had failed was awaited by `crash` before the
    store was closed, so its exception came out of `crash` and the store's lock stayed held;
    `close` raised it before the vector memory was saved.  Both now log it and stop."""

    async def fails(peer: Peer) -> None:
        raise RuntimeError("the indexer failed")

    monkeypatch.setattr(Peer, "_index_staged", fails)
    async with Peer.open(tmp_path / "robot", device="robot") as peer:  # its exit: a no-op
        await peer.add_user("alice", name="Alice")
        await peer.record_event("alice", "OBSERVATION", "kitchen", text="the green mug")
        assert peer._indexer is not None
        async with asyncio.timeout(10):
            await asyncio.wait([peer._indexer])
        await getattr(peer, stop)()
        assert "the indexer failed" in caplog.text
    monkeypatch.undo()
    async with Peer.open(tmp_path / "robot", device="robot") as again:  # the lock was let go
        assert [hit.event.text for hit in await again.recall("alice", "mug", k=1)] == [
            "the green mug"
        ]
