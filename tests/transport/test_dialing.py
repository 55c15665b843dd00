"""Dial loops follow discovery: one per robot found, trying where it moved (a forged record
cannot lead one away from it), ended once it said goodbye and stopped answering (a forged
goodbye cannot end one); static peers are dialed for good.  Real zeroconf and websockets on
loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from hearthsync import Peer
from hearthsync.bench.household import BenchHome
from hearthsync.discovery import Discovery, PeerEvent, PeerFound, PeerLost, PeerView
from hearthsync.discovery.mdns import TXT_VERSION
from hearthsync.runner import _on_discovered
from hearthsync.transport.addresses import GIVE_UP_AFTER
from hearthsync.transport.service import FIRST_RETRY_S, MAX_RETRY_S, SyncService

TAG = "a1b2c3d4e5f60718"
TIMEOUT = 10.0


@pytest.fixture
async def robots(tmp_path: Path) -> AsyncIterator[tuple[Peer, Peer]]:
    """(greater, smaller) by device id: only the greater dials what discovery finds."""
    async with (
        Peer.open(tmp_path / "r1", device="r1") as one,
        Peer.open(tmp_path / "r2", device="r2") as two,
    ):
        yield (one, two) if one.device_id > two.device_id else (two, one)


def dial_loops() -> list[asyncio.Task[None]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("hearthsync-dial-") and not task.done()
    ]


def recording(
    delays: list[float], enough: asyncio.Event, *, at: int
) -> Callable[[float], Awaitable[None]]:
    """A dial loop's `_back_off` that records each delay, waits for none, and sets
    ``enough`` at the ``at``-th."""

    async def back_off(delay: float) -> None:
        delays.append(delay)
        if len(delays) == at:
            enough.set()
        await asyncio.sleep(0)

    return back_off


async def ended(tasks: list[asyncio.Task[None]]) -> None:
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=TIMEOUT)
        assert not pending, f"dial loops still running: {pending}"


async def test_a_restarting_robot_is_dialed_by_one_loop_which_ends_once_it_is_gone(
    robots: tuple[Peer, Peer],
) -> None:
    """Each restart of the smaller robot (goodbye, then found again) used to add a dial loop
    on the greater one, and none of them ever ended.  After its goodbye, the loop dials where
    the robot answered until that fails `GIVE_UP_AFTER` times in a row (no backoff here)."""
    big, small = robots
    home = BenchHome(users=("alice",))
    service_type = f"_h{secrets.token_hex(4)}._tcp.local."
    lost = asyncio.Event()
    refused: list[float] = []

    async def back_off(delay: float) -> None:
        refused.append(delay)
        await asyncio.sleep(0)

    def on_event(event: PeerEvent) -> None:
        _on_discovered(big, hub, event)
        if isinstance(event, PeerLost) and event.device_id == small.device_id:
            lost.set()

    async with (
        SyncService(big, home.enrol(big)) as hub,
        Discovery(
            big.device_id, hub.port, TAG, interfaces=["127.0.0.1"], service_type=service_type,
            on_event=on_event,
        ),
    ):  # fmt: skip
        hub._back_off = back_off  # type: ignore[method-assign]
        creds = home.enrol(small)
        port = 0  # the same port after the first run, as a restarted robot would have
        for _ in range(3):
            lost.clear()
            async with SyncService(small, creds, listen=("127.0.0.1", port)) as edge:
                port = edge.port
                async with Discovery(
                    small.device_id, port, TAG, interfaces=["127.0.0.1"],
                    service_type=service_type,
                ):  # fmt: skip
                    async with asyncio.timeout(TIMEOUT):
                        await hub.wait_for_peers({small.device_id})
                    assert len(dial_loops()) == 1
                async with asyncio.timeout(TIMEOUT):  # its goodbye, while the link is up
                    await lost.wait()
                refused.clear()
            await ended(dial_loops())  # once the link ended, and dials to it failed
            assert hub.dialing() == {}
            # the usual backoff before each failed attempt, growing to its maximum
            assert refused[-GIVE_UP_AFTER:] == [
                min(FIRST_RETRY_S * 2**i, MAX_RETRY_S) for i in range(GIVE_UP_AFTER)
            ]


async def test_a_robot_found_at_a_new_address_is_dialed_there_by_the_same_loop(
    robots: tuple[Peer, Peer],
) -> None:
    """And a goodbye does not cut a link that works (heartbeats say whether a peer is alive),
    nor stop the loop from dialing where the robot answered once that link ends."""
    big, small = robots
    home = BenchHome(users=("alice",))
    view = PeerView()
    view.subscribe(lambda event: _on_discovered(big, hub, event))
    with socket.socket() as unused:  # bound, never listening: every dial to it is refused
        unused.bind(("127.0.0.1", 0))
        stale = unused.getsockname()[1]
        async with (
            SyncService(big, home.enrol(big)) as hub,
            SyncService(small, home.enrol(small)) as edge,
        ):
            view.found(small.device_id, "127.0.0.1", stale)
            (first,) = dial_loops()
            view.lost(small.device_id)  # not linked: its loop ends at once
            await ended([first])
            assert hub.dialing() == {}
            view.found(small.device_id, "127.0.0.1", stale)
            (loop,) = dial_loops()
            view.found(small.device_id, "127.0.0.1", edge.port)  # it moved
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_for_peers({small.device_id})
            assert dial_loops() == [loop]
            assert hub.dialing() == {small.device_id: ("127.0.0.1", edge.port)}
            link = hub.links[small.device_id]
            assert link.dialed
            view.lost(small.device_id)
            assert hub.dialing() == {small.device_id: ("127.0.0.1", edge.port)}
            assert hub.links.get(small.device_id) is link
            link.close("gone")  # the link ends: the robot is still there, and dialed again
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_until(lambda: hub.links.get(small.device_id) not in (None, link))
            assert dial_loops() == [loop]


async def test_a_goodbye_does_not_stop_dialing_a_static_peer(robots: tuple[Peer, Peer]) -> None:
    big, small = robots
    home = BenchHome(users=("alice",))
    creds = home.enrol(small)
    async with SyncService(big, home.enrol(big), listen=None) as hub:
        async with SyncService(small, creds) as edge:
            port = edge.port
            hub.dial("127.0.0.1", port)  # as ``--peer`` does
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_for_peers({small.device_id})
            _on_discovered(big, hub, PeerLost(small.device_id))
        async with SyncService(small, creds, listen=("127.0.0.1", port)):  # it restarted
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_for_peers({small.device_id})
            assert len(dial_loops()) == 1


async def test_a_loop_whose_link_lost_to_a_duplicate_dials_again_once_the_winner_is_gone(
    robots: tuple[Peer, Peer],
) -> None:
    """Found in review: the smaller robot's loop waited on an event of the link that won; a
    second winning link replaced that event and the first was never set, so once the greater
    robot went away and came back listening only, the smaller one never dialed it again."""
    big, small = robots
    home = BenchHome(users=("alice",))
    big_creds = home.enrol(big)
    hub = SyncService(big, big_creds)
    await hub.__aenter__()
    port = hub.port
    try:
        async with SyncService(small, home.enrol(small)) as edge, asyncio.timeout(TIMEOUT):
            edge.dial("127.0.0.1", port)  # small -> big
            await edge.wait_for_peers({big.device_id})
            hub.dial("127.0.0.1", edge.port)  # big -> small wins: the smaller's own link goes
            await edge.wait_until(lambda: not edge.links[big.device_id].dialed)
            first = edge.links[big.device_id]
            hub.dial("127.0.0.1", edge.port, device=small.device_id)  # found by mDNS too
            await edge.wait_until(lambda: edge.links.get(big.device_id) not in (None, first))
            await hub.__aexit__(None, None, None)  # the greater robot goes away...
            await edge.wait_until(lambda: big.device_id not in edge.links)
            hub = SyncService(big, big_creds, listen=("127.0.0.1", port))
            await hub.__aenter__()  # ...and comes back, dialing nobody
            await edge.wait_for_peers({big.device_id})
    finally:
        await hub.__aexit__(None, None, None)


async def test_a_handshake_that_fails_backs_off_as_a_refused_dial_does(
    robots: tuple[Peer, Peer],
) -> None:
    """Found in review: any dial that opened a websocket reset the backoff, so a record naming
    this robot's own port (or a revoked peer, another household) was dialed 5 times a second."""
    big, _ = robots
    delays: list[float] = []
    enough = asyncio.Event()
    async with SyncService(big, BenchHome(users=("alice",)).enrol(big)) as hub:

        async def back_off(delay: float) -> None:
            delays.append(delay)
            if len(delays) == 5:
                enough.set()
            await asyncio.sleep(0)

        hub._back_off = back_off  # type: ignore[method-assign]
        hub.dial("127.0.0.1", hub.port, device="Z" * 52)  # its own port, under another id
        async with asyncio.timeout(TIMEOUT):
            await enough.wait()
        hub.stop_dialing("Z" * 52)
    assert delays[:5] == [0.2, 0.4, 0.8, 1.6, 3.2]


