"""Real zeroconf on 127.0.0.1: finding, filtering, goodbyes, re-announcement, a killed robot.

Each test uses its own service type (see conftest), so the only answers are the ones the
test itself sets up.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zeroconf.const
from zeroconf import DNSOutgoing, DNSPointer, IPVersion
from zeroconf.asyncio import AsyncZeroconf

from hearthsync.discovery import Discovery, PeerFound, PeerLost
from hearthsync.discovery.mdns import MAX_RESOLVING
from hearthsync.errors import LocalError
from tests.discovery.support import OTHER_TAG, TAG, TIMEOUT_S, Recorder

CHILD = Path(__file__).with_name("advertise_child.py")
Local = Callable[..., Discovery]


async def test_household_peers_find_each_other_and_nobody_else(local: Local) -> None:
    hub_events, hub_ignored, kitchen_events = Recorder(), Recorder(), Recorder()
    async with (
        # The neighbour's robot is on the LAN first, so the hub sees it before anyone else.
        local("neighbour", 9000, tag=OTHER_TAG),
        local("hub", 9001, on_event=hub_events, on_ignored=hub_ignored) as hub,
        local("kitchen", 9002, on_event=kitchen_events),
        local("hall", 9003),
    ):
        assert await hub_events.found("kitchen") == PeerFound("kitchen", "127.0.0.1", 9002)
        assert await hub_events.found("hall") == PeerFound("hall", "127.0.0.1", 9003)
        await kitchen_events.found("hub")
        await kitchen_events.found("hall")
        # The browser did see the neighbour and itself, and chose not to report them.
        await hub_ignored.wait_for(lambda i: i[0].startswith("neighbour.") and "household" in i[1])
        await hub_ignored.wait_for(lambda i: i[0].startswith("hub.") and i[1] == "own device")

        assert hub.peers() == {"kitchen": ("127.0.0.1", 9002), "hall": ("127.0.0.1", 9003)}
        assert hub_events.ids() == {"kitchen", "hall"}
        assert "neighbour" not in kitchen_events.ids()
        assert "kitchen" not in kitchen_events.ids()


async def test_closing_an_advertiser_sends_a_goodbye(local: Local) -> None:
    async with local("hub", 9001) as hub:
        stream = hub.events()
        async with local("kitchen", 9002):
            assert await asyncio.wait_for(anext(stream), TIMEOUT_S) == PeerFound(
                "kitchen", "127.0.0.1", 9002
            )
        # Without the goodbye the records would stay cached for their TTL (minutes).
        assert await asyncio.wait_for(anext(stream), TIMEOUT_S) == PeerLost("kitchen")
        assert hub.peers() == {}
    assert [event async for event in stream] == []  # the stream ends with the discovery


async def test_reannouncement_brings_back_a_forgotten_peer(local: Local) -> None:
    """``forget`` stands for a partition or failed heartbeats: only an announcement undoes it.

    ``kitchen`` never re-announces, ``hall`` does every second: once ``hall`` is back, a
    re-announcement interval has passed and ``kitchen`` is still gone, so it is the
    re-announcement, not some query or cache refresh, that brings a peer back.
    """
    events = Recorder()
    async with (
        local("hub", 9001, on_event=events) as hub,
        local("kitchen", 9002, reannounce_s=None) as kitchen,
        local("hall", 9003, reannounce_s=1.0) as hall,
    ):
        await events.found("kitchen")
        await events.found("hall")
        assert kitchen.advertiser is not None
        assert hall.advertiser is not None
        await kitchen.advertiser.async_wait_announced()
        await hall.advertiser.async_wait_announced()
        # A barrier: once the hub has found a later robot, it has read every earlier packet,
        # so no leftover start-up announcement can undo the forgetting below.
        async with local("porch", 9004, reannounce_s=None):
            await events.found("porch")
        await events.lost("porch")
        for _ in range(5):
            hub.forget("kitchen")
            hub.forget("hall")
            assert hub.peers() == {}
            since = events.mark()

            await events.found("hall", within=3 * 1.0 + 1, since=since)
            if "kitchen" not in hub.peers():
                break
            # The hub's browser asks now and then, and the answers to a question bring back
            # both (under load one came in the window): this round shows nothing, go again
        else:
            pytest.fail("in every round an answer to a query brought back the silent robot too")
        # (A burst of three packets already under way at forget time may be what brings it.)
        assert hall.advertiser.reannouncements >= 1
        assert hub.peers() == {"hall": ("127.0.0.1", 9003)}
        assert events.events()[since - 2 :] == [
            PeerLost("kitchen"),
            PeerLost("hall"),
            PeerFound("hall", "127.0.0.1", 9003),
        ]


async def test_a_killed_robot_stays_listed_until_heartbeats_say_otherwise(
    local: Local, service_type: str
) -> None:
    """mDNS cannot tell a robot that lost power from a quiet one: liveness is not its job.

    The advertiser runs in another process and is SIGKILLed, so no goodbye is sent.  The
    browser keeps listing it (the PTR is cached for 75 minutes) while it goes on finding new
    robots; the transport, whose websocket pings fail, is what calls ``forget``.
    """
    events = Recorder()
    async with local("hub", 9001, on_event=events) as hub:
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), service_type, "attic", "9004", TAG,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            line = await asyncio.wait_for(_readline(child), 15)
            assert line == "ready"
            assert await events.found("attic") == PeerFound("attic", "127.0.0.1", 9004)
        finally:
            child.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(child.wait(), TIMEOUT_S) == -signal.SIGKILL

        # Time passes and the browser keeps working: a robot that joins now is found...
        async with local("hall", 9003):
            await events.found("hall")
            # ...while the dead one is still listed and was never reported lost.
            assert hub.peers()["attic"] == ("127.0.0.1", 9004)
            assert PeerLost("attic") not in events.events()

            hub.forget("attic")
            await events.lost("attic")
            assert "attic" not in hub.peers()


async def _readline(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    return (await process.stdout.readline()).decode().strip()


async def test_a_discovery_is_entered_once(local: Local) -> None:
    discovery = local("hub", 9001)
    async with discovery:
        pass
    with pytest.raises(LocalError, match="entered once"):
        await discovery.__aenter__()


async def test_forged_ptrs_are_resolved_a_few_at_a_time_and_robots_are_still_found(
    local: Local, service_type: str
) -> None:
    """Found in review: each PTR naming a new instance started a resolve that multicast
    queries for 3 s, without bound (2,000 forged names, 43 KB: 2,000 resolves, 12,000 query
    packets in 5 s), and an alias of another type raised into the loop's handler.  Now at
    most `MAX_RESOLVING` run, the rest wait, and a robot whose announcement carries its
    records is taken from the cache at once, however many wait."""
    forged = [f"fake-{n:03d}.{service_type}" for n in range(MAX_RESOLVING * 8)]
    aliases = ["x.other._tcp.local.", "plain.local."]
    hub_events, hub_ignored = Recorder(), Recorder()
    async with local("hub", 9001, on_event=hub_events, on_ignored=hub_ignored) as hub:
        forger = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            await forger.zeroconf.async_wait_for_start()
            out = DNSOutgoing(zeroconf.const._FLAGS_QR_RESPONSE | zeroconf.const._FLAGS_AA)
            for name in [*forged, *aliases]:
                ptr = DNSPointer(service_type, zeroconf.const._TYPE_PTR,
                                 zeroconf.const._CLASS_IN, 4500, name)  # fmt: skip
                out.add_answer_at_time(ptr, 0)
            forger.zeroconf.async_send(out)
            for alias in aliases:
                await hub_ignored.wait_for(
                    lambda i, a=alias: i[0] == a and "not an instance" in i[1]
                )

            async with local("attic", 9004):
                await hub_events.found("attic")
            browser = hub._browser
            assert browser is not None
            assert len(browser._resolving) <= MAX_RESOLVING
            assert browser._waiting  # the flood was more than the slots
        finally:
            await forger.async_close()
