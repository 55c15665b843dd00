"""The slow loop: promotion, decay, drift, and never overruling a newer statement."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hearthsync import NotFoundError, Peer, ValidationError
from hearthsync.context import correct, explain, feedback, get_context, maintain
from tests.conftest import FakeWall
from tests.context.conftest import DAY, HOUR, at, clock


async def _mornings(peer: Peer, wall: FakeWall, days: range, value: str, outcome: str) -> None:
    for day in days:
        wall.ms = clock(day, "07:30")
        await feedback(peer, "alice", "tea/mug", value, outcome)  # type: ignore[arg-type]


async def _stable_green_mug(home: Peer, wall: FakeWall) -> None:
    wall.ms = clock(0, "07:30")
    await correct(home, "alice", "tea/mug", "green-mug", served="blue-mug")
    await _mornings(home, wall, range(1, 13), "green-mug", "kept")
    report = await maintain(home, now=at(wall.ms))
    assert [c.action for c in report.changes] == ["promoted"]


async def test_many_confirmations_in_a_few_days_are_folded_not_promoted(
    home: Peer, wall: FakeWall
) -> None:
    wall.ms = clock(0, "07:30")
    await correct(home, "alice", "tea/mug", "green-mug")
    for _ in range(12):  # twelve cups in one day is not "consistently over time"
        wall.advance(HOUR)
        await feedback(home, "alice", "tea/mug", "green-mug")

    report = await maintain(home, now=at(wall.ms))

    assert [(c.action, c.detail) for c in report.changes] == [("folded", "12 new confirmations")]
    stored = home.preference("alice", "tea/mug")
    assert stored is not None
    assert stored.evidence_count == 13
    assert "hearth:stable" not in stored.evidence
    assert (await maintain(home, now=at(wall.ms))).changes == ()  # nothing new: nothing written


async def test_a_contradiction_holds_promotion_back(home: Peer, wall: FakeWall) -> None:
    wall.ms = clock(0, "07:30")
    await correct(home, "alice", "tea/mug", "green-mug")
    await _mornings(home, wall, range(1, 13), "green-mug", "kept")
    await feedback(home, "alice", "tea/mug", "green-mug", "refused")

    report = await maintain(home, now=at(wall.ms))

    assert [c.action for c in report.changes] == ["folded"]


async def test_a_stable_preference_contradicted_lately_is_flagged_as_drifting(
    home: Peer, wall: FakeWall
) -> None:
    await _stable_green_mug(home, wall)
    # five mornings she takes the blue one herself; the last fortnight kept green three times
    await _mornings(home, wall, range(20, 25), "blue-mug", "chose")

    report = await maintain(home, now=at(wall.ms))

    assert [(c.action, c.detail) for c in report.changes] == [
        ("drift", 'contradicted 5 times lately, by "blue-mug"')
    ]
    context = await get_context(home, "alice", task="general", time=at(wall.ms))
    mug = context.preference("tea/mug")
    assert mug is not None
    assert (mug.value, mug.drift) == ("green-mug", True)
    assert "drifting" in context.to_prompt()
    assert (await explain(home, "alice", "tea/mug", time=at(wall.ms))).endswith(
        "but you have often chosen otherwise lately, so it is worth asking"
    )
    system = home.events("alice", domain="tea")[-1]
    assert (system.type, system.payload) == (
        "SYSTEM",
        {"key": "tea/mug", "value": "green-mug", "drift": report.changes[0].detail},
    )
    assert (await maintain(home, now=at(wall.ms))).actions("drift") == []  # flagged once


async def test_an_unconfirmed_learned_value_decays(home: Peer, wall: FakeWall) -> None:
    await home.set_preference("alice", "music/morning", "jazz", source="learned", confidence=0.8)
    wall.advance(60 * DAY)

    report = await maintain(home, now=at(wall.ms))

    assert [(c.action, c.confidence) for c in report.changes] == [("decayed", 0.2)]
    stored = home.preference("alice", "music/morning")
    assert stored is not None
    assert (stored.source, stored.confidence) == ("learned", 0.2)
    # the next day it has decayed a little more, but not by a whole step: nothing written
    assert (await maintain(home, now=at(wall.ms + DAY))).changes == ()


async def test_a_consolidation_never_outranks_a_newer_statement_on_another_robot(
    tmp_path: Path,
) -> None:
    kitchen_wall, hall_wall = FakeWall(clock(0)), FakeWall(clock(0))
    async with _corrected_then_synced(tmp_path, kitchen_wall, hall_wall) as (k, h):
        hall_wall.ms = clock(1)  # partitioned: the hall robot hears of the blue mug
        await correct(h, "alice", "tea/mug", "blue-mug", served="green-mug")
        kitchen_wall.ms = clock(2)  # the kitchen robot, unaware, consolidates green later
        await feedback(k, "alice", "tea/mug", "green-mug")
        assert [c.action for c in (await maintain(k, now=at(clock(2)))).changes] == ["folded"]
        await _sync(k, h)
        await _sync(h, k)

        for peer in (k, h):
            context = await get_context(peer, "alice", task="general", time=at(clock(3)))
            mug = context.preference("tea/mug")
            assert mug is not None
            assert mug.value == "blue-mug"
            assert [a.reason for a in mug.set_aside] == ["an older statement, superseded"]


@contextlib.asynccontextmanager
async def _corrected_then_synced(
    tmp_path: Path, kitchen_wall: FakeWall, hall_wall: FakeWall
) -> AsyncIterator[tuple[Peer, Peer]]:
    """A kitchen and a hall robot, alice told the kitchen robot the green mug, both synced."""
    async with (
        Peer.open(tmp_path / "k", device="kitchen", wall=kitchen_wall, rng=random.Random(1)) as k,
        Peer.open(tmp_path / "h", device="hall", wall=hall_wall, rng=random.Random(2)) as h,
    ):
        for peer in (k, h):
            await peer.add_user("alice", name="Alice")
        await correct(k, "alice", "tea/mug", "green-mug")
        await _sync(k, h)
        yield k, h


async def _sync(source: Peer, target: Peer) -> None:
    for doc_id in source.document_ids():
        await target.apply_update(doc_id, source.diff(doc_id, target.state_vector(doc_id)))


class _CorrectedMeanwhile:
    """A peer on which Alice corrects the mug while the slow loop waits for the disk."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peer, name)

    async def flush(self) -> None:
        await correct(self._peer, "alice", "tea/mug", "blue-mug", served="green-mug")
        await self._peer.flush()


