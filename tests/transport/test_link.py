"""One link under load, over real websockets on loopback: a catch-up larger than the link's
window of undurable updates, and a peer that stops reading."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import string
import time
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.crdt import statevector
from hearthsync.protocol import frames as f
from hearthsync.protocol.session import DEAD_AFTER_S, Session
from hearthsync.transport.link import MAX_UNDURABLE, Link
from hearthsync.transport.service import SyncService

MONTH0_MS = 1_600_000_000_000
MONTH_MS = 31 * 86_400_000
TIMEOUT = 15.0


async def until(peers: list[Peer], condition: Callable[[], bool], within: float) -> None:
    """Wait (loudly bounded) until ``condition`` holds, re-checking after each durable commit."""
    changed = asyncio.Event()
    offs = [p.on_durable(lambda _: changed.set()) for p in peers]
    try:
        async with asyncio.timeout(within):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        pytest.fail(f"not within {within} s")
    finally:
        for off in offs:
            off()


def converged(peers: list[Peer]) -> bool:
    ids = set().union(*(p.document_ids() for p in peers))
    return all(len({repr(statevector.decode(p.state_vector(d))) for p in peers}) == 1 for d in ids)


async def write_blob(robot: Peer, rng: random.Random, i: int, *, documents: int) -> None:
    """An event with 15 KB that does not compress, in one of ``documents`` monthly documents."""
    blob = "".join(rng.choices(string.ascii_letters + string.digits, k=15_000))
    ts = MONTH0_MS + (i % documents) * MONTH_MS + i
    await robot.record_event("alice", "COMMAND", "tea", text="tea", payload={"blob": blob}, ts=ts)


async def test_a_catch_up_of_a_hundred_documents_converges_on_one_link(
    pair: tuple[Peer, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """More updates in one burst than `MAX_UNDURABLE`: the link stops reading until the disk
    catches up, then goes on.  (Both the reader and the commit callbacks used to pop the window:
    an ``IndexError`` killed the link, and its close waited 10 s behind the catch-up data.)"""
    kitchen, hall = pair
    home = BenchHome(users=("alice",))
    await asyncio.gather(
        *(
            kitchen.record_event(
                "alice", "COMMAND", "tea", text=f"tea {i}", ts=MONTH0_MS + i * MONTH_MS
            )
            for i in range(100)  # one document per month
        )
    )
    assert len(kitchen.document_ids()) > MAX_UNDURABLE + 30
    async with SyncService(kitchen, home.enrol(kitchen)) as hub:
        peers = (("127.0.0.1", hub.port),)
        async with SyncService(hall, home.enrol(hall), listen=None, peers=peers) as edge:
            async with asyncio.timeout(TIMEOUT):
                await edge.wait_for_peers({kitchen.device_id})
            link = edge.links[kitchen.device_id]
            await until([kitchen, hall], lambda: converged([kitchen, hall]), within=5.0)
            assert edge.links.get(kitchen.device_id) is link  # never dropped, never redialed
    assert len(hall.document_ids()) == len(kitchen.document_ids())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_a_peer_that_stops_reading_is_dropped(
    pair: tuple[Peer, Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """An authenticated peer asks for every document, then reads nothing more (a hung process, a
    robot that lost power mid-transfer).  The hub's sends block on the full socket; it drops the
    link after ``send_timeout`` (`DEAD_AFTER_S`, 12 s, by default; 0.5 s here).  (Before, the
    heartbeat task waited behind the blocked send, the dead-peer rule never ran, and the link
    stayed open for as long as TCP did.)"""
    kitchen, hall = pair
    home = BenchHome(users=("alice",))
    # about 7 MB that does not compress, in 20 documents: more than loopback's socket buffers
    # hold (up to tcp_wmem's 4 MB), so the hub's sends block once the peer stops reading
    rng = random.Random(1)
    await asyncio.gather(*(write_blob(kitchen, rng, i, documents=20) for i in range(480)))
    creds = home.enrol(hall)
    async with SyncService(kitchen, home.enrol(kitchen), send_timeout=0.5) as hub:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.connect(("127.0.0.1", hub.port))
        uri = f"ws://127.0.0.1:{hub.port}/"
        async with connect(
            uri, sock=sock, proxy=None, max_size=f.MAX_FRAME_LEN, compression=None,
            ping_interval=None,
        ) as ws:  # fmt: skip
            try:
                session = Session(
                    creds.identity, creds.certificate.to_wire(), creds.trust, creds.keyring,
                    hall.docs, os.urandom, time.monotonic(), time.time(),
                )  # fmt: skip
                asked = 0
                async with asyncio.timeout(TIMEOUT):
                    for data in session.data_to_send():
                        await ws.send(data)
                    while not asked:  # the handshake, the inventories, then its requests
                        session.receive_data(await ws.recv(), time.monotonic(), time.time())
                        out = session.data_to_send()
                        asked = sum(isinstance(f.decode(d), f.SyncStep1) for d in out)
                        for data in out:
                            await ws.send(data)
                    await hub.wait_for_peers({hall.device_id})
                assert asked >= 20
                ws.transport.pause_reading()  # and sends nothing more either
                async with asyncio.timeout(DEAD_AFTER_S / 2):  # far sooner than the 12 s rule
                    await hub.wait_until(lambda: hall.device_id not in hub.links)
            finally:
                ws.transport.abort()
    dropped = [r.getMessage() for r in caplog.records if "dropped the link" in r.getMessage()]
    assert dropped == [f"dropped the link to {hall.device_id}: it took no data for 0.5 s"]


class HeldSocket:
    """A websocket whose first send writes its frame, then waits (a full socket's drain)."""

    def __init__(self) -> None:
        self.wire: list[bytes] = []
        self.waiting = asyncio.Event()
        self.drained = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self.wire.append(data)
        if not self.waiting.is_set():
            self.waiting.set()
            await self.drained.wait()


class Batches:
    """A session whose frames come in the batches given, one batch per `data_to_send`."""

    def __init__(self, *batches: list[bytes]) -> None:
        self.batches = list(batches)

    def data_to_send(self) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []


async def test_frames_leave_in_the_order_the_session_made_them_when_the_socket_is_full() -> None:
    """Found in review: a pump waiting on a full socket part-way through its batch let another
    pump's frames overtake the rest, so an UPDATE overtook the KEY_GRANT of its key and the
    peer closed the link (409)."""
    socket_ = HeldSocket()
    session = Batches([b"grant-old", b"grant-new"], [b"update-new"])
    link = Link(socket_, session, None, dialed=False)  # type: ignore[arg-type]
    first = asyncio.create_task(link._flush())
    async with asyncio.timeout(TIMEOUT):
        await socket_.waiting.wait()  # its first frame written, the rest of its batch waiting
    second = asyncio.create_task(link._flush())
    await asyncio.sleep(0)  # one turn: the second pump runs up to where it must wait
    socket_.drained.set()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(first, second)
    assert socket_.wire == [b"grant-old", b"grant-new", b"update-new"]


def test_the_same_refusal_warns_once_per_robot_not_once_for_all(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rate limit of repeated refusals hid a second robot's refusal behind the first's
    (found in review): it is per robot."""
    from types import SimpleNamespace

    from hearthsync.protocol.session import Closed

    monkeypatch.setattr("hearthsync.transport.link._warned", {})
    refused = Closed(401, "this device has been revoked", by_peer=True)
    with caplog.at_level(logging.DEBUG, logger="hearthsync.transport.link"):
        for robot in ("AAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBB", "AAAAAAAAAAAAAAAA"):
            Link._log_closed(SimpleNamespace(peer_id=robot, websocket=None), refused)  # type: ignore[arg-type]
    levels = [(r.getMessage()[8:24], r.levelno) for r in caplog.records]
    assert levels == [
        ("AAAAAAAAAAAAAAAA", logging.WARNING),
        ("BBBBBBBBBBBBBBBB", logging.WARNING),
        ("AAAAAAAAAAAAAAAA", logging.DEBUG),
    ]
