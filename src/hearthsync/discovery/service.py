"""``Discovery``: the one service a peer opens to find the household's other robots.

It owns a zeroconf instance, an :class:`~.mdns.Advertiser`, a :class:`~.mdns.Browser` and the
:class:`~.static.StaticPeers` given on the command line, all writing into one
:class:`~.events.PeerView`.
Arguments are validated in the constructor, before any socket is opened (DESIGN principle 5:
bad input gets a clear error and changes nothing).

    async with Discovery(device_id, 8765, tag, static=["10.0.0.7:8765"]) as discovery:
        async for event in discovery.events():
            ...  # PeerFound: dial it (if our id is the greater); PeerLost: stop dialling

Leaving the block sends the mDNS goodbye (browsers drop us at once), closes zeroconf and ends
every event stream.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncZeroconf

from hearthsync.discovery.events import Callback, EventStream, PeerView
from hearthsync.discovery.mdns import (
    SERVICE_TYPE,
    Advertiser,
    Browser,
    IgnoredCallback,
    check_port,
    check_service_type,
    check_tag,
)
from hearthsync.discovery.static import STATIC_PREFIX, StaticPeer, StaticPeers, parse_peers
from hearthsync.errors import ClosedError, LocalError, ValidationError
from hearthsync.ids import check_device

__all__ = ["Discovery", "default_addresses"]

log = logging.getLogger(__name__)

#: The mDNS group; "connecting" a UDP socket to it sends nothing but picks the outgoing
#: interface, whose address is the one other robots on the LAN can reach.
_MDNS_GROUP = ("224.0.0.251", 5353)


class Discovery:
    """Advertise this device and report the household's other peers, by mDNS and/or statically.

    ``interfaces`` limits zeroconf to these local addresses (tests pass ``["127.0.0.1"]``);
    ``None`` means every interface.  ``addresses`` are what the A records advertise; by default
    the ``interfaces`` themselves, else the address of the interface that routes multicast.
    ``reannounce_s=None`` turns periodic re-announcement off (see ``mdns`` for why it exists).
    With ``enable_mdns=False`` only the ``static`` peers are reported and no socket is opened.
    ``preferred(device_id)``: peers that take the place of others in a full view (`PeerView`;
    `hearth run` prefers the robots it holds the certificates of).
    """

    def __init__(
        self,
        device_id: str,
        port: int,
        tag: str,
        *,
        service_type: str = SERVICE_TYPE,
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
        reannounce_s: float | None = 30.0,
        static: Sequence[str | StaticPeer] = (),
        enable_mdns: bool = True,
        on_event: Callback | None = None,
        on_ignored: IgnoredCallback | None = None,
        preferred: Callable[[str], bool] | None = None,
    ) -> None:
        self.device_id = check_device(device_id)
        self.port = check_port(port)
        self.tag = check_tag(tag)
        self.service_type = check_service_type(service_type)
        self.interfaces = _check_ips(interfaces, field="interfaces")
        self.addresses = _check_ips(addresses, field="addresses")
        if reannounce_s is not None and reannounce_s <= 0:
            raise ValidationError("reannounce_s must be positive or None", field="reannounce_s")
        self.reannounce_s = reannounce_s
        self.static = parse_peers(static)
        self.enable_mdns = enable_mdns
        self.view = PeerView(preferred)
        if on_event is not None:
            self.view.subscribe(on_event)
        self._on_ignored = on_ignored
        self._stack: contextlib.AsyncExitStack | None = None
        self._browser: Browser | None = None
        self.advertiser: Advertiser | None = None
        self._state = "new"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise LocalError(f"a Discovery can be entered once; this one is {self._state}")
        self._state = "open"
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self._close_view)
            await stack.enter_async_context(StaticPeers(self.static, self.view))
            if self.enable_mdns:
                await self._start_mdns(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _start_mdns(self, stack: contextlib.AsyncExitStack) -> None:
        """Browser first, so no announcement that arrives while we register is missed."""
        azc = AsyncZeroconf(interfaces=self._zc_interfaces(), ip_version=self._ip_version())
        stack.push_async_callback(azc.async_close)  # runs last: after the goodbye is sent
        self._browser = await stack.enter_async_context(
            Browser(
                azc,
                self.device_id,
                self.tag,
                service_type=self.service_type,
                view=self.view,
                on_ignored=self._on_ignored,
            )
        )
        self.advertiser = await stack.enter_async_context(
            Advertiser(
                azc,
                self.device_id,
                self.port,
                self.tag,
                addresses=self.addresses or self.interfaces or default_addresses(),
                service_type=self.service_type,
                reannounce_s=self.reannounce_s,
            )
        )

    def _close_view(self) -> None:
        self._state = "closed"
        self.view.close()

    def _zc_interfaces(self) -> list[str] | InterfaceChoice:
        return list(self.interfaces) if self.interfaces else InterfaceChoice.All

    def _ip_version(self) -> IPVersion:
        """V4Only unless an IPv6 interface was named: zeroconf binds fewer sockets that way."""
        versions = {ipaddress.ip_address(ip).version for ip in self.interfaces}
        if versions == {6}:
            return IPVersion.V6Only
        return IPVersion.All if 6 in versions else IPVersion.V4Only

    # -- what consumers use ------------------------------------------------------------------

    def peers(self) -> dict[str, tuple[str, int]]:
        """The current view: device id (or ``static:HOST:PORT``) -> (host, port)."""
        return self.view.peers()

    def events(self, *, replay: bool = True) -> EventStream:
        """A stream of ``PeerFound`` / ``PeerLost``; starts with the known peers if ``replay``.

        The stream ends when the discovery closes; ``stream.close()`` leaves it earlier.
        """
        return self.view.stream(replay=replay)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(event)`` on every change; returns the function that unsubscribes."""
        return self.view.subscribe(callback)

    def forget(self, device_id: str) -> None:
        """Drop an mDNS peer whose heartbeats stopped; it is found again when it re-announces.

        A ``static:`` key is left alone: nothing would ever report it again, and the operator
        asked for that address to be dialled, so the transport keeps retrying it.
        """
        if self._state != "open":
            raise ClosedError("discovery is not running")
        if device_id.startswith(STATIC_PREFIX):
            return
        if self._browser is not None:
            self._browser.forget(device_id)
        else:
            self.view.lost(device_id)

    def ignored(self) -> dict[str, str]:
        """Services of our type seen and not reported, with the reason (for diagnostics)."""
        return self._browser.ignored() if self._browser is not None else {}


def default_addresses() -> list[str]:
    """The IPv4 address of the interface that routes multicast, else loopback.

    Only one address: a robot on both Wi-Fi and Ethernet should pass ``addresses`` itself.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_MDNS_GROUP)
            address: str = probe.getsockname()[0]
        except OSError as exc:
            log.warning("discovery: no route for multicast (%s); advertising 127.0.0.1", exc)
            return ["127.0.0.1"]
    return [address]


def _check_ips(values: Sequence[str] | None, *, field: str) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        raise ValidationError(f"{field} must be a list of IP addresses, not a string", field=field)
    checked = []
    for value in values:
        try:
            checked.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise ValidationError(
                f"{field}: {value!r:.60} is not an IP address", field=field
            ) from None
    return tuple(checked)