async def test_the_slow_loop_never_overwrites_a_correction_made_meanwhile(
    home: Peer, wall: FakeWall
) -> None:
    wall.ms = clock(0, "07:30")
    await correct(home, "alice", "tea/mug", "green-mug")
    await _mornings(home, wall, range(1, 3), "green-mug", "kept")

    report = await maintain(_CorrectedMeanwhile(home), now=at(wall.ms))  # type: ignore[arg-type]

    assert report.changes == ()
    stored = home.preference("alice", "tea/mug")
    assert stored is not None
    assert (stored.value, stored.source) == ("blue-mug", "correction")


async def test_a_bad_lookback_is_refused_under_the_name_the_caller_gave_it(home: Peer) -> None:
    for lookback in ("nope", "0d", "11000d"):
        with pytest.raises(ValidationError) as caught:
            await maintain(home, now=at(clock(1)), lookback=lookback)
        assert caught.value.field == "lookback"
        assert str(caught.value).startswith("lookback must look like")
        assert repr(lookback) in str(caught.value)


@pytest.mark.parametrize(
    ("users", "refused", "naming"),
    [
        (["alice", "nobody"], NotFoundError, "'nobody'"),
        (["alice", "NOT A NAME"], ValidationError, "'NOT A NAME'"),
        ("alice", ValidationError, "list of user ids"),
    ],
)
async def test_maintain_refuses_unknown_or_malformed_users_before_writing_anything(
    home: Peer, wall: FakeWall, users: Any, refused: type[Exception], naming: str
) -> None:
    wall.ms = clock(0, "07:30")
    await correct(home, "alice", "tea/mug", "green-mug")
    await _mornings(home, wall, range(1, 4), "green-mug", "kept")  # something to fold for alice
    before = home.preference("alice", "tea/mug")

    with pytest.raises(refused) as caught:
        await maintain(home, now=at(wall.ms), users=users)

    assert naming in str(caught.value)
    assert home.preference("alice", "tea/mug") == before
    report = await maintain(home, now=at(wall.ms), users=["alice", "alice"])
    assert [(c.user, c.action) for c in report.changes] == [("alice", "folded")]


