"""Who makes a user's data keys: the robot that adds them, if it may (owner, admin); a member
robot makes none, and says so."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from hearthsync import Peer
from tests.test_forgetting import enrol_household
from tests.test_peer import send_all


@pytest.fixture
async def household(tmp_path: Path) -> AsyncIterator[list[Peer]]:
    """The owner and two members, enrolled in process."""
    names = ["owner", "hall", "garden"]
    enrol_household(tmp_path, names)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Peer.open(tmp_path / n, device=n)) for n in names]


def holds_keys(peer: Peer, user: str) -> bool:
    assert peer.household is not None
    return peer.household.keyring.holds_data_keys(user)


async def test_a_member_that_adds_a_user_makes_no_keys_and_says_so(
    household: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """It was silent: the user's documents stayed on the member, acknowledged, and nothing
    said why (found by a new user following the tutorial)."""
    owner, hall, _garden = household
    with caplog.at_level(logging.WARNING, logger="hearthsync.peer"):
        await hall.add_user("erin", name="Erin")
    assert not holds_keys(hall, "erin")
    assert any("'erin' has no data keys on this robot" in r.getMessage() for r in caplog.records)
    await send_all(hall, owner)
    assert "erin" in owner.users()
    assert not holds_keys(owner, "erin")  # the owner does not key her by itself
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hearthsync.peer"):
        await owner.add_user("erin", name="Erin")  # an owner adding her makes them
    assert holds_keys(owner, "erin")
    assert not [r for r in caplog.records if "no data keys" in r.getMessage()]