async def test_links_that_end_at_once_after_the_handshake_back_off(
    robots: tuple[Peer, Peer],
) -> None:
    """Found in review: any link that authenticated reset the backoff when it ended, so a
    peer that closed each link right after the handshake (or a reconnect asked for a grant
    that never came) was redialed 5 times a second, for good.  Links that keep ending
    sooner than `LINK_LIVED_S` back off as failed dials do."""
    big, small = robots
    home = BenchHome(users=("alice",))
    delays: list[float] = []
    enough = asyncio.Event()
    async with (
        SyncService(big, home.enrol(big)) as hub,
        SyncService(small, home.enrol(small)) as edge,
    ):
        back_off = recording(delays, enough, at=4)

        async def cut_each_link() -> None:
            while True:
                await edge.wait_until(lambda: big.device_id in edge.links)
                edge.links[big.device_id].close("cut at once")
                await edge.wait_until(lambda: big.device_id not in edge.links)

        hub._back_off = back_off  # type: ignore[method-assign]
        cutter = asyncio.create_task(cut_each_link())
        try:
            hub.dial("127.0.0.1", edge.port, device=small.device_id)
            async with asyncio.timeout(TIMEOUT):
                await enough.wait()
        finally:
            cutter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cutter
        hub.stop_dialing(small.device_id)
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6]