async def test_records_stored_under_older_rules_do_not_stop_the_slow_loop(
    tmp_path: Path,
) -> None:
    """Evidence once took any short string, and values were checked less: such records are
    read, and the slow loop goes on for everyone (it raised on the first, and skipped the
    rest of the household)."""
    import datetime as dt

    from hearthsync.crdt.handles import PrefsDoc
    from hearthsync.crdt.kinds import Kind, user_doc
    from hearthsync.model.records import Preference
    from tests.conftest import MONDAY_MS

    wall = FakeWall()
    async with Peer.open(tmp_path / "robot", device="kitchen", wall=wall) as peer:
        for user in ("alice", "bob", "carol"):
            await peer.add_user(user, name=user.title())
            await peer.set_preference(user, "drink/tea", "green", source="learned", confidence=0.9)
        for user, stored in (
            ("alice", {"evidence": ("order-42",)}),
            ("bob", {"value": "call 06 12 34 56 78"}),  # a phone number, by today's rules
        ):
            good = peer.preference(user, "drink/tea")
            assert good is not None
            old = Preference.model_validate(good.model_dump() | stored, context={"stored": True})
            doc = user_doc(user, Kind.PREFS)

            def put(_: object, doc: Any = doc, old: Preference = old) -> None:
                peer._handle(doc, PrefsDoc).prefs.put(PrefsDoc.slot_key(old), old, old.device)

            await peer._docs.write(doc, put)
        later = dt.datetime.fromtimestamp(MONDAY_MS / 1000 + 200 * 86_400, dt.UTC)
        wall.ms = int(later.timestamp() * 1000)
        report = await maintain(peer, now=later)
        assert {change.user for change in report.changes} == {"alice", "carol"}
        assert peer.preference("carol", "drink/tea").confidence < 0.5  # type: ignore[union-attr]
        assert peer.preference("alice", "drink/tea").evidence[0].startswith("hearth:")  # type: ignore[union-attr]


async def test_a_correction_of_a_key_with_a_dotted_domain_is_recorded(home: Peer) -> None:
    # found in review: the key was valid, but its first segment ("tea.x") was passed on as the
    # event's domain, which a name may not be, and the refusal blamed a field never sent
    await correct(home, "alice", "tea.x/mug", "green-mug")
    held = home.preference("alice", "tea.x/mug")
    assert held is not None
    assert held.value == "green-mug"
    assert [e.domain for e in home.events("alice")] == ["tea"]


@pytest.mark.parametrize(
    ("key", "condition", "field"),
    [("tea", None, "key"), ("tea/mug", {"days": "sometimes"}, "condition.days")],
)
async def test_a_refused_correction_writes_nothing(
    home: Peer, key: str, condition: dict[str, str] | None, field: str
) -> None:
    """The correction's event was recorded before the preference was checked: a refused
    correction left it in the history (synced to every robot), and with ``served`` it
    counted against the value held (found in review)."""
    await home.set_preference("alice", "tea/mug", "green-mug")
    before = await get_context(home, "alice", task="general_assistant", time=at(clock(0, "09:00")))

    with pytest.raises(ValidationError) as caught:
        await correct(home, "alice", key, "blue-mug", served="green-mug", condition=condition)  # type: ignore[arg-type]

    assert caught.value.field == field
    assert home.events("alice") == []
    after = await get_context(home, "alice", task="general_assistant", time=at(clock(0, "09:00")))
    assert after.preference("tea/mug") == before.preference("tea/mug")


@pytest.mark.parametrize("arrive", ["before", "after"])
async def test_confirmations_made_elsewhere_count_whenever_they_arrive(
    tmp_path: Path, arrive: str
) -> None:
    """Found in review: confirmations the hall robot recorded while partitioned, arriving
    after the kitchen robot consolidated, were older (by hybrid time) than its copy and never
    counted anywhere: the count depended on the order events arrived in."""
    kitchen_wall, hall_wall = FakeWall(clock(0)), FakeWall(clock(0))
    async with _corrected_then_synced(tmp_path, kitchen_wall, hall_wall) as (k, h):
        for day in range(1, 6):  # partitioned: the hall robot serves her tea five mornings
            hall_wall.ms = clock(day, "07:30")
            await feedback(h, "alice", "tea/mug", "green-mug")
        kitchen_wall.ms = clock(6, "07:30")
        await feedback(k, "alice", "tea/mug", "green-mug")
        if arrive == "before":
            await _sync(h, k)
        await maintain(k, now=at(kitchen_wall.ms))
        await _sync(k, h)
        await _sync(h, k)

        for peer in (k, h):
            context = await get_context(
                peer, "alice", task="general", time=at(clock(7)), history_window="30d"
            )
            mug = context.preference("tea/mug")
            assert mug is not None
            assert mug.confirmations == 6
        await maintain(k, now=at(clock(7)))
        stored = k.preference("alice", "tea/mug")
        assert stored is not None
        assert stored.evidence_count == 7
        assert (await maintain(k, now=at(clock(7)))).changes == ()  # counted once


class _ForgetsBobMeanwhile:
    """A peer on which Bob is forgotten while the slow loop waits for the disk."""

    def __init__(self, peer: Peer) -> None:
        self._peer = peer
        self.forgotten = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peer, name)

    async def flush(self) -> None:
        if not self.forgotten:
            self.forgotten = True
            await self._peer.forget("bob")
        await self._peer.flush()


