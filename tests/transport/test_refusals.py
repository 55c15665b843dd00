"""What a hub refuses before any peer proves who it is, over real websockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.protocol import frames as f
from hearthsync.transport.link import OPENING_MAX_MESSAGE_LEN, _limit_the_opening
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


async def test_a_first_message_larger_than_an_opening_closes_the_connection_unread(
    hub: SyncService,
) -> None:
    """Found in review: each of the `MAX_OPENING` connections that had proved nothing could
    make the hub hold 16 queued messages of 4 MiB.  Its first two messages (HELLO, AUTH) are
    small: a larger one closes it (1009) before it is read, and the hub serves on."""
    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        ws = await opened(stack, hub)
        await ws.send(bytes(OPENING_MAX_MESSAGE_LEN))  # as large as one may be: read, refused
        error = f.decode(await ws.recv())
        assert isinstance(error, f.Error)
        assert error.code == f.ErrorCode.MALFORMED
        ws = await opened(stack, hub)
        await ws.send(bytes(OPENING_MAX_MESSAGE_LEN + 1))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009  # message too big
        await opened(stack, hub)


def masked(data: bytes) -> bytes:
    return Frame(Opcode.BINARY, data).serialize(mask=True, extensions=[])


@pytest.mark.parametrize("split", [False, True])
def test_the_opening_limit_lifts_after_two_messages_parsed_together(split: bool) -> None:
    """A peer's INVENTORY often arrives in the segment that carries its AUTH, and is parsed
    before the session reads the AUTH: the limit lifts as the parser takes the second message
    (in one piece or fragmented), not when the session does."""
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=4 * 2**20)
    _limit_the_opening(protocol)
    if split:  # the second message in two fragments
        second = Frame(Opcode.BINARY, b"a" * 50, fin=False).serialize(mask=True, extensions=[])
        second += Frame(Opcode.CONT, b"b" * 50).serialize(mask=True, extensions=[])
    else:
        second = masked(b"a" * 100)
    protocol.receive_data(masked(b"h" * 1000) + second + masked(b"i" * 3 * 2**20))
    received = protocol.events_received()
    assert [len(frame.data) for frame in received] == [1000, *([50, 50] if split else [100]),
                                                       3 * 2**20]  # fmt: skip
    assert protocol.state is State.OPEN
    assert protocol.max_message_size == 4 * 2**20
    assert "recv_frame" not in vars(protocol)  # the class's own again


def test_a_second_message_over_the_opening_limit_fails_the_protocol() -> None:
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=4 * 2**20)
    _limit_the_opening(protocol)
    protocol.receive_data(masked(b"h" * 1000) + masked(b"a" * (OPENING_MAX_MESSAGE_LEN + 1)))
    assert [len(frame.data) for frame in protocol.events_received()] == [1000]
    assert protocol.state is State.CLOSING
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == 1009
