"""Shared fixtures: a story clock and peer folders in pytest's temporary directory."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearthsync.peer import Peer

MONDAY_MS = 1_773_014_400_000  # 2026-03-09T00:00Z, a Monday


class FakeWall:
    """A wall clock the test moves by hand (seconds since the epoch, like time.time)."""

    def __init__(self, ms: int = MONDAY_MS) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def peer_path(tmp_path: Path) -> Path:
    return tmp_path / "robot"


@pytest.fixture
async def peer(peer_path: Path, wall: FakeWall) -> AsyncIterator[Peer]:
    async with Peer.open(peer_path, device="kitchen", wall=wall, rng=random.Random(1)) as opened:
        await opened.add_user("alice", name="Alice")
        await opened.add_user("bob", name="Bob")
        yield opened