async def test_a_user_forgotten_meanwhile_does_not_stop_the_slow_loop(
    home: Peer, wall: FakeWall
) -> None:
    """Found in review: Bob forgotten while the loop folded his first key, his drifting
    second key raised `NotFoundError` out of `maintain` (recording the drift), and Charlie,
    after him, was not maintained."""
    wall.ms = clock(0, "07:30")
    for user in ("bob", "charlie"):
        await correct(home, user, "tea/mug", "green-mug")
    await correct(home, "bob", "cleaning/hour", "noon")
    for day in range(1, 13):
        wall.ms = clock(day, "07:30")
        for user in ("bob", "charlie"):
            await feedback(home, user, "tea/mug", "green-mug")
    assert len((await maintain(home, now=at(wall.ms))).actions("promoted")) == 2
    for day in range(20, 25):
        wall.ms = clock(day, "07:30")
        await feedback(home, "bob", "tea/mug", "blue-mug", "chose")  # drifting
        await feedback(home, "charlie", "tea/mug", "green-mug")
    await feedback(home, "bob", "cleaning/hour", "noon")

    report = await maintain(_ForgetsBobMeanwhile(home), now=at(wall.ms))  # type: ignore[arg-type]

    assert [(c.user, c.action) for c in report.changes] == [("charlie", "folded")]
    assert home.forgotten_users() == {"bob"}


async def test_a_value_deleted_on_another_robot_stays_deleted(tmp_path: Path) -> None:
    """Found in review: Alice's explicit "jazz", said to the kitchen robot and deleted on the
    hall robot, came back on every robot once the den robot learned a value after the
    deletion (an explicit statement beats a learned pattern), and the slow loop then wrote
    it back as a fresh copy."""
    wall = FakeWall(clock(0))
    async with (
        Peer.open(tmp_path / "k", device="kitchen", wall=wall, rng=random.Random(1)) as k,
        Peer.open(tmp_path / "h", device="hall", wall=wall, rng=random.Random(2)) as h,
        Peer.open(tmp_path / "d", device="den", wall=wall, rng=random.Random(3)) as d,
    ):
        for peer in (k, h, d):
            await peer.add_user("alice", name="Alice")
        await k.set_preference("alice", "music/morning", "jazz", confidence=0.9)
        await _sync(k, h)
        wall.ms = clock(1)
        await h.delete_preference("alice", "music/morning")
        await _sync(h, d)
        wall.ms = clock(2)
        await d.set_preference("alice", "music/morning", "pop", source="learned", confidence=0.6)
        for source, target in ((d, k), (d, h), (h, k)):
            await _sync(source, target)

        for peer in (k, h, d):
            context = await get_context(peer, "alice", task="general", time=at(clock(3)))
            music = context.preference("music/morning")
            assert music is not None
            assert (music.value, [a.value for a in music.set_aside]) == ("pop", [])
        wall.ms = clock(80)
        report = await maintain(k, now=at(wall.ms))
        assert [(c.key, c.action) for c in report.changes] == [("music/morning", "decayed")]
        stored = k.preference("alice", "music/morning")
        assert stored is not None
        assert stored.value == "pop"


async def test_a_value_deleted_and_then_written_again_by_one_robot_stays_deleted(
    tmp_path: Path,
) -> None:
    """Found in review: the hall robot deleted Alice's explicit "jazz" (said to the kitchen
    robot), then learned "pop" itself.  Its new version overwrote its own tombstone, the
    deletion was recorded nowhere, and "jazz" came back on every robot (an explicit statement
    beats a learned pattern).  A version keeps the newest deletion its writer knew of."""
    wall = FakeWall(clock(0))
    async with (
        Peer.open(tmp_path / "k", device="kitchen", wall=wall, rng=random.Random(1)) as k,
        Peer.open(tmp_path / "h", device="hall", wall=wall, rng=random.Random(2)) as h,
    ):
        for peer in (k, h):
            await peer.add_user("alice", name="Alice")
        await k.set_preference("alice", "music/morning", "jazz", confidence=0.9)
        await _sync(k, h)
        wall.ms = clock(1)
        deleted = await h.delete_preference("alice", "music/morning")
        wall.ms = clock(2)
        learned = await h.set_preference(
            "alice", "music/morning", "pop", source="learned", confidence=0.6
        )
        assert learned.cleared == deleted.set_at
        await _sync(h, k)

        for peer in (k, h):
            context = await get_context(peer, "alice", task="general", time=at(clock(3)))
            music = context.preference("music/morning")
            assert music is not None
            assert (music.value, [a.value for a in music.set_aside]) == ("pop", [])
    async with Peer.open(tmp_path / "k", device="kitchen", wall=wall) as again:
        stored = again.preference("alice", "music/morning")
        assert stored is not None
        assert stored.cleared == deleted.set_at  # durable, and sent as written