async def test_a_refusal_repeated_by_every_redial_is_one_warning_naming_the_peer(
    robots: tuple[Peer, Peer], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked robot redials every few seconds, for good: each refusal was a warning, and it
    named the peer "None" (refused before it said who it is; found by a new user).  The same
    refusal is now a warning once in `REPEAT_QUIET_S`, naming the peer's address."""
    monkeypatch.setattr("hearthsync.transport.link._warned", {})  # no other test's warnings
    big, _ = robots
    attempts: list[float] = []
    enough = asyncio.Event()
    async with SyncService(big, BenchHome(users=("alice",)).enrol(big)) as hub:

        async def back_off(delay: float) -> None:
            attempts.append(delay)
            if len(attempts) == 4:
                enough.set()
            await asyncio.sleep(0)

        hub._back_off = back_off  # type: ignore[method-assign]
        with caplog.at_level(logging.DEBUG, logger="hearthsync.transport.link"):
            hub.dial("127.0.0.1", hub.port, device="Y" * 52)  # its own port: refused each time
            async with asyncio.timeout(TIMEOUT):
                await enough.wait()
        hub.stop_dialing("Y" * 52)
    closed = [r for r in caplog.records if "closed (" in r.getMessage()]
    assert len(closed) >= 4, [r.getMessage() for r in closed]  # every refusal is still logged
    warned = [r.getMessage() for r in closed if r.levelno >= logging.WARNING]
    assert 1 <= len(warned) <= 2, warned  # once per side of the link, not once per redial
    assert not any("link to None" in r.getMessage() for r in closed)


async def test_a_loop_that_reaches_another_robot_leaves_that_robots_link_alone(
    robots: tuple[Peer, Peer],
) -> None:
    """A loop for one robot dialing an address where another answers (an old DHCP lease, a
    forged record) completed the handshake: the other robot replaced its good link with the
    new one, which the dialer then closed, once per redial (found in review).  It is refused
    at its HELLO now, before either side authenticates."""
    big, small = robots
    home = BenchHome(users=("alice",))
    attempts: list[float] = []
    enough = asyncio.Event()
    async with (
        SyncService(big, home.enrol(big)) as hub,
        SyncService(small, home.enrol(small)) as edge,
    ):
        back_off = recording(attempts, enough, at=3)
        hub.dial("127.0.0.1", edge.port, device=small.device_id)
        async with asyncio.timeout(TIMEOUT):
            await hub.wait_for_links(1)
            await edge.wait_for_links(1)
        ours, theirs = hub.links[small.device_id], edge.links[big.device_id]
        hub._back_off = back_off  # type: ignore[method-assign]
        hub.dial("127.0.0.1", edge.port, device="Y" * 16)  # another robot, said to be there
        async with asyncio.timeout(TIMEOUT):
            await enough.wait()
        assert hub.links[small.device_id] is ours
        assert edge.links[big.device_id] is theirs
        hub.stop_dialing("Y" * 16)


@contextlib.asynccontextmanager
async def discovered(
    big: Peer, small: Peer, home: BenchHome, service_type: str,
    on_event: Callable[[PeerEvent], None],
) -> AsyncIterator[tuple[SyncService, SyncService, AsyncZeroconf]]:  # fmt: skip
    """``big`` (its discovery events to ``on_event``) and ``small`` (announced once, never
    again) serving and discovering each other on loopback, and an attacker's zeroconf."""
    async with (
        SyncService(big, home.enrol(big)) as hub,
        SyncService(small, home.enrol(small)) as edge,
        Discovery(
            big.device_id, hub.port, TAG, interfaces=["127.0.0.1"], service_type=service_type,
            on_event=on_event,
        ),
        Discovery(
            small.device_id, edge.port, TAG, interfaces=["127.0.0.1"], service_type=service_type,
            reannounce_s=None,
        ),
        AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only) as attacker,
    ):  # fmt: skip
        yield hub, edge, attacker


