"""Fixtures shared by the transport tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hearthsync import Peer


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    """Two robots (``kitchen``, ``hall``), each knowing Alice, not yet linked."""
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen") as kitchen,
        Peer.open(tmp_path / "hall", device="hall") as hall,
    ):
        for robot in (kitchen, hall):
            await robot.add_user("alice", name="Alice")
        yield kitchen, hall
