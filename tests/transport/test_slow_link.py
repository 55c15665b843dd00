"""A slow link is not a dead one: frames that take longer than the dead-peer rule to cross
a link still arrive, over real websockets on loopback through a throttling proxy."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import sys
import types

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.chaos.proxy import FaultProxy
from hearthsync.protocol import frames as f
from hearthsync.protocol import session as session_module
from hearthsync.transport import link as link_module
from hearthsync.transport.service import SyncService

from .test_link import TIMEOUT, converged, until, write_blob

DEAD_S = 1.0  #: the dead-peer rule, shortened from 12 s so the test takes seconds
RATE = 100_000  #: bytes a second each way: a robot at the edge of the Wi-Fi, scaled down


@pytest.fixture
def quick_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "DEAD_AFTER_S", DEAD_S)
    monkeypatch.setattr(session_module, "HEARTBEAT_S", DEAD_S / 4)
    monkeypatch.setattr(link_module, "TICK_S", DEAD_S / 10)


@pytest.mark.usefixtures("quick_rules")
async def test_a_frame_slower_than_the_dead_peer_rule_arrives_on_one_link(
    pair: tuple[Peer, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """300 KB that do not compress, in one document: the catch-up answer is one frame that
    takes two to three times `DEAD_AFTER_S` to cross.  The robot receiving it hears its bytes
    arrive (`Session.heard`) and keeps the link.  (Before, it closed the link for want of a
    whole frame every time, redialed, asked again, and never caught up.)"""
    kitchen, hall = pair
    home = BenchHome(users=("alice",))
    rng = random.Random(2)
    await asyncio.gather(*(write_blob(kitchen, rng, i, documents=1) for i in range(20)))
    async with (
        SyncService(kitchen, home.enrol(kitchen), send_timeout=DEAD_S) as hub,
        FaultProxy(("127.0.0.1", hub.port), name="wifi") as wifi,
    ):
        wifi.throttle(RATE)
        peers = (wifi.address,)
        async with SyncService(
            hall, home.enrol(hall), listen=None, peers=peers, send_timeout=DEAD_S
        ) as edge:
            async with asyncio.timeout(TIMEOUT):
                await edge.wait_for_peers({kitchen.device_id})
            link = edge.links[kitchen.device_id]
            await until([kitchen, hall], lambda: converged([kitchen, hall]), within=30.0)
            assert edge.links.get(kitchen.device_id) is link  # never dropped, never redialed
        assert wifi.counters.bytes_forwarded > 2 * RATE * DEAD_S  # it did take that long
        assert wifi.counters.connections == 1
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "hearthsync" in r.name]
    assert not warned, caplog.text


class DrainingSocket:
    """A websocket whose send waits on a socket that takes a little of its frame each time
    the link looks (``drains`` looks, then the frame is gone), or none (``drains=0``)."""

    def __init__(self, drains: int) -> None:
        self.transport = self
        self.wire: list[bytes] = []
        self.unsent = 1_000_000
        self.drains = drains
        self.done = asyncio.Event()
        self.aborted = False

    async def send(self, data: bytes) -> None:
        self.wire.append(data)
        await self.done.wait()

    def get_write_buffer_size(self) -> int:
        if self.drains:
            self.unsent -= 1000
            self.drains -= 1
            if not self.drains:
                self.done.set()
        return self.unsent

    def abort(self) -> None:
        self.aborted = True
        self.done.set()


class OneFrame:
    """A session with one frame to send."""

    closed = False
    peer_id = "SLOWSLOWSLOWSLOW"

    def __init__(self) -> None:
        self.frames = [b"a large catch-up answer"]

    def data_to_send(self) -> list[bytes]:
        out, self.frames = self.frames, []
        return out

    def close(self, reason: str) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("drains", "authenticated", "dropped_for"),
    [
        (5, True, None),
        (0, True, "it took no data for 0.02 s"),
        (5, False, "it took no frame in 0.02 s before authenticating"),
    ],
)
async def test_a_send_goes_on_while_an_authenticated_peer_takes_bytes_and_no_longer(
    drains: int, authenticated: bool, dropped_for: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer reading slowly takes part of the frame in every `send_timeout`: the send waits
    for as long as that goes on (before, it was dropped after one `send_timeout` however much
    it took); a peer that takes nothing for one is dropped.  A peer not yet authenticated is
    dropped after one however much it takes (found in review: a stranger flooding websocket
    pings and reading a little now and then held its opening slot, past the handshake's
    deadline, for as long as it liked)."""
    socket_ = DrainingSocket(drains)
    session = OneFrame()
    link = link_module.Link(socket_, session, None, dialed=False, send_timeout=0.02)  # type: ignore[arg-type]
    link.authenticated = authenticated
    async with asyncio.timeout(TIMEOUT):
        await link._flush()
    assert socket_.wire == [b"a large catch-up answer"]
    assert socket_.aborted is (dropped_for is not None)
    assert session.closed is (dropped_for is not None)
    dropped = [r.getMessage() for r in caplog.records if "dropped the link" in r.getMessage()]
    assert dropped == ([f"dropped the link to {session.peer_id}: {dropped_for}"]
                       if dropped_for else [])  # fmt: skip


