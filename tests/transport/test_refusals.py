"""What a hub refuses before any peer proves who it is, over real websockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.protocol import frames as f
from hearthsync.protocol.session import PROTOCOL_VERSION, SCHEMA_VERSION
from hearthsync.transport import service as service_module
from hearthsync.transport.link import (
    AUTH_OPENING,
    OPENING_MAX_MESSAGE_LEN,
    CountingClientConnection,
    _limit_the_opening,
)
from hearthsync.transport.service import (
    MAX_OPENING,
    MAX_OPENING_PER_ADDRESS,
    SyncService,
    _counted_address,
)

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


async def test_one_address_cannot_hold_every_opening_slot(
    hub: SyncService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: one host that opened `MAX_OPENING` connections and never spoke
    (reopening each as it was closed) kept every robot from linking to this one.  Loopback
    is not counted, so the hosts here are 127.0.0.2 and 127.0.0.3, counted as if remote."""
    monkeypatch.setattr(service_module, "_counted_address", lambda remote: remote[0])

    async def from_host(stack: AsyncExitStack, host: str) -> ClientConnection:
        return await stack.enter_async_context(
            connect(f"ws://127.0.0.1:{hub.port}/", proxy=None, ping_interval=None,
                    local_addr=(host, 0))
        )  # fmt: skip

    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        stranger = [await from_host(stack, "127.0.0.2") for _ in range(MAX_OPENING_PER_ADDRESS)]
        for ws in stranger:
            assert isinstance(f.decode(await ws.recv()), f.Hello)
        extra = await from_host(stack, "127.0.0.2")
        with pytest.raises(ConnectionClosed) as refused:
            await extra.recv()
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 1013
        robot = await from_host(stack, "127.0.0.3")  # another host still gets in
        assert isinstance(f.decode(await robot.recv()), f.Hello)
        await stranger[0].close()
        await hub.wait_until(
            lambda: list(hub._opening.values()).count("127.0.0.2") < MAX_OPENING_PER_ADDRESS
        )
        again = await from_host(stack, "127.0.0.2")
        assert isinstance(f.decode(await again.recv()), f.Hello)


@pytest.mark.parametrize(
    ("remote", "counted"),
    [
        (("192.168.1.20", 5000), "192.168.1.20"),
        (("::ffff:192.168.1.20", 5000, 0, 0), "192.168.1.20"),  # the same host, over IPv6
        (("fe80::1%eth0", 5000, 0, 2), "fe80::1"),
        (("127.0.0.1", 5000), None),
        (("::1", 5000, 0, 0), None),
        (("::ffff:127.0.0.1", 5000, 0, 0), None),
        (None, None),
        (("not an address", 5000), None),
    ],
)
def test_what_counts_as_one_address(remote: object, counted: str | None) -> None:
    assert _counted_address(remote) == counted


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


async def test_a_stranger_replaying_a_certificate_and_pinging_is_still_held_to_the_opening(
    hub: SyncService,
) -> None:
    """Found in review: the limit lifted after any two messages, and a stranger lifted it
    with another robot's certificate in a HELLO (public: every robot shows its own) and a
    PING (allowed before the session opens), then held a message of 4 MiB for 10 s."""
    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        ws = await opened(stack, hub)
        replayed = BenchHome(users=("alice",)).owner_cert.to_wire()  # the owner's, signed
        await ws.send(f.encode(f.Hello(PROTOCOL_VERSION, SCHEMA_VERSION, replayed, bytes(32))))
        await ws.send(f.encode(f.Ping(1)))
        await ws.send(bytes(3 * 2**20))
        await ws.wait_closed()  # after the hub's AUTH and PONG
        assert ws.close_code == 1009


