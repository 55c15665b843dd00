"""Shared fixtures: a story clock and peer folders in pytest's temporary directory."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings

from hearthsync.peer import Peer

# Hypothesis searches anew on every run, CI included (a new run may find a new bug); a failure
# prints the blob that replays it exactly, with ``@reproduce_failure``, wherever it happened.
settings.register_profile("hearthsync", print_blob=True)
settings.load_profile("hearthsync")

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