async def test_a_forged_mdns_record_does_not_keep_a_dial_loop_from_the_real_robot(
    robots: tuple[Peer, Peer], tmp_path: Path
) -> None:
    """Anyone on the LAN can announce a record under a robot's device id and their own
    address.  The loop followed it and dialed only there, failing every handshake, until the
    real robot announced itself again (here: never).  Now the address where the robot proved
    itself is still dialed, every other attempt."""
    big, small = robots
    home = BenchHome(users=("alice",))
    service_type = f"_h{secrets.token_hex(4)}._tcp.local."
    forged_seen = asyncio.Event()

    def on_event(event: PeerEvent) -> None:
        _on_discovered(big, hub, event)
        if event == PeerFound(small.device_id, "127.0.0.1", impostor.port):
            forged_seen.set()

    async with (
        Peer.open(tmp_path / "r3", device="r3") as stranger,
        # the attacker's robot: it answers, and fails every handshake (another household)
        SyncService(stranger, BenchHome(seed=6).enrol(stranger)) as impostor,
        discovered(big, small, home, service_type, on_event) as (hub, _edge, attacker),
    ):
        async with asyncio.timeout(TIMEOUT):
            await hub.wait_for_peers({small.device_id})
        real = hub.links[small.device_id]
        forged = AsyncServiceInfo(
            service_type, f"{small.device_id}.{service_type}", port=impostor.port,
            properties={"tag": TAG, "id": small.device_id, "v": TXT_VERSION},
            server=f"{small.device_id}.local.", parsed_addresses=["127.0.0.1"],
        )  # fmt: skip
        await (await attacker.async_register_service(forged, cooperating_responders=True))
        async with asyncio.timeout(TIMEOUT):
            await forged_seen.wait()
        real.close("heartbeats stopped")  # the link ends: the loop dials again
        try:
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_until(lambda: hub.links.get(small.device_id) not in (None, real))
        except TimeoutError:
            pytest.fail(f"the real robot was not dialed again; dialing {hub.dialing()}")


