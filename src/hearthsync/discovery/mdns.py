"""mDNS advertiser and browser over python-zeroconf: a thin adapter (STYLE §1).

What goes on the wire (one DNS-SD service per device, RFC 6763):

    <device id>._hearth._tcp.local.   SRV  0 0 <websocket port> <device id>.local.
                                      TXT  tag=<household discovery tag> id=<device id> v=1
    <device id>.local.                A    <each advertised address>

The ``tag`` is derived from a household secret by the caller, so robots of different
households on one LAN can tell each other apart without either revealing its household id or
name to everyone on the network.  It is a filter, not a credential: anyone who sniffs it can
replay it, so a found peer is only a candidate until the websocket handshake (DESIGN: sync
protocol step 2) proves it holds a certificate of this household.

Two things mDNS does not do, and what we do instead:

* It never notices a robot that lost power or left the network silently: its records live in
  every cache for their TTL (75 minutes for the PTR).  Liveness comes from websocket
  heartbeats: a link whose heartbeats stop ends, and its dial loop keeps trying the address
  where the peer last proved itself (`hearthsync.transport.addresses`), whatever the view says.
  :meth:`Browser.forget` drops a peer from the view until it announces itself again, for a
  caller that wants the view to follow the links; `hearth run` does not need it.
* It does not rediscover after a late heal: browsers back off their queries to about once an
  hour.  So the :class:`Advertiser` re-announces every ``reannounce_s`` seconds, and the
  :class:`Browser` treats any announcement of a peer missing from its view as "found", even when
  zeroconf's cache already held it (zeroconf itself only reports records that are new to its
  cache, which a forgotten-but-cached peer is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self

from zeroconf import (
    BadTypeInNameException,
    IPVersion,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)

# Both are re-exported by zeroconf but missing from its __all__, which mypy --strict honours.
from zeroconf._dns import DNSPointer
from zeroconf._utils.name import service_type_name
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from hearthsync.discovery.events import PeerView
from hearthsync.errors import ValidationError
from hearthsync.ids import check_device
from hearthsync.protocol.session import PROTOCOL_VERSION

__all__ = [
    "SERVICE_TYPE",
    "Advertiser",
    "Browser",
    "IgnoredCallback",
    "check_port",
    "check_service_type",
    "check_tag",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_hearth._tcp.local."
#: TXT ``v``: peers speaking another protocol version are ignored, not dialled to fail.
TXT_VERSION = str(PROTOCOL_VERSION)
#: How long one resolve of SRV/TXT/A may take before the service is skipped until it re-announces.
RESOLVE_TIMEOUT_MS = 3000
#: Resolves under way at once; names announced meanwhile wait (at most `MAX_WAITING`, the
#: oldest dropped: announced again, a name comes back).  Each resolve multicasts queries for
#: up to `RESOLVE_TIMEOUT_MS`: 2,000 forged PTRs, 43 KB, made a robot run 2,000 resolves
#: and multicast 12,000 queries in 5 s (found in review; DESIGN invariant 5)
MAX_RESOLVING = 16
MAX_WAITING = 256
#: Names ignored, and why, remembered at most (the oldest forgotten first)
MAX_IGNORED = 1024
_TAG_RE = re.compile(r"[0-9a-f]{8,64}")

#: ``on_ignored(service name, reason)``: why a service of our type was not reported.
IgnoredCallback = Callable[[str, str], None]


def check_tag(tag: str) -> str:
    """The discovery tag: 8-64 lower-case hex characters (it is a hash, never a name)."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise ValidationError(
            f"discovery tag must be 8-64 lower-case hex characters, got {tag!r:.80}", field="tag"
        )
    return tag


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValidationError(f"port must be in 1-65535, got {port!r}", field="port")
    return port