async def test_a_peer_refused_before_it_proved_anything_gets_no_closing_handshake(
    hub: SyncService,
) -> None:
    """Found in review: a forged AUTH lifts the opening limit at the parser; the session
    refuses it at once, but the closing handshake then kept the connection, and the 4 MiB
    messages queued behind the AUTH, for the 10 s of the close timeout.  Refused before
    proving anything, a peer gets its ERROR and the socket closes (1006: no close frame)."""
    async with AsyncExitStack() as stack, asyncio.timeout(TIMEOUT):
        ws = await opened(stack, hub)
        replayed = BenchHome(users=("alice",)).owner_cert.to_wire()
        await ws.send(f.encode(f.Hello(PROTOCOL_VERSION, SCHEMA_VERSION, replayed, bytes(32))))
        await ws.send(f.encode(f.Auth(bytes(64))))  # signs nothing
        answers = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                answers.append(f.decode(await ws.recv()))
        refused = [a for a in answers if isinstance(a, f.Error)]
        assert [e.code for e in refused] == [f.ErrorCode.UNAUTHORIZED], answers
        await ws.wait_closed()
        assert ws.close_code == 1006  # the hub closed the socket: no handshake to wait out


def masked(data: bytes, opcode: Opcode = Opcode.BINARY, *, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


def limited() -> Protocol:
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=4 * 2**20)
    _limit_the_opening(protocol)
    return protocol


HELLO = bytes([0x95, 0x01]) + b"h" * 998  # how a HELLO begins; its body is not parsed here
AUTH = AUTH_OPENING + bytes([0xC4, 64]) + b"s" * 64
BIG = b"i" * 3 * 2**20


@pytest.mark.parametrize("split", [0, 1, 2])
def test_the_opening_limit_lifts_as_an_auth_is_parsed_with_what_follows(split: int) -> None:
    """A peer's INVENTORY often arrives in the segment that carries its AUTH, and is parsed
    before the session reads the AUTH: the limit lifts as the parser takes the AUTH, whole or
    in fragments (``split``: the first fragment's length; 0: one piece)."""
    protocol = limited()
    if split:
        auth = masked(AUTH[:split], fin=False) + masked(AUTH[split:], Opcode.CONT)
    else:
        auth = masked(AUTH)
    protocol.receive_data(masked(HELLO) + masked(f.encode(f.Ping(7))) + auth + masked(BIG))
    received = protocol.events_received()
    assert len(received[-1].data) == len(BIG)
    assert protocol.state is State.OPEN
    assert protocol.max_message_size == 4 * 2**20
    assert "recv_frame" not in vars(protocol)  # the class's own again


@pytest.mark.parametrize(
    "before",
    [
        [HELLO, f.encode(f.Ping(1)), f.encode(f.Pong(1))],  # any number of small messages
        [b"\x92", b"\x02"],  # an AUTH's two bytes, but in two messages
    ],
    ids=["hello-ping-pong", "auth-bytes-apart"],
)
def test_nothing_but_an_auth_lifts_the_opening_limit(before: list[bytes]) -> None:
    protocol = limited()
    protocol.receive_data(b"".join(map(masked, before)) + masked(b"a" * (2048 + 1)))
    assert len(protocol.events_received()) == len(before)
    assert protocol.state is State.CLOSING
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == 1009


def test_fragments_of_a_message_are_one_message_to_the_opening_limit() -> None:
    """Two small fragments, neither ending its message, lift nothing; the message they
    begin is held to the limit as a whole."""
    for first in (b"a" * 1500, AUTH_OPENING + b"x" * 1500):  # an AUTH lifts it once whole
        protocol = limited()
        protocol.receive_data(masked(first, fin=False) + masked(b"b" * 1000, Opcode.CONT))
        assert protocol.close_sent is not None
        assert protocol.close_sent.code == 1009


async def test_a_robot_dialing_holds_what_answers_to_the_opening_limit() -> None:
    """Whatever answers at an address mDNS gave is a stranger too."""
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1:9/"), max_size=4 * 2**20)
    CountingClientConnection(protocol)
    assert protocol.max_message_size == OPENING_MAX_MESSAGE_LEN