async def test_a_loop_that_reaches_another_robot_of_the_household_drops_that_link(
    robots: tuple[Peer, Peer], tmp_path: Path
) -> None:
    """A forged record may name a robot and the address of another robot of the household,
    whose handshake succeeds.  The loop kept that link as its own until it ended, and never
    dialed the robot it was for; the link is closed now, and the address takes its turn."""
    big, small = robots
    home = BenchHome(users=("alice",))
    view = PeerView()
    view.subscribe(lambda event: _on_discovered(big, hub, event))
    async with (
        Peer.open(tmp_path / "r3", device="r3") as third,
        SyncService(third, home.enrol(third)) as other,
        SyncService(big, home.enrol(big)) as hub,
        SyncService(small, home.enrol(small)) as edge,
    ):
        view.found(small.device_id, "127.0.0.1", edge.port)
        view.found(small.device_id, "127.0.0.1", other.port)  # forged, before the first dial
        try:
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_for_peers({small.device_id})
        except TimeoutError:
            pytest.fail(f"the robot was never dialed; links to {set(hub.links)}")
        assert third.device_id not in hub.links
        assert hub.dialing() == {small.device_id: ("127.0.0.1", edge.port)}


async def test_a_forged_goodbye_does_not_stop_dialing_a_robot_still_there(
    robots: tuple[Peer, Peer],
) -> None:
    """Anyone on the LAN can register a robot's records and unregister them.  The goodbye made
    the browser report the robot lost, and its dial loop ended with the link it had, so once
    that link dropped (a Wi-Fi blip) the robot was not dialed again until it announced itself.
    Now the loop goes on dialing the address where the robot proved itself.

    What discovery reports after the goodbye is not passed on: on a LAN the browsers have
    backed off to hourly queries and nothing finds the robot again before its next
    announcement, but these browsers, just started, query again within a second."""
    big, small = robots
    home = BenchHome(users=("alice",))
    service_type = f"_h{secrets.token_hex(4)}._tcp.local."
    lost = asyncio.Event()

    def on_event(event: PeerEvent) -> None:
        if not lost.is_set():
            _on_discovered(big, hub, event)
        if event == PeerLost(small.device_id):
            lost.set()

    async with discovered(big, small, home, service_type, on_event) as (hub, edge, attacker):
        async with asyncio.timeout(TIMEOUT):
            await hub.wait_for_peers({small.device_id})
        real = hub.links[small.device_id]
        forged = AsyncServiceInfo(  # the robot's own records, word for word
            service_type, f"{small.device_id}.{service_type}", port=edge.port,
            properties={"tag": TAG, "id": small.device_id, "v": TXT_VERSION},
            server=f"{small.device_id}.local.", parsed_addresses=["127.0.0.1"],
        )  # fmt: skip
        await (await attacker.async_register_service(forged, cooperating_responders=True))
        await (await attacker.async_unregister_service(forged))  # the goodbye
        async with asyncio.timeout(TIMEOUT):
            await lost.wait()
        real.close("heartbeats stopped")  # the link ends: the loop must dial again
        try:
            async with asyncio.timeout(TIMEOUT):
                await hub.wait_until(lambda: hub.links.get(small.device_id) not in (None, real))
        except TimeoutError:
            pytest.fail(f"the robot was not dialed again after a forged goodbye: {hub.dialing()}")
