"""Helpers shared by the discovery tests: household tags and a recorder to wait on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hearthsync.discovery import PeerEvent, PeerFound, PeerLost

TAG = "a1b2c3d4e5f60718"
OTHER_TAG = "ffeeddccbbaa9988"
TIMEOUT_S = 5.0


class Recorder:
    """Collects what a callback receives; tests wait on a predicate, never on a sleep."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, *item: Any) -> None:
        self.items.append(item[0] if len(item) == 1 else item)
        self._changed.set()

    def mark(self) -> int:
        """A position to pass as ``since``, to wait only for what is recorded from now on."""
        return len(self.items)

    async def wait_for(
        self, predicate: Callable[[Any], bool], within: float = TIMEOUT_S, *, since: int = 0
    ) -> Any:
        """The first item recorded at or after ``since`` that matches; fails loudly on timeout."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for item in self.items[since:]:
                        if predicate(item):
                            return item
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"nothing matched within {within} s; recorded: {self.items}")

    async def found(
        self, device_id: str, within: float = TIMEOUT_S, *, since: int = 0
    ) -> PeerFound:
        found: PeerFound = await self.wait_for(
            lambda e: isinstance(e, PeerFound) and e.device_id == device_id, within, since=since
        )
        return found

    async def lost(self, device_id: str, within: float = TIMEOUT_S, *, since: int = 0) -> PeerLost:
        lost: PeerLost = await self.wait_for(
            lambda e: isinstance(e, PeerLost) and e.device_id == device_id, within, since=since
        )
        return lost

    def ids(self) -> set[str]:
        return {e.device_id for e in self.items if isinstance(e, PeerFound | PeerLost)}

    def events(self) -> list[PeerEvent]:
        return [e for e in self.items if isinstance(e, PeerFound | PeerLost)]
