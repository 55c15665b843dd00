"""Process mode on a LAN of network namespaces: robots find each other by mDNS, and a cut
unplugs a robot from the bridge, mDNS included (hearthsync.chaos.netns).

Skipped, with the reason, where the machine has no network namespaces (not Linux, not root).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from hearthsync.chaos.netns import Lan, unavailable
from hearthsync.chaos.process import run_processes

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")

PORT = 9100
SERVE = f"""
import socket
server = socket.create_server(("{{address}}", {PORT}))
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.sendall(b"hello")
    connection.close()
"""
DIAL = f"""
import socket
try:
    with socket.create_connection(("{{address}}", {PORT}), timeout=1.0) as connection:
        print(connection.recv(5).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def dial(lan: Lan, robot: str, target: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *lan.prefix(robot), sys.executable, "-c", DIAL.format(address=lan.address(target)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(10):
        out, _ = await process.communicate()
    return out.decode().strip()


@pytest.mark.timeout(60)
async def test_a_cut_unplugs_a_robot_silently_and_a_heal_plugs_it_back() -> None:
    async with Lan(["r0", "r1", "r2"]) as lan:
        assert lan.tag in namespaces()
        server = await asyncio.create_subprocess_exec(
            *lan.prefix("r1"), sys.executable, "-c", SERVE.format(address=lan.address("r1")),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            async with asyncio.timeout(10):
                assert await server.stdout.readline() == b"listening\n"
            assert await dial(lan, "r0", "r1") == "hello"
            await lan.cut("r1")
            assert lan.cut_off == {"r1"}
            # silent: no refusal, no unreachable host, only nothing (as a pulled cable)
            assert await dial(lan, "r0", "r1") == "TimeoutError"
            assert await dial(lan, "r2", "r1") == "TimeoutError"
            await lan.heal()
            assert await dial(lan, "r0", "r1") == "hello"
            assert await dial(lan, "r2", "r1") == "hello"
        finally:
            server.kill()
            await server.wait()
    assert lan.tag not in namespaces()  # every namespace, and with them the bridge, is gone


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [0, 1])
async def test_robots_found_by_mdns_lose_nothing_through_a_cut_kills_and_a_heal(
    tmp_path: Path, seed: int
) -> None:
    report = await run_processes(tmp_path, peers=3, seed=seed, edits=12, netns=True)
    trace = " | ".join(report.fault_trace)
    assert report.ok, trace
    assert report.acknowledged_writes == report.verified_writes + report.exempt_writes == 13
    assert report.forgotten == "frank"
    assert report.forgetting_remnants == []
    for word in (" cut ", " kill ", " restart ", " heal"):
        assert word in f"{trace} ", trace
    victim = next(line.split()[2] for line in report.fault_trace if " cut " in line)
    assert any(robot == victim for robot, _ in report.isolated_writes), report.isolated_writes
    assert report.leaked_writes == []
    assert report.bytes_forwarded == 0  # no proxy: the robots talked over the bridge


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_long_cut_drops_every_link_across_it_and_the_heal_links_them_again(
    tmp_path: Path,
) -> None:
    """Past the heartbeat's timeout nobody keeps a link across the cut; after the heal the
    robots link up again without any static address: dialers retry, advertisers re-announce."""
    report = await run_processes(tmp_path, peers=3, seed=2, edits=6, cut_s=30.0, netns=True)
    assert report.links_across_cut == 0, report.fault_trace
    assert report.ok, report
