"""Fixtures of the context tests: a household robot on a story clock."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearthsync import Peer
from tests.conftest import MONDAY_MS, FakeWall

DAY = 86_400_000
HOUR = 3_600_000


def at(ms: int) -> dt.datetime:
    """The story's instant ``ms`` as the household's local time (UTC here)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def clock(day: int, hhmm: str = "08:00") -> int:
    """Milliseconds at ``hhmm`` on day ``day`` of the story (day 0: Monday 2026-03-09)."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return MONDAY_MS + day * DAY + hours * HOUR + minutes * 60_000


@pytest.fixture
async def home(tmp_path: Path, wall: FakeWall) -> AsyncIterator[Peer]:
    """The kitchen robot of a family: Alice (owner), Bob, Charlie (a teenager)."""
    async with Peer.open(
        tmp_path / "kitchen", device="kitchen", wall=wall, rng=random.Random(1)
    ) as peer:
        await peer.add_user("alice", name="Alice", household_role="owner")
        await peer.add_user("bob", name="Bob")
        await peer.add_user("charlie", name="Charlie", household_role="child")
        yield peer
