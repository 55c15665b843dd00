"""A LAN of network namespaces: robots on one Ethernet bridge, where mDNS itself can be cut.

Process mode behind TCP proxies (`hearthsync.chaos.process`) owns every byte between two
robots, but it has to turn mDNS off and hand each robot its peers' addresses: the proxies
cannot stand between multicast packets.  Here each robot runs in a network namespace of its
own, with one interface plugged into a bridge that lives in a namespace of its own (the
switch), so robots find each other by mDNS exactly as they would at home, and a cut is made
where a real one happens: the robot's cable is unplugged from the switch.

* `cut` detaches the robot's port from the bridge.  Its interface stays up with its address
  (no carrier loss, no error for the robot to see): what it sends goes nowhere and nothing
  reaches it, mDNS announcements included.  A **silent partition**: heartbeats notice a long one.
* `heal` plugs it back.  TCP streams that survived resume; mDNS does not tell anyone (a peer
  whose link died is found again by its dialer's retries or the advertisers' periodic
  re-announcements).

Needs root and ``ip`` (iproute2) with network namespaces; `unavailable` says why not, so tests
skip with a reason instead of failing.  Leaving the ``async with`` block deletes every
namespace it made (which removes their interfaces and the bridge), whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from types import TracebackType

from hearthsync.errors import HearthError

SUBNET = "10.77.0"  #: every LAN has its own switch namespace: subnets never meet
PREFIX_LEN = 24
BRIDGE = "br0"
COMMAND_TIMEOUT_S = 10.0


class NetnsError(HearthError):
    """A namespace, interface or bridge could not be made or changed."""


def unavailable() -> str | None:
    """Why this machine cannot run a LAN of namespaces (``None``: it can)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"hs-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


class Lan:
    """``async with Lan(["r0", "r1", "r2"]) as lan:`` a switch and one namespace per robot.

    `prefix` is what runs a command inside a robot's namespace (``ip netns exec NAME``),
    `address` the robot's IPv4 address on the LAN.
    """

    def __init__(self, robots: Sequence[str]) -> None:
        if not 1 <= len(robots) <= 200:
            raise ValueError("a LAN holds 1 to 200 robots")
        self.robots = list(robots)
        self.tag = uuid.uuid4().hex[:6]  #: in every name, so parallel LANs never collide
        self.switch = f"hs-{self.tag}-sw"
        self._made: list[str] = []
        self._cut: set[str] = set()

    def namespace(self, robot: str) -> str:
        return f"hs-{self.tag}-{self.robots.index(robot)}"

    def address(self, robot: str) -> str:
        return f"{SUBNET}.{self.robots.index(robot) + 1}"

    def prefix(self, robot: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(robot)]

    def _port(self, robot: str) -> str:
        """The switch side of the robot's cable (interface names hold 15 characters)."""
        return f"hs{self.tag}p{self.robots.index(robot)}"

    def _nic(self, robot: str) -> str:
        return f"hs{self.tag}n{self.robots.index(robot)}"

    async def __aenter__(self) -> Lan:
        try:
            await self._make()
        except BaseException:
            await self._delete()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._delete()

    async def _make(self) -> None:
        await self._namespace(self.switch)
        sw = ["-n", self.switch]
        await _ip(*sw, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        await _ip(*sw, "link", "set", BRIDGE, "up")
        for robot in self.robots:
            ns, nic, port = self.namespace(robot), self._nic(robot), self._port(robot)
            await self._namespace(ns)
            await _ip("link", "add", nic, "netns", ns, "type", "veth",
                      "peer", "name", port, "netns", self.switch)  # fmt: skip
            await _ip(*sw, "link", "set", port, "master", BRIDGE, "up")
            inside = ["-n", ns]
            await _ip(*inside, "link", "set", "lo", "up")
            await _ip(*inside, "addr", "add", f"{self.address(robot)}/{PREFIX_LEN}", "dev", nic)
            await _ip(*inside, "link", "set", nic, "up")
            # multicast (mDNS) leaves by the LAN interface, as a default route would send it
            await _ip(*inside, "route", "add", "224.0.0.0/4", "dev", nic)

    async def _namespace(self, name: str) -> None:
        await _ip("netns", "add", name)
        self._made.append(name)

    async def _delete(self) -> None:
        for name in reversed(self._made):
            with contextlib.suppress(NetnsError):
                await _ip("netns", "delete", name)
        self._made.clear()

    async def cut(self, robot: str) -> None:
        """Unplug ``robot`` from the switch (silently: its interface stays up)."""
        await _ip("-n", self.switch, "link", "set", self._port(robot), "nomaster")
        self._cut.add(robot)

    async def heal(self) -> None:
        """Plug every robot cut off back into the switch."""
        for robot in sorted(self._cut):
            await _ip("-n", self.switch, "link", "set", self._port(robot), "master", BRIDGE)
        self._cut.clear()

    @property
    def cut_off(self) -> frozenset[str]:
        return frozenset(self._cut)


async def _ip(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise NetnsError(f"'ip {' '.join(args)}' did not finish") from None
    if process.returncode != 0:
        raise NetnsError(f"'ip {' '.join(args)}' failed: {err.decode().strip()}")