def check_service_type(service_type: str) -> str:
    """A DNS-SD service type such as ``_hearth._tcp.local.`` (the label at most 15 characters)."""
    try:
        zeroconf_name = service_type_name(service_type, strict=True)
    except BadTypeInNameException as exc:
        raise ValidationError(
            f"bad mDNS service type {service_type!r}: {exc}", field="service_type"
        ) from None
    if zeroconf_name != service_type:
        raise ValidationError(
            f"{service_type!r} is a service instance, not a service type", field="service_type"
        )
    return service_type


class Advertiser:
    """Registers this device's service; re-announces it; says goodbye on exit.

    ``async with Advertiser(azc, device_id, port, tag, addresses=[...]):`` -- on entry the
    service is registered and its first announcements sent; on exit the goodbye (TTL 0)
    packets are sent before returning, so browsers drop us at once instead of after the TTL.
    """

    def __init__(
        self,
        azc: AsyncZeroconf,
        device_id: str,
        port: int,
        tag: str,
        *,
        addresses: Sequence[str],
        service_type: str = SERVICE_TYPE,
        reannounce_s: float | None = 30.0,
    ) -> None:
        if not addresses:
            raise ValidationError("an advertiser needs at least one address", field="addresses")
        if reannounce_s is not None and reannounce_s <= 0:
            raise ValidationError("reannounce_s must be positive or None", field="reannounce_s")
        self._azc = azc
        self.reannounce_s = reannounce_s
        self.info = AsyncServiceInfo(
            check_service_type(service_type),
            f"{check_device(device_id)}.{service_type}",
            port=check_port(port),
            properties={"tag": check_tag(tag), "id": device_id, "v": TXT_VERSION},
            server=f"{device_id}.local.",
            parsed_addresses=list(addresses),
        )
        #: how many re-announcements were sent (not counting the registration)
        self.reannouncements = 0
        self._task: asyncio.Task[None] | None = None
        self._announcing: Awaitable[object] | None = None

    async def __aenter__(self) -> Self:
        # No probing (cooperating_responders): a device id is the hash of a public key, so a
        # clash means a cloned or spoofed device, which probing cannot stop and the handshake
        # does; probing would only add about a second to every start.  The returned future
        # sends the three announcements (0.45 s); the service already answers queries, so
        # entering does not wait for them.
        self._announcing = await self._azc.async_register_service(
            self.info, cooperating_responders=True
        )
        if self.reannounce_s is not None:
            self._task = asyncio.create_task(self._reannounce(self.reannounce_s))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.async_wait_announced()  # an announcement after the goodbye would undo it
        # The inner await waits for the goodbye packets: without it the zeroconf instance can
        # close first and no goodbye is ever sent.
        await (await self._azc.async_unregister_service(self.info))

    async def async_wait_announced(self) -> None:
        """Return once the registration's announcements (three, 0.45 s) have all been sent."""
        if self._announcing is not None:
            await self._announcing

    async def _reannounce(self, interval_s: float) -> None:
        """Resend our records every ``interval_s``: the only way a browser that lost us during
        a partition, or forgot us after failed heartbeats, finds us again without waiting for
        its hourly query."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                sending = await self._azc.async_update_service(self.info)
                self.reannouncements += 1
                await sending  # never two bursts at once, however short the interval
            except Exception as exc:  # no network for now: discovery must not stop the peer
                log.warning("discovery: re-announcing %s failed: %r", self.info.name, exc)


class _Announcements(RecordUpdateListener):
    """Sees every PTR answer for our type, including ones zeroconf's cache already holds.

    zeroconf's browser only reports a service when its PTR is new to the cache; a re-announced
    peer that we forgot is not new to it, so without this hook re-announcing would not help.
    """

    def __init__(self, service_type: str, seen: Callable[[str], None]) -> None:
        self._type = service_type
        self._seen = seen

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if (
                isinstance(record, DNSPointer)
                and record.name == self._type
                and not record.is_expired(now)
            ):
                self._seen(record.alias)

    def async_update_records_complete(self) -> None:
        """Nothing to do: the resolve scheduled by ``seen`` runs after the cache commits."""


class Browser:
    """Browses our service type and keeps :attr:`view` in step with the household's peers.

    A service is reported only when its TXT ``tag`` equals ours, its ``id`` is a valid device
    id equal to its instance name and not our own, and its ``v`` is our protocol version.
    Anything else is recorded in :meth:`ignored` (and passed to ``on_ignored``) with the
    reason, which is what an operator needs when two robots "do not see each other"; a peer
    already in the view whose records change to something ignored is reported lost.
    """

    def __init__(
        self,
        azc: AsyncZeroconf,
        device_id: str,
        tag: str,
        *,
        service_type: str = SERVICE_TYPE,
        view: PeerView | None = None,
        on_ignored: IgnoredCallback | None = None,
    ) -> None:
        self._azc = azc
        self.device_id = check_device(device_id)
        self.tag = check_tag(tag)
        self.service_type = check_service_type(service_type)
        self.view = view if view is not None else PeerView()
        self._on_ignored = on_ignored
        self._names: dict[str, str] = {}  # service name -> device id, for what is in the view
        self._ignored: dict[str, str] = {}  # service name -> reason
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # changed while resolving: resolve once more
        self._waiting: dict[str, None] = {}  # announced while `MAX_RESOLVING` ran, oldest first
        self._closed = False
        self._browser: AsyncServiceBrowser | None = None
        self._listener = _Announcements(service_type, self._on_announced)

    async def __aenter__(self) -> Self:
        zc = self._azc.zeroconf
        zc.async_add_listener(self._listener, None)
        self._browser = AsyncServiceBrowser(zc, self.service_type, handlers=[self._on_change])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True  # no resolve starts now (one ending would start what waits)
        self._waiting.clear()
        self._azc.zeroconf.async_remove_listener(self._listener)
        if self._browser is not None:
            await self._browser.async_cancel()
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def peers(self) -> dict[str, tuple[str, int]]:
        """The current view: device id -> (host, port)."""
        return self.view.peers()

    def ignored(self) -> dict[str, str]:
        """Services of our type that were seen and not reported: service name -> reason."""
        return dict(self._ignored)

    def forget(self, device_id: str) -> None:
        """Drop a peer from the view (emits ``PeerLost``) until it announces itself again.

        For the transport to call when a peer's websocket heartbeats stop: mDNS would keep
        listing it for up to its TTL.  The peer's next re-announcement makes it found again.
        """
        for name, known in list(self._names.items()):
            if known == device_id:
                del self._names[name]
        self.view.lost(device_id)

    # -- zeroconf callbacks (event loop) ----------------------------------------------------

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._on_removed(name)
        else:  # Added, or Updated: an address, port or TXT changed
            self._ignored.pop(name, None)
            self._resolve_soon(name)

    def _on_announced(self, name: str) -> None:
        """A PTR for ``name`` arrived; resolve it only if it is neither in view nor ignored."""
        if name not in self._names and name not in self._ignored:
            self._resolve_soon(name)

    def _on_removed(self, name: str) -> None:
        task = self._resolving.pop(name, None)
        if task is not None:
            task.cancel()
        self._again.discard(name)
        self._waiting.pop(name, None)
        self._ignored.pop(name, None)
        device_id = self._names.pop(name, None)
        if device_id is not None:
            self.view.lost(device_id)

    # -- resolving --------------------------------------------------------------------------

    def _resolve_soon(self, name: str) -> None:
        """Resolve on a task of its own: callbacks run before the cache holds the records.
        A name that cannot be a peer's (another type's, or no device id) is ignored unresolved:
        an alias of another type raised out of the resolve, into the loop's handler (found in
        review)."""
        if self._closed:
            return
        if name in self._resolving:
            self._again.add(name)
            return
        device_id = name.removesuffix(f".{self.service_type}")
        if device_id == name or not _is_name(device_id):
            self._ignore(name, "not an instance name of our service type")
            return
        if len(self._resolving) >= MAX_RESOLVING:
            # a robot's announcement carries its SRV, TXT and address with the PTR: once the
            # packet is in the cache (after this callback), it needs no query, and no slot
            asyncio.get_running_loop().call_soon(self._from_cache_or_wait, name)
            return
        self._resolving[name] = asyncio.create_task(self._resolve(name))

    def _from_cache_or_wait(self, name: str) -> None:
        """Accept ``name`` from what the cache holds, or queue it for a resolve slot."""
        if self._closed or name in self._resolving:
            return
        info = AsyncServiceInfo(self.service_type, name)  # a name `_resolve_soon` checked
        if info.load_from_cache(self._azc.zeroconf):
            self._accept(name, info)
            return
        self._waiting.pop(name, None)
        self._waiting[name] = None  # the newest last
        if len(self._waiting) > MAX_WAITING:
            del self._waiting[next(iter(self._waiting))]

    async def _resolve(self, name: str) -> None:
        try:
            info = AsyncServiceInfo(self.service_type, name)
            if await info.async_request(self._azc.zeroconf, RESOLVE_TIMEOUT_MS):
                self._accept(name, info)
            else:
                log.info("discovery: %s did not resolve within %d ms", name, RESOLVE_TIMEOUT_MS)
        except BadTypeInNameException as exc:  # what the name check above let through
            self._ignore(name, f"not a name of our service type: {exc}")
        finally:
            self._resolving.pop(name, None)
        if name in self._again:
            self._again.discard(name)
            self._resolve_soon(name)
        while self._waiting and len(self._resolving) < MAX_RESOLVING:
            waiting = next(iter(self._waiting))
            del self._waiting[waiting]
            self._resolve_soon(waiting)

    def _accept(self, name: str, info: AsyncServiceInfo) -> None:
        """Validate what a resolved service claims (DESIGN invariant 5), then report it."""
        reason = self._check(name, info)
        host = _pick_address(info)
        if reason is None and (host is None or info.port is None):
            reason = "no address or port"
        if reason is not None or host is None or info.port is None:
            self._ignore(name, reason or "unreachable")
            # a peer in the view whose records now say otherwise (another household's tag,
            # another version) is no longer one to dial: drop it, as a goodbye would
            device_id = self._names.pop(name, None)
            if device_id is not None:
                self.view.lost(device_id)
            return
        device_id = name.removesuffix(f".{self.service_type}")
        self._names[name] = device_id
        self.view.found(device_id, host, info.port)

    def _check(self, name: str, info: AsyncServiceInfo) -> str | None:
        """Why the service is not a peer of our household, or None if it is one."""
        props = info.decoded_properties
        device_id = props.get("id")
        if props.get("tag") != self.tag:
            return "other household (tag differs)"
        if device_id is None or name != f"{device_id}.{self.service_type}":
            return "TXT id does not match the instance name"
        if not _is_name(device_id):
            return "TXT id is not a valid device id"
        if device_id == self.device_id:
            return "own device"
        if props.get("v") != TXT_VERSION:
            return f"protocol version {props.get('v')!r}, ours is {TXT_VERSION}"
        return None

    def _ignore(self, name: str, reason: str) -> None:
        if self._ignored.get(name) == reason:
            return
        self._ignored.pop(name, None)
        self._ignored[name] = reason  # the newest last
        if len(self._ignored) > MAX_IGNORED:
            del self._ignored[next(iter(self._ignored))]
        log.debug("discovery: ignoring %s: %s", name, reason)
        if self._on_ignored is not None:
            self._on_ignored(name, reason)


def _pick_address(info: AsyncServiceInfo) -> str | None:
    """Prefer IPv4: an IPv6 link-local address needs a scope the dialler may not know."""
    addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
    return addresses[0] if addresses else None


def _is_name(value: str) -> bool:
    try:
        check_device(value)
    except ValidationError:
        return False
    return True