class Relaying(OneFrame):
    """A session that relays every delta to its peer."""

    def relays(self, doc_id: str, origin: str, delta: bytes) -> bool:
        return True


def test_an_overflowing_link_queues_one_marker_however_many_commits_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer too slow for the deltas is closed once its queue is full, by one marker in the
    queue.  While a send to it stays stuck (a slow link), each commit after that added one
    marker more, without bound (found in review)."""
    monkeypatch.setattr(link_module, "MAX_PENDING_DELTAS", 2)
    link = link_module.Link(DrainingSocket(0), Relaying(), None, dialed=False)  # type: ignore[arg-type]
    delta = ("user/alice/prefs", b"delta", "")
    link._durable([delta] * 3)
    assert link._overflow
    assert link._pending.qsize() == 3  # two deltas, one marker
    for _ in range(10):
        link._durable([delta])
    assert link._pending.qsize() == 3


def test_a_link_whose_queued_deltas_outgrow_their_bytes_bound_overflows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue was bounded by its count of deltas, and a delta is a group commit's change
    to one document, of any size: a peer reading slowly let 68 MB queue up, growing with the
    write rate (found in review).  Past `MAX_PENDING_BYTES` the link overflows."""
    monkeypatch.setattr(link_module, "MAX_PENDING_BYTES", 10_000)
    link = link_module.Link(DrainingSocket(0), Relaying(), None, dialed=False)  # type: ignore[arg-type]
    big = ("user/alice/events/2026-03", bytes(4_000), "")
    link._durable([big, big])
    assert not link._overflow
    assert link._pending_bytes == 8_000
    link._durable([big])
    assert link._overflow
    assert link._pending.qsize() == 3  # two deltas, one marker


#: the HTTP upgrade a websocket client sends, by hand (the test speaks raw bytes after it)
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
#: a masked websocket ping with 125 bytes of payload: the server writes a 127-byte pong
PING = b"\x89\xfd" + bytes(4) + b"p" * 125


