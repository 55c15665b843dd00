"""Household sync between real peers over real websockets on loopback."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import string
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.client import connect

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.crdt import statevector
from hearthsync.crypto.certificate import Certificate
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.protocol import frames as f
from hearthsync.protocol.session import PROTOCOL_VERSION, SCHEMA_VERSION
from hearthsync.transport.service import SyncService

NOW = 1_773_014_400
YEAR = 365 * 86_400
SCOPES = ("core", "health", "history", "household", "spatial")
USERS = ("alice", "bob")
TIMEOUT = 15.0


async def until(peers: list[Peer], condition: Callable[[], bool]) -> None:
    """Wait (loudly bounded) until ``condition`` holds, re-checking after each durable commit."""
    changed = asyncio.Event()
    offs = [p.on_durable(lambda _: changed.set()) for p in peers]
    try:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        for off in offs:
            off()


def converged(peers: list[Peer]) -> bool:
    ids = set().union(*(p.document_ids() for p in peers))
    return all(
        len({statevector.decode(p.state_vector(d)).__repr__() for p in peers}) == 1 for d in ids
    )


@pytest.fixture
async def robots(tmp_path: Path) -> AsyncIterator[list[Peer]]:
    async with AsyncExitStack() as stack:
        peers = [
            await stack.enter_async_context(Peer.open(tmp_path / name, device=name))
            for name in ("kitchen", "hall", "garden")
        ]
        yield peers


async def test_three_robots_converge_after_concurrent_writes(robots: list[Peer]) -> None:
    home = BenchHome(users=USERS)
    kitchen, hall, garden = robots
    for i, robot in enumerate(robots):  # concurrent, before any connection
        await robot.add_user("alice", name="Alice")
        await robot.set_preference("alice", f"robot/{robot.device}", i)
        await robot.record_event("alice", "COMMAND", "tea", text=f"tea from {robot.device}")
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(SyncService(kitchen, home.enrol(kitchen)))
        for robot in (hall, garden):
            await stack.enter_async_context(
                SyncService(robot, home.enrol(robot), listen=None, peers=(("127.0.0.1", hub.port),))
            )
        await until(robots, lambda: converged(robots) and len(garden.events("alice")) == 3)
        for robot in robots:
            assert {p.key for p in robot.preferences("alice")} == {
                "robot/kitchen",
                "robot/hall",
                "robot/garden",
            }
        # live: a write on one edge robot reaches the other through the hub
        await garden.set_preference("alice", "tea/mug", "green")
        await until([hall], lambda: hall.preference("alice", "tea/mug") is not None)


async def test_in_a_full_mesh_a_write_crosses_each_link_once(robots: list[Peer]) -> None:
    """Relaying (SPEC §6.4): each robot says which robots it has links with, and a robot does
    not relay to a peer what came from one of those.  In a mesh of three, a write reaches the
    two others directly and neither relays it to the other; in a line (the test above) the
    middle robot still relays."""
    home = BenchHome(users=USERS)
    kitchen, hall, garden = robots
    for robot in robots:
        await robot.add_user("alice", name="Alice")
    ids = {robot.device_id for robot in robots}
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(SyncService(kitchen, home.enrol(kitchen)))
        mid = await stack.enter_async_context(
            SyncService(hall, home.enrol(hall), peers=(("127.0.0.1", hub.port),))
        )
        edge = await stack.enter_async_context(
            SyncService(
                garden,
                home.enrol(garden),
                listen=None,
                peers=(("127.0.0.1", hub.port), ("127.0.0.1", mid.port)),
            )
        )
        services = (hub, mid, edge)

        def meshed(service: SyncService) -> bool:
            links = service.links.values()
            return len(links) == 2 and all(
                link.session.peer_neighbours
                == ids - {link.peer_id, service.credentials.identity.device_id}
                for link in links
            )

        async with asyncio.timeout(TIMEOUT):
            for service in services:
                await service.wait_until(lambda service=service: meshed(service))  # type: ignore[misc]
        await until(robots, lambda: converged(robots))
        between = [hub.links[hall.device_id].session, mid.links[kitchen.device_id].session]
        before = [session.frames_sent["UPDATE"] for session in between]
        from_garden = [link.session for link in edge.links.values()]
        sent = [session.frames_sent["UPDATE"] for session in from_garden]
        for i in range(10):
            await garden.set_preference("alice", f"tea/{i}", i)
        await until(robots, lambda: converged(robots) and hall.preference("alice", "tea/9"))
        after = [session.frames_sent["UPDATE"] for session in from_garden]
        assert all(n > m for n, m in zip(after, sent, strict=True))  # sent to both directly
        assert [s.frames_sent["UPDATE"] for s in between] == before  # and relayed by neither
        for robot in robots:
            assert [p.value for p in robot.preferences("alice", "tea/")] == list(range(10))


async def test_what_one_robot_heard_the_other_recalls(tmp_path: Path) -> None:
    """Events arriving by sync are embedded where they arrive, durably: recall on any robot
    finds what was said to another."""
    home = BenchHome(users=USERS)
    async with (
        Peer.open(tmp_path / "kitchen", device="kitchen") as kitchen,
        Peer.open(tmp_path / "hall", device="hall") as hall,
    ):
        pair = [kitchen, hall]
        for robot in pair:
            await robot.add_user("alice", name="Alice")
        await kitchen.record_event("alice", "COMMAND", "mug", text="use the green mug for tea")
        async with SyncService(kitchen, home.enrol(kitchen)) as hub:
            peers = (("127.0.0.1", hub.port),)
            async with SyncService(hall, home.enrol(hall), listen=None, peers=peers):
                await until(pair, lambda: len(hall.events("alice")) == 1)
                # and live, while linked
                await kitchen.record_event("alice", "COMMAND", "shelf", text="the good shelf")
                await until(pair, lambda: len(hall.events("alice")) == 2)
        hits = await hall.recall("alice", "which mug for tea", k=1)
        assert [hit.event.text for hit in hits] == ["use the green mug for tea"]
        assert hits[0].event.device == kitchen.device_id  # heard by the kitchen robot
        hits = await hall.recall("alice", "good shelf", k=1)
        assert [hit.event.text for hit in hits] == ["the good shelf"]
    async with Peer.open(tmp_path / "hall") as hall:  # the embeddings were stored
        hits = await hall.recall("alice", "green mug", k=2)
        assert [hit.event.text for hit in hits] == ["use the green mug for tea", "the good shelf"]


async def test_a_cut_peer_keeps_writing_and_nothing_is_lost_after_the_heal(
    robots: list[Peer],
) -> None:
    home = BenchHome(users=USERS)
    kitchen, hall, _ = robots
    pair = [kitchen, hall]
    for robot in pair:
        await robot.add_user("alice", name="Alice")
    async with SyncService(kitchen, home.enrol(kitchen)) as hub:
        creds = home.enrol(hall)
        peers = (("127.0.0.1", hub.port),)
        async with SyncService(hall, creds, listen=None, peers=peers) as edge:
            await edge.wait_for_peers({kitchen.device_id})
            await until(pair, lambda: converged(pair))
        # the cut: hall's connection is gone; both keep accepting writes
        acked = []
        for i in range(20):
            acked.append(await kitchen.set_preference("alice", f"k/{i}", i))
            acked.append(await hall.set_preference("alice", f"h/{i}", i))
        async with SyncService(hall, creds, listen=None, peers=peers):
            await until(pair, lambda: converged(pair))
    for robot in pair:
        for pref in acked:
            found = robot.preference("alice", pref.key)
            assert found is not None
            assert found.value == pref.value


async def test_a_bad_device_is_refused_and_the_peer_keeps_serving(robots: list[Peer]) -> None:
    home = BenchHome(users=USERS)
    kitchen, hall, _ = robots
    for robot in (kitchen, hall):
        await robot.add_user("alice", name="Alice")
    stranger = DeviceIdentity(SigningKey(bytes([9]) * 32))
    forged = Certificate.issue(  # signed by itself, not by the household's owner or an admin
        stranger,
        household_id=home.household.id,
        device_pk=bytes(stranger.verify_key),
        device_name="intruder",
        role="member",
        scopes=SCOPES,
        issued_at=NOW,
        expires_at=NOW + YEAR,
    )
    async with SyncService(kitchen, home.enrol(kitchen)) as hub:
        uri = f"ws://127.0.0.1:{hub.port}/"
        async with connect(uri, proxy=None) as intruder:
            await intruder.recv()  # the hub's HELLO
            hello = f.Hello(PROTOCOL_VERSION, SCHEMA_VERSION, forged.to_wire(), bytes(32))
            await intruder.send(f.encode(hello))
            async with asyncio.timeout(TIMEOUT):
                error = f.decode(await intruder.recv())
                assert isinstance(error, f.Error)
                assert error.code == 401
                await intruder.wait_closed()
        async with SyncService(
            hall, home.enrol(hall), listen=None, peers=(("127.0.0.1", hub.port),)
        ):
            await kitchen.set_preference("alice", "tea/mug", "green")
            await until([hall], lambda: hall.preference("alice", "tea/mug") is not None)


async def test_a_restarted_peer_does_not_receive_unchanged_documents_again(
    robots: list[Peer],
) -> None:
    home = BenchHome(users=USERS)
    kitchen, hall, _ = robots
    pair = [kitchen, hall]
    await kitchen.add_user("alice", name="Alice")
    rng = random.Random(4)  # text that does not compress: the first sync is large on the wire
    for i in range(30):
        text = "".join(rng.choices(string.ascii_lowercase + " ", k=200))
        await kitchen.record_event("alice", "COMMAND", "tea", text=text, ts=NOW * 1000 + i)
    creds = home.enrol(hall)
    async with SyncService(kitchen, home.enrol(kitchen)) as hub:
        peers = (("127.0.0.1", hub.port),)
        async with SyncService(hall, creds, listen=None, peers=peers) as edge:
            await until(pair, lambda: converged(pair))
            first = edge.links[kitchen.device_id].bytes_received
        applied: list[str] = []
        off = hall.on_durable(lambda batch: applied.extend(d for d, _, _ in batch))
        async with SyncService(hall, creds, listen=None, peers=peers) as edge:
            await edge.wait_for_peers({kitchen.device_id})
            await hall.set_preference("alice", "tea/mug", "green")  # something new, after
            await until([kitchen], lambda: kitchen.preference("alice", "tea/mug") is not None)
            again = edge.links[kitchen.device_id].bytes_received
        off()
        assert "user/alice/events/2026-03" not in applied
        assert again < first / 5, (again, first)


async def test_two_robots_each_far_behind_the_other_catch_up_both_ways(tmp_path: Path) -> None:
    """Found in review: the reader waited for its own sends, so two robots each answering a
    large catch-up of the other (more than 7.5 MB each way on loopback) filled both sockets,
    read nothing, were dropped after `send_timeout`, and did it again at every retry: the
    pair never converged.  The reader now goes on reading while the writer sends."""
    home = BenchHome(users=("alice",))
    month_ms, first_ms = 31 * 86_400_000, 1_600_000_000_000
    async with (
        Peer.open(tmp_path / "a", device="a") as a,
        Peer.open(tmp_path / "b", device="b") as b,
    ):
        for peer, months in ((a, range(0, 20)), (b, range(20, 40))):
            await peer.add_user("alice", name="Alice")
            writes = [
                peer.record_event(
                    "alice", "COMMAND", "tea", text="tea",
                    ts=first_ms + months[i % 20] * month_ms + i,
                    payload={"blob": base64.b64encode(os.urandom(11_000)).decode()},
                )
                for i in range(1200)
            ]  # fmt: skip
            await asyncio.gather(*writes)  # 1,200 events of 15 KB: 18 MB each, the other lacks
        async with (
            SyncService(a, home.enrol(a), send_timeout=5.0) as hub,
            SyncService(b, home.enrol(b), listen=None, peers=(("127.0.0.1", hub.port),),
                        send_timeout=5.0),
        ):  # fmt: skip
            await until([a, b], lambda: len(a.events("alice")) == len(b.events("alice")) == 2400)
        assert converged([a, b])


async def test_an_update_that_fails_unexpectedly_closes_only_its_link(
    robots: list[Peer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A link catches only the project's own errors from merging an update (a review asked
    what becomes of anything else: a bug, a Yrs failure no check foresaw).  The service logs
    it with its traceback, that link ends, and the robots sync again over the next one."""
    home = BenchHome(users=USERS)
    kitchen, hall, _ = robots
    for robot in (kitchen, hall):
        await robot.add_user("alice", name="Alice")
    real = hall.receive_update
    failed: list[str] = []

    def fails_once(doc_id: str, update: bytes, *args: object, **kwargs: object) -> object:
        if not failed and doc_id.endswith("/prefs"):
            failed.append(doc_id)
            raise RuntimeError("an unforeseen failure")
        return real(doc_id, update, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hall, "receive_update", fails_once)
    await kitchen.set_preference("alice", "tea/mug", "green")
    async with (
        SyncService(kitchen, home.enrol(kitchen)) as hub,
        SyncService(hall, home.enrol(hall), listen=None, peers=(("127.0.0.1", hub.port),)),
    ):
        await until([hall], lambda: hall.preference("alice", "tea/mug") is not None)
    assert failed == ["user/alice/prefs"]
    assert "an unforeseen failure" in caplog.text
