"""Prompt packing: within the budget by the documented estimate, by priority, never half an item."""

from __future__ import annotations

import datetime as dt
import math
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hearthsync import Condition, Peer, ValidationError
from hearthsync.context import Context, estimate_tokens, get_context
from hearthsync.context.prompt import Section, pack
from tests.conftest import FakeWall
from tests.context.conftest import at, clock

LINES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
SECTIONS = st.lists(
    st.builds(Section, st.text("abcdefgh ", min_size=1, max_size=12), st.lists(LINES, max_size=6)),
    max_size=6,
)


def test_the_estimate_is_a_third_of_the_utf8_bytes_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("oat latte") == 3  # 9 bytes
    assert estimate_tokens("普通话") == 3  # 9 bytes: one token per CJK character
    assert estimate_tokens("a" * 10) == math.ceil(10 / 3)


@given(st.text(max_size=60), SECTIONS, st.integers(1, 400))
def test_a_packed_prompt_fits_its_budget_and_holds_only_whole_items(
    header: str, sections: list[Section], budget: int
) -> None:
    header = " ".join(header.split())
    if estimate_tokens(header + "\n") > budget:
        with pytest.raises(ValidationError, match=f"max_tokens {budget} is too small"):
            pack(header, sections, budget)
        return
    prompt = pack(header, sections, budget)

    assert estimate_tokens(prompt) <= budget
    lines = prompt.split("\n")
    assert lines[0] == header
    headings = {f"## {s.heading}" for s in sections}
    items = {"- " + " ".join(line.split()) for s in sections for line in s.lines}
    assert all(line in headings or line in items for line in lines[1:])


@given(SECTIONS)
def test_without_a_budget_everything_is_packed_in_order(sections: list[Section]) -> None:
    prompt = pack("header", sections, None)

    expected = ["header"]
    for section in sections:
        if section.lines:
            expected.append(f"## {section.heading}")
            expected += ["- " + " ".join(line.split()) for line in section.lines]
    assert prompt.split("\n") == expected


def test_items_of_higher_priority_go_first_and_a_heading_never_goes_alone() -> None:
    sections = [Section("Now", ["no vacuuming"]), Section("Preferences", ["tea/mug: green-mug"])]
    just_now = (
        estimate_tokens("ctx\n") + estimate_tokens("## Now\n") + estimate_tokens("- no vacuuming\n")
    )

    assert pack("ctx", sections, just_now) == "ctx\n## Now\n- no vacuuming"
    assert pack("ctx", sections, just_now + 2) == "ctx\n## Now\n- no vacuuming"
    assert pack("ctx", sections, estimate_tokens("ctx\n")) == "ctx"
    with pytest.raises(ValidationError, match="header alone takes 13 tokens") as refused:
        pack("a much longer header than the budget", sections, 2)
    assert refused.value.field == "max_tokens"


@pytest.fixture
async def rich(home: Peer) -> Context:
    """A context with something in every section."""
    for day, value in enumerate(["oat latte", "cortado", "espresso", "flat white"]):
        await home.set_preference(
            "alice", f"beverage/k{day}", value, condition=Condition(days="weekday")
        )
        await home.record_event("alice", "COMMAND", "beverage", text=f"a {value}", ts=clock(day))
    await home.set_routine("quiet", "Quiet morning", before="10:00", constraints=["no music"])
    await home.place("green-mug", "Green mug", region="shelf-2", owner="alice")
    await home.relate("alice", "uses", "green-mug", note="since Monday")
    return await get_context(
        home, "alice", task="general_assistant", location="shelf-2", time=at(clock(3, "08:00")),
        query="latte",
    )  # fmt: skip


async def test_a_real_context_packs_within_every_budget(rich: Context) -> None:
    full = rich.to_prompt()
    full_lines = set(full.split("\n"))
    counted = sum(estimate_tokens(line + "\n") for line in full.split("\n"))

    header = estimate_tokens(full.split("\n")[0] + "\n")
    for budget in range(1, header):  # a prompt with no header would be no context at all
        with pytest.raises(ValidationError, match=f"header alone takes {header} tokens"):
            rich.to_prompt(budget)
    for budget in range(header, counted + 2):
        prompt = rich.to_prompt(budget)
        assert estimate_tokens(prompt) <= budget
        assert set(prompt.split("\n")) <= full_lines
    assert rich.to_prompt(counted) == full
    assert rich.to_prompt(counted - 1) != full
    assert full.split("\n")[1:3] == ["## Now", "- Quiet morning until 10:00: no music"]


async def test_the_budget_given_to_get_context_is_the_default_of_to_prompt(home: Peer) -> None:
    await home.set_preference("alice", "beverage/coffee", "oat latte")

    small = await get_context(home, "alice", task="general", time=at(clock(0)), max_tokens=40)

    assert estimate_tokens(small.to_prompt()) <= 40
    assert small.to_prompt() != small.to_prompt(10_000)
    with pytest.raises(ValidationError) as caught:
        small.to_prompt(-1)
    assert caught.value.field == "max_tokens"


async def test_event_and_move_lines_are_timed_in_the_zone_of_the_header(
    home: Peer, wall: FakeWall
) -> None:
    la = ZoneInfo("America/Los_Angeles")
    friday_evening = dt.datetime(2026, 3, 13, 19, 30, tzinfo=la)  # Saturday 02:30 in UTC
    wall.ms = int(friday_evening.timestamp() * 1000)
    await home.place("kettle", "Kettle", region="kitchen")
    await home.record_event("alice", "COMMAND", "beverage", text="a decaf, please", ts=wall.ms)

    context = await get_context(
        home, "alice", task="general_assistant", location="kitchen",
        time=dt.datetime(2026, 3, 14, 8, 0, tzinfo=la),
    )  # fmt: skip

    lines = context.to_prompt().split("\n")
    assert "Sat 2026-03-14 08:00" in lines[0]
    assert "- 2026-03-13 19:30 command [beverage] a decaf, please" in lines
    assert "- Kettle placed in kitchen (2026-03-13)" in lines
    [event], [move] = context.events, context.changes
    assert event.line(la) == "2026-03-13 19:30 command [beverage] a decaf, please"
    assert move.line(la) == "Kettle placed in kitchen (2026-03-13)"
    tokyo = ZoneInfo("Asia/Tokyo")  # ahead of UTC: the same instant is Saturday 11:30
    assert event.line(tokyo).startswith("2026-03-14 11:30 command")