async def reset_while_flooding(flood: socket.socket, limit: int = 40_000_000) -> bool:
    """Send pings until the server resets the connection (True) or ``limit`` bytes went."""
    loop = asyncio.get_running_loop()
    burst = PING * 1000
    try:
        for _ in range(limit // len(burst)):
            await loop.sock_sendall(flood, burst)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


async def test_a_stranger_flooding_pings_it_does_not_read_is_dropped(
    pair: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: websockets writes a pong for every ping at once, and a peer that sends
    pings and reads nothing had the server hold them all in memory, before the handshake too.
    Past `MAX_UNSENT` (256 KiB here) the connection is dropped; the server serves on."""
    monkeypatch.setattr(link_module, "MAX_UNSENT", 256 * 1024)
    kitchen, hall = pair
    home = BenchHome(users=("alice",))
    loop = asyncio.get_running_loop()
    async with SyncService(kitchen, home.enrol(kitchen)) as hub:
        flood = socket.socket()
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing after
        flood.setblocking(False)
        try:
            async with asyncio.timeout(TIMEOUT):
                await loop.sock_connect(flood, ("127.0.0.1", hub.port))
                await loop.sock_sendall(flood, UPGRADE)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await loop.sock_recv(flood, 1)
                assert head.startswith(b"HTTP/1.1 101")
                assert await reset_while_flooding(flood), "40 MB of pings and no reset"
        finally:
            flood.close()
        dropped = [r.getMessage() for r in caplog.records if "does not read" in r.getMessage()]
        assert len(dropped) == 1, dropped
        peers = (("127.0.0.1", hub.port),)
        async with SyncService(hall, home.enrol(hall), listen=None, peers=peers) as edge:
            async with asyncio.timeout(TIMEOUT):
                await edge.wait_for_peers({kitchen.device_id})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCOUTQ is Linux's")
async def test_what_waits_for_a_peer_counts_the_kernel_s_send_queue_too() -> None:
    """Found in review: the transport's buffer shrinks only when the socket turns writable
    again, after about a third of a send buffer of up to 4 MiB was acknowledged, so a peer
    reading 100 KB/s without a pause looked idle for whole windows and was dropped.  The
    bytes the kernel holds, not yet acknowledged, are counted with the transport's."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    try:
        _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        peer, _ = await loop.sock_accept(listener)  # and reads nothing
        try:
            writer.write(bytes(4 * 1024 * 1024))  # the kernel takes what it can at once
            websocket = types.SimpleNamespace(transport=writer.transport)
            transport_only = writer.transport.get_write_buffer_size()
            counted = link_module._unsent(websocket)  # type: ignore[arg-type]
            assert counted is not None
            assert transport_only > 0
            assert counted > transport_only  # the kernel holds some: they are counted
            assert counted <= 4 * 1024 * 1024
        finally:
            writer.transport.abort()
            peer.close()
    finally:
        listener.close()


@pytest.mark.slow  # about 5 s: the link's pace is the point
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCOUTQ is Linux's")
async def test_a_steady_slow_reader_of_a_large_frame_keeps_its_link() -> None:
    """A peer that reads 100 KB/s without a pause, of a 4 MiB frame, over real sockets: it
    takes bytes in every `send_timeout` (2 s) and keeps its link until the frame is through.
    (Found in review: counted by the transport's buffer alone, it looked idle for a whole
    window while the kernel's send buffer drained, and was dropped after 2 s.)"""
    loop = asyncio.get_running_loop()
    session = OneFrame()
    session.frames = [bytes(f.MAX_FRAME_LEN - 64)]
    sent = asyncio.Event()

    async def handler(websocket: ServerConnection) -> None:
        link = link_module.Link(websocket, session, None, dialed=False, send_timeout=2.0)  # type: ignore[arg-type]
        link.authenticated = True
        await link._flush()
        sent.set()
        await websocket.wait_closed()

    async with (
        serve(
            handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=None,
            create_connection=link_module.CountingServerConnection,
        ) as server,
        FaultProxy(server.sockets[0].getsockname()[:2], name="wifi") as wifi,
    ):  # fmt: skip
        wifi.throttle(RATE)  # the link's pace: the reader takes what arrives, at once
        reader = socket.socket()
        reader.setblocking(False)
        try:
            got = 0
            async with asyncio.timeout(120):
                await loop.sock_connect(reader, wifi.address)
                await loop.sock_sendall(reader, UPGRADE)
                while not sent.is_set():
                    data = await loop.sock_recv(reader, 65536)
                    if not data:
                        break
                    got += len(data)
        finally:
            reader.close()
    assert not session.closed, f"dropped after the peer read {got} bytes"
    assert sent.is_set()
    # the send waited through several windows (what the kernels hold of the frame, about
    # 3 MB on loopback, is not read before it ends)
    assert got > 2 * 2.0 * RATE
