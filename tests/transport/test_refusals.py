"""What a hub refuses before any peer proves who it is, over real websockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.protocol import frames as f
from hearthsync.transport.service import MAX_OPENING, SyncService

TIMEOUT = 10.0


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[SyncService]:
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen") as kitchen,
        SyncService(kitchen, BenchHome(users=("alice",)).enrol(kitchen)) as service,
    ):
        yield service


async def opened(stack: AsyncExitStack, hub: SyncService) -> ClientConnection:
    """A websocket to ``hub`` whose handler runs (its HELLO came), proving nothing more."""
    ws = await stack.enter_async_context(
        connect(f"ws://127.0.0.1:{hub.port}/", proxy=None, ping_interval=None)
    )
    assert isinstance(f.decode(await ws.recv()), f.Hello)
    return ws


async def test_connections_past_the_cap_of_those_opening_are_refused_until_some_end(
    hub: SyncService,
) -> None:
    """Found in review: each connection from anyone on the LAN could make the hub hold a
    frame of up to 4 MiB before proving anything, and nothing limited how many did."""
    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        flood = [await opened(stack, hub) for _ in range(MAX_OPENING)]
        extra = await stack.enter_async_context(
            connect(f"ws://127.0.0.1:{hub.port}/", proxy=None, ping_interval=None)
        )
        with pytest.raises(ConnectionClosed) as refused:
            await extra.recv()
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 1013
        await flood[0].close()
        await hub.wait_until(lambda: len(hub._opening) < MAX_OPENING)
        await opened(stack, hub)  # room again


async def test_a_text_message_is_refused_as_not_the_protocol(hub: SyncService) -> None:
    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        ws = await opened(stack, hub)
        await ws.send("hello?")
        error = f.decode(await ws.recv())
        assert isinstance(error, f.Error)
        assert error.code == f.ErrorCode.MALFORMED
        assert "text messages are not accepted" in error.message
