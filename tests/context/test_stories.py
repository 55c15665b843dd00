"""One scenario per story of the seed document: the resolved values and the explanation.

Each story is written through the peer's public methods, the way a robot stack would, and read
back through `get_context` and `explain`.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hearthsync import Condition, Peer
from hearthsync.context import (
    ScopeDeniedError,
    correct,
    explain,
    feedback,
    get_context,
    maintain,
)
from tests.conftest import FakeWall
from tests.context.conftest import DAY, at, clock

# ----------------------------------------------------------------------- Alice's coffee


async def test_alice_takes_an_oat_latte_on_weekdays_and_a_cortado_at_weekends(home: Peer) -> None:
    await home.set_preference(
        "alice", "beverage/coffee", "oat latte", condition=Condition(days="weekday")
    )
    await home.set_preference(
        "alice", "beverage/coffee", "cortado", condition=Condition(days="weekend")
    )

    tuesday = await get_context(
        home, "alice", task="prepare_morning_beverage", location="kitchen", time=at(clock(1))
    )
    saturday = await get_context(
        home, "alice", task="prepare_morning_beverage", location="kitchen", time=at(clock(5))
    )

    weekday, weekend = tuesday.preference("beverage/coffee"), saturday.preference("beverage/coffee")
    assert weekday is not None
    assert weekend is not None
    assert (weekday.value, weekend.value) == ("oat latte", "cortado")
    assert [(a.value, a.reason) for a in weekday.set_aside] == [
        ("cortado", "applies only on weekends")
    ]
    assert await explain(home, "alice", "beverage/coffee", time=at(clock(5))) == (
        "cortado on weekends, because you said so on 2026-03-09 on the kitchen robot"
    )


# ----------------------------------------------------------------------- the green mug


async def test_the_green_mug_correction_is_confirmed_then_promoted_to_stable(
    home: Peer, wall: FakeWall
) -> None:
    wall.ms = clock(5, "07:30")  # Saturday 2026-03-14: tea in a random (blue) mug
    await correct(
        home, "alice", "tea/mug", "green-mug", served="blue-mug",
        text="use the green mug next time",
    )  # fmt: skip
    await home.place("green-mug", "Green mug", region="shelf-2", owner="alice")
    first = await get_context(home, "alice", task="prepare_morning_beverage", time=at(wall.ms))
    mug = first.preference("tea/mug")
    assert mug is not None
    assert (mug.value, mug.source, mug.confidence, mug.stage) == (
        "green-mug", "correction", 0.95, "few-shot",
    )  # fmt: skip

    wall.ms = clock(6, "07:30")  # day 2: served in the green mug, nothing said
    await feedback(home, "alice", "tea/mug", "green-mug", "kept")
    second = await get_context(home, "alice", task="prepare_morning_beverage", time=at(wall.ms))
    mug = second.preference("tea/mug")
    assert mug is not None
    assert (mug.confidence, mug.confirmations) == (0.98, 1)

    for day in range(7, 18):  # eleven more mornings, all kept: twelve confirmations in all
        wall.ms = clock(day, "07:30")
        await feedback(home, "alice", "tea/mug", "green-mug", "kept")
    report = await maintain(home, now=at(wall.ms))

    assert [(c.key, c.action) for c in report.changes] == [("tea/mug", "promoted")]
    stable = (await get_context(home, "alice", task="general", time=at(wall.ms))).preference(
        "tea/mug"
    )
    assert stable is not None
    assert stable.stage == "stable"
    assert await explain(home, "alice", "tea/mug", time=at(wall.ms)) == (
        "the green mug, because you asked for it on 2026-03-14 on the kitchen robot; "
        "confirmed 12 times since"
    )


# ----------------------------------------------------------------------- the thermostat


async def _thermostat_household(home: Peer) -> None:
    await home.set_preference("alice", "comfort/temperature", {"min": 20, "max": 23})
    await home.set_preference("bob", "comfort/temperature", {"min": 19, "max": 22})
    await home.set_preference("charlie", "comfort/temperature", {"min": 24, "max": 26})
    office = Condition(location="alice-office")
    await home.set_preference(
        "alice", "comfort/temperature", {"min": 18, "max": 20}, condition=office
    )


async def test_alices_office_is_two_degrees_cooler_than_the_household_range(home: Peer) -> None:
    await _thermostat_household(home)

    async def thermostat(location: str, present: tuple[str, ...] = ()) -> object:
        context = await get_context(
            home, "alice", task="adjust_climate", location=location, present=present,
            time=at(clock(1)),
        )  # fmt: skip
        setting = context.shared_setting("comfort/temperature")
        assert setting is not None
        return setting.value, setting.followed, setting.reason

    assert await thermostat("living-room", ("bob",)) == (
        {"min": 20, "max": 22}, ("alice", "bob"),
        "the range everyone present tolerates (alice {\"max\":23,\"min\":20}, "
        "bob {\"max\":22,\"min\":19})",
    )  # fmt: skip
    assert await thermostat("alice-office") == (
        {"min": 18, "max": 20}, ("alice",), "alice's preference; nobody else present has one",
    )  # fmt: skip
    # the household range's middle is 21 degrees, the office's 19: two degrees cooler
    assert await thermostat("alice-office", ("bob",)) == (
        {"min": 19, "max": 20}, ("alice", "bob"),
        "the range everyone present tolerates (alice {\"max\":20,\"min\":18}, "
        "bob {\"max\":22,\"min\":19})",
    )  # fmt: skip


async def test_a_shared_setting_is_the_same_whoever_asks_with_a_visitor_present(
    home: Peer,
) -> None:
    """Another present person's wishes were resolved with only the users present, the
    asking user's with everyone: a "with grandma" wish (a visitor, no user) held for whoever
    asked and for no one else, and the thermostat's answer depended on who asked (found in
    review)."""
    for user in ("alice", "bob"):
        await home.set_preference(user, "comfort/temperature", {"min": 18, "max": 20})
        grandma = Condition(with_users=("grandma",))
        await home.set_preference(user, "comfort/temperature", {"min": 23, "max": 24},
                                  condition=grandma)  # fmt: skip

    async def thermostat(user: str, present: list[str]) -> object:
        context = await get_context(home, user, task="adjust_climate", present=present,
                                    time=at(clock(0, "09:00")))  # fmt: skip
        setting = context.shared_setting("comfort/temperature")
        assert setting is not None
        return setting.value, dict(setting.wishes)

    warm = {"min": 23, "max": 24}
    assert await thermostat("alice", ["bob", "grandma"]) == (warm, {"alice": warm, "bob": warm})
    assert await thermostat("bob", ["alice", "grandma"]) == (warm, {"alice": warm, "bob": warm})


async def test_when_no_range_suits_everyone_the_owner_has_priority(home: Peer) -> None:
    await _thermostat_household(home)

    context = await get_context(
        home, "charlie", task="adjust_climate", location="living-room", present=["alice"],
        time=at(clock(1)),
    )  # fmt: skip

    setting = context.shared_setting("comfort/temperature")
    assert setting is not None
    assert (setting.value, setting.followed) == ({"min": 20, "max": 23}, ("alice",))
    assert setting.reason.endswith("followed alice, the household owner")
    assert setting.wishes == (
        ("charlie", {"min": 24, "max": 26}), ("alice", {"min": 20, "max": 23}),
    )  # fmt: skip


# ----------------------------------------------------------------------- Charlie's sleep-in


async def test_no_vacuuming_during_charlies_sleep_in(home: Peer) -> None:
    await home.set_routine(
        "charlie-sleep-in", "Sleep-in", user="charlie", days=["sat", "sun"], before="11:00",
        constraints=["no vacuuming", "no loud noise upstairs"],
    )  # fmt: skip
    await home.set_routine(
        "bob-gym", "Gym", user="bob", days=["sat"], after="07:00", before="09:00"
    )

    async def binding(day: int, hhmm: str) -> list[str]:
        context = await get_context(home, "alice", task="vacuum", time=at(clock(day, hhmm)))
        return [r.routine.id for r in context.routines]

    assert await binding(5, "08:00") == ["charlie-sleep-in"]  # Saturday morning
    assert await binding(5, "12:00") == []  # Saturday noon: he is up
    assert await binding(2, "08:00") == []  # Wednesday: school day
    context = await get_context(home, "alice", task="vacuum", time=at(clock(6, "09:30")))
    assert context.to_prompt().splitlines()[1:3] == [
        "## Now",
        "- charlie's Sleep-in until 11:00: no vacuuming; no loud noise upstairs",
    ]


# ----------------------------------------------------------------------- James in the warehouse


async def test_james_gets_his_items_at_waist_height(tmp_path: Path, wall: FakeWall) -> None:
    async with Peer.open(
        tmp_path / "picker", device="picker-3", wall=wall, rng=random.Random(2)
    ) as peer:
        await peer.add_user(
            "james", name="James", household_role="worker",
            accessibility=["present items at waist height"],
            attributes={"ergonomic_flag": {"consented": True, "since": "2026-03"}},
        )  # fmt: skip
        await peer.set_health("james", "injury/shoulder", "left shoulder, lifting restricted")
        await peer.set_preference("james", "handoff/height", "waist height")

        context = await get_context(peer, "james", task="deliver_items", time=at(clock(0)))

    height = context.preference("handoff/height")
    assert height is not None
    assert height.value == "waist height"
    assert context.profile is not None
    assert context.profile.accessibility == ("present items at waist height",)
    assert "health" in context.withheld
    assert context.health == ()
    assert "shoulder" not in context.to_prompt()
    assert "shoulder" not in context.to_json()
    assert "present items at waist height" in context.to_prompt()
    assert await explain(peer, "james", "handoff/height", time=at(clock(0))) == (
        "waist height, because you said so on 2026-03-09 on the picker-3 robot"
    )


async def test_a_robot_named_robot_is_not_called_the_robot_robot(
    tmp_path: Path, wall: FakeWall
) -> None:
    async with Peer.open(tmp_path / "hall", device="hall-robot", wall=wall) as peer:
        await peer.add_user("alice", name="Alice")
        await peer.set_preference("alice", "light/level", "dim")
        assert await explain(peer, "alice", "light/level", time=at(clock(0))) == (
            "dim, because you said so on 2026-03-09 on hall-robot"
        )


# ----------------------------------------------------------------------- Mrs. Chen


@pytest.fixture
async def chen(home: Peer, wall: FakeWall) -> Peer:
    await home.add_user("chen", name="Mrs. Chen", household_role="resident", languages=["zh", "en"])
    await home.set_preference("chen", "language/logistics", "english")
    wall.advance(DAY)
    await correct(
        home, "chen", "language/emotional", "mandarin", served="english",
        text="when we talk about my daughter, speak Mandarin",
    )  # fmt: skip
    await home.set_health(
        "chen", "medication/evening", {"at": "19:00", "often_forgotten": True},
        note="the one she forgets",
    )  # fmt: skip
    await home.set_preference("chen", "medication/reminder_style", "light cue on the table lamp")
    await home.record_event(
        "chen", "COMMAND", "medication", text="evening pill reminder given with the lamp cue"
    )
    return home


async def test_mrs_chen_hears_mandarin_for_feelings_and_english_for_logistics(chen: Peer) -> None:
    context = await get_context(chen, "chen", task="companion_chat", time=at(clock(2)))

    emotional, logistics = (
        context.preference("language/emotional"),
        context.preference("language/logistics"),
    )
    assert emotional is not None
    assert logistics is not None
    assert (emotional.value, emotional.source) == ("mandarin", "correction")
    assert (logistics.value, logistics.source) == ("english", "explicit")
    assert await explain(chen, "chen", "language/emotional", time=at(clock(2))) == (
        "mandarin, because you asked for it on 2026-03-10 on the kitchen robot"
    )
    assert await explain(chen, "chen", "language/logistics", time=at(clock(2))) == (
        "english, because you said so on 2026-03-09 on the kitchen robot"
    )


async def test_mrs_chens_medication_is_visible_to_the_medication_task_only(chen: Peer) -> None:
    medication = await get_context(
        chen, "chen", task="medication_reminder", time=at(clock(2)), query="evening reminder"
    )
    general = await get_context(
        chen, "chen", task="general_assistant", time=at(clock(2)), query="evening reminder"
    )

    assert [h.record.key for h in medication.health] == ["medication/evening"]
    style = medication.preference("medication/reminder_style")
    assert style is not None
    assert style.value == "light cue on the table lamp"
    assert [e.event.domain for e in medication.events] == ["medication", "language"]
    assert [e.event.domain for e in medication.recalled][:1] == ["medication"]
    assert medication.withheld == ("spatial",)

    assert general.withheld == ("health",)
    assert general.health == ()
    assert general.preference("medication/reminder_style") is None
    assert all(e.event.domain != "medication" for e in general.events + general.recalled)
    for leak in ("pill", "lamp", "19:00", "forgets"):
        assert leak not in general.to_prompt()
        assert leak not in general.to_json()
    with pytest.raises(ScopeDeniedError, match="health"):
        await explain(chen, "chen", "medication/reminder_style")
