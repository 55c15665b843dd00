"""The websocket side of household sync: a server for robots that dial in, dialers for the
robots this one reaches, and one `Link` per authenticated peer.

Connections are symmetric once open (both sides run the same `Session`), so which side dialed
only matters when two robots end up connected twice (both dialed, or a static address and a
discovered one name the same robot): the link dialed by the device with the greater id is kept,
the other is closed.  Both sides apply the same rule, so they agree on which link survives
without another message.

Each address is dialed by one loop that reconnects for as long as it is wanted: a static peer's
for the life of the service, a discovered peer's (keyed by its device id) until `stop_dialing`,
and then, if it ever reached the device, until the address where it did fails for a while.
Dialing a discovered device again only gives its loop one more address to try (`Addresses`):
before, every rediscovery started another loop, and after a few restarts of a robot all of them
redialed it at once, each paying a handshake to be closed as a duplicate, for the life of the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial

from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import HearthError
from hearthsync.protocol.frames import MAX_FRAME_LEN
from hearthsync.protocol.session import (
    DEAD_AFTER_S,
    Event,
    KeysChanged,
    NeighboursChanged,
    PeerAuthenticated,
    RevocationsChanged,
    Sealer,
    Session,
)
from hearthsync.transport.addresses import Addresses
from hearthsync.transport.link import (
    CountingClientConnection,
    CountingServerConnection,
    Link,
    SyncTarget,
)

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.2
MAX_RETRY_S = 10.0
#: a link that authenticated starts its loop's backoff afresh, unless links keep ending
#: sooner than this: the n-th in a row backs off as the n-th failed dial would.  A failure
#: that recurs after the handshake (a peer that closes each link at once, a reconnect asked
#: for a grant that never comes) was redialed 5 times a second for good (found in review)
LINK_LIVED_S = 10.0
OPEN_TIMEOUT_S = 5.0
#: connections accepted and not yet authenticated (or a join) at once; more are refused
#: (1013), to try again.  Each may make the server hold a frame of up to 4 MiB before it
#: proves anything: a flood from the LAN held 4 MiB per connection, without bound
MAX_OPENING = 16
#: of those, at once from one address: one host that opened `MAX_OPENING` connections and
#: never spoke (reopening each as the session closed it) kept every robot of the household
#: from linking to this one (found in review).  Loopback is not counted: what connects from
#: this machine (the chaos harness's proxies, every robot of a test) is not on the LAN
MAX_OPENING_PER_ADDRESS = 4
JOIN_PATH = "/join"


@dataclass(slots=True)
class _Dial:
    """One dial loop: the device it must reach (None: a static address, whoever answers), where
    it may be, and whether the loop should go on once a link ends."""

    device: str | None
    addresses: Addresses
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    wanted: bool = True


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a device needs to take part in household sync."""

    identity: DeviceIdentity
    certificate: Certificate
    trust: TrustStore
    keyring: Keyring


class SyncService:
    """``async with SyncService(peer, credentials, listen=("127.0.0.1", 0)) as sync: ...``"""

    def __init__(
        self,
        target: SyncTarget,
        credentials: Credentials,
        *,
        listen: tuple[str, int] | None = ("127.0.0.1", 0),
        peers: tuple[tuple[str, int], ...] = (),
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        join: Callable[[bytes], Awaitable[bytes]] | None = None,
        send_timeout: float = DEAD_AFTER_S,
    ) -> None:
        self.target = target
        self._join = join
        self._paused = False
        self.credentials = credentials
        self._listen = listen
        self._static = peers
        self._random_bytes = random_bytes
        self._clock = clock
        self._send_timeout = send_timeout  #: a peer that takes no frame this long is dropped
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: one per device dialed (discovered) or per ``host:port`` (static)
        self._dials: dict[str, _Dial] = {}
        self.links: dict[str, Link] = {}
        self._changed = asyncio.Condition()
        self._closing = False
        #: accepted connections not yet authenticated, each with the address it came from
        #: (None: not counted per address, `_counted_address`)
        self._opening: dict[Connection, str | None] = {}
        #: shared by every link: a delta sent to several peers is sealed once (SPEC §4)
        self._sealer = Sealer()

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SyncService:
        self.target.on_keys_made.append(self.send_grants)
        if self._listen is not None:
            host, port = self._listen
            self._server = await serve(
                self._accept, host, port, max_size=MAX_FRAME_LEN, compression=None,
                ping_interval=None,  # liveness is the session's heartbeat (SPEC §6)
                create_connection=CountingServerConnection,  # a slow link is not a dead one
            )  # fmt: skip
        for host, port in self._static:
            self.dial(host, port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        with contextlib.suppress(ValueError):
            self.target.on_keys_made.remove(self.send_grants)
        for link in list(self.links.values()):
            link.close("shutting down")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        assert self._server is not None, "this service does not listen"
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    def dial(self, host: str, port: int, *, device: str | None = None) -> None:
        """Keep a connection to ``host:port``, reconnecting with backoff and jitter.

        At most one loop dials a ``device`` (a peer found by discovery) or, without one, an
        address: dialing it again adds ``host:port`` to the addresses the loop tries (the device
        moved, or someone claims it did: see `Addresses`), and keeps a loop that `stop_dialing`
        was winding down.  A link that authenticates another device than ``device`` is closed."""
        key = device if device is not None else f"{host}:{port}"
        dial = self._dials.get(key)
        if dial is not None:
            dial.addresses.heard((host, port))
            dial.wanted = True
            return
        dial = self._dials[key] = _Dial(device, Addresses((host, port)))
        dial.task = self._spawn(self._dial_forever(key, dial), f"hearthsync-dial-{key}")

    def stop_dialing(self, device: str) -> None:
        """Discovery lost ``device``: it said goodbye, or someone on the LAN did in its name (a
        lost mDNS record is a hint, not a verdict).  A link open to it is kept until it ends:
        whether a peer is alive is for the heartbeats to say.  A loop that reached the device
        goes on dialing the address where it proved itself, with its backoff, and ends once
        that fails `GIVE_UP_AFTER` times in a row; a loop that never reached it ends now (or
        with the link).  Static peers, keyed by address, are not affected."""
        dial = self._dials.get(device)
        if dial is None or dial.addresses.lose():
            return
        dial.wanted = False
        if device not in self.links:  # nothing to keep: end the loop now
            del self._dials[device]
            assert dial.task is not None
            dial.task.cancel()

    def dialing(self) -> dict[str, tuple[str, int]]:
        """Where each dial loop connects next, by device id (discovered) or ``host:port``."""
        return {key: d.addresses.next() for key, d in self._dials.items() if d.wanted}

    async def wait_for_links(self, count: int) -> None:
        """Wait until at least ``count`` peers have authenticated links."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.links) >= count)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, checked again whenever a link opens or closes, a
        peer says which devices it has links with, or a peer brings a newer revocation list
        (wrap it in ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(condition)

    async def wait_for_peers(self, device_ids: set[str]) -> None:
        """Wait until every device in ``device_ids`` has an authenticated link (wrap it in
        ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: device_ids <= set(self.links))

    # -------------------------------------------------------------- connections

    def trust_changed(self) -> None:
        """After this device adopted a newer revocation list: drop revoked peers, tell the rest."""
        for link in list(self.links.values()):
            link.send_revocations()

    def send_grants(self) -> None:
        """After this device made keys (a new user's data keys): grant them to every peer."""
        for link in list(self.links.values()):
            link.send_grants()

    def pause(self) -> None:
        """Cut every connection and make no new ones until `resume` (a partition, on demand)."""
        self._paused = True
        for link in list(self.links.values()):
            link.close("paused")

    def resume(self) -> None:
        self._paused = False
        self._notify()

    async def _accept(self, websocket: ServerConnection) -> None:
        request = websocket.request
        address = _counted_address(websocket.remote_address)
        if len(self._opening) >= MAX_OPENING:
            log.warning("refused a connection: %d are opening already", len(self._opening))
            await websocket.close(1013, "too many connections opening: try again later")
            return
        if address is not None:
            same = sum(1 for other in self._opening.values() if other == address)
            if same >= MAX_OPENING_PER_ADDRESS:
                log.warning("refused a connection: %d are opening from its address already",
                            same)  # fmt: skip
                await websocket.close(1013, "too many connections opening: try again later")
                return
        self._opening[websocket] = address
        try:
            if request is not None and request.path == JOIN_PATH:
                await self._answer_join(websocket)
            elif not self._paused:
                await self._run(websocket, dialed=False)
        except Exception:
            log.exception("an accepted link failed")
        finally:
            if websocket in self._opening:
                del self._opening[websocket]
                self._notify()  # room for another (`wait_until`)

    async def _answer_join(self, websocket: ServerConnection) -> None:
        """One join exchange (SPEC §7): a request in, the sealed enrolment (or a refusal) out."""
        if self._join is None:
            await websocket.close(1008, "this device does not enrol robots")
            return
        with contextlib.suppress(ConnectionClosed):
            request = await asyncio.wait_for(websocket.recv(), OPEN_TIMEOUT_S)
            try:
                answer: bytes | str = await self._join(
                    bytes(request) if isinstance(request, bytes) else b""
                )
            except HearthError as exc:
                log.warning("refused a join request: %s", exc)
                answer = f"refused: {exc}"
            await websocket.send(answer)

    async def _dial_forever(self, key: str, dial: _Dial) -> None:
        try:
            await self._redial(dial)
        finally:
            if self._dials.get(key) is dial:
                del self._dials[key]

    async def _redial(self, dial: _Dial) -> None:
        delay = FIRST_RETRY_S
        short = 0  # links in a row that authenticated and ended before `LINK_LIVED_S`
        while not self._closing and dial.wanted:
            host, port = address = dial.addresses.next()
            uri = f"ws://{host}:{port}/" if ":" not in host else f"ws://[{host}]:{port}/"
            peer: str | None = None
            proved = False
            if self._paused:
                async with self._changed:
                    await self._changed.wait_for(lambda: not self._paused or self._closing)
                continue
            started = time.monotonic()
            try:
                async with connect(
                    uri, proxy=None, max_size=MAX_FRAME_LEN, compression=None,
                    ping_interval=None, open_timeout=OPEN_TIMEOUT_S,
                    create_connection=CountingClientConnection,
                ) as websocket:  # fmt: skip
                    # proven as soon as the handshake says so, not when the link ends: a
                    # goodbye heard while it lasts is weighed against it (`stop_dialing`)
                    peer, authenticated = await self._run(
                        websocket, dialed=True, device=dial.device,
                        on_proved=partial(dial.addresses.tried, address, proved=True),
                    )  # fmt: skip
                    # a handshake that fails (this robot's own port, a revoked peer, another
                    # household's, another device) backs off as a refused dial does
                    proved = authenticated and dial.device in (None, peer)
                    if proved:  # afresh, unless links keep ending at once: by them
                        lived = time.monotonic() - started >= LINK_LIVED_S
                        short = 0 if lived else short + 1
                        delay = min(FIRST_RETRY_S * 2 ** max(short - 1, 0), MAX_RETRY_S)
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed) as exc:
                log.debug("dialing %s failed: %s", uri, exc)
            except Exception:  # a bug must not end the loop: that pair would stay cut for good
                log.exception("the link dialed to %s failed", uri)
            dial.addresses.tried(address, proved=proved)
            if proved and peer is not None and peer in self.links:
                # kept the other link: wait for its end (whichever link that is by then: an
                # event per link, replaced when a newer link took the place, was never set,
                # and this loop never dialed again)
                await self.wait_until(partial(self._ended, peer))
            if not dial.wanted or dial.addresses.given_up:
                return
            await self._back_off(delay)
            delay = min(delay * 2, MAX_RETRY_S)

    async def _back_off(self, delay: float) -> None:
        """Wait about ``delay`` seconds before a dial loop dials again (with jitter)."""
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))

    def _ended(self, peer: str) -> bool:
        return peer not in self.links or self._closing

    async def _run(
        self, websocket: Connection, *, dialed: bool, device: str | None = None,
        on_proved: Callable[[], None] | None = None,
    ) -> tuple[str | None, bool]:  # fmt: skip
        """Run a link on ``websocket`` to its end; return the peer's device id (None before
        its HELLO) and whether the handshake completed.  A link dialed to reach ``device``
        that reaches another one is refused at its HELLO (`Session.expected`), before either
        side authenticates; one that authenticates it calls ``on_proved`` at once."""
        creds = self.credentials
        session = Session(
            creds.identity, creds.certificate.to_wire(), creds.trust, creds.keyring,
            self.target.docs, self._random_bytes, time.monotonic(), self._clock(),
            sealer=self._sealer, expected=device,
        )  # fmt: skip
        link = Link(
            websocket, session, self.target, dialed=dialed,
            on_event=partial(self._on_event, device=device, on_proved=on_proved),
            wall=self._clock, send_timeout=self._send_timeout,
        )  # fmt: skip
        if self._paused:  # paused while this connection was being opened
            await websocket.close(1001, "paused")
            return None, False
        try:
            await link.run()
        finally:
            await self._unregister(link)
        return link.peer_id, link.authenticated

    def _on_event(
        self, link: Link, event: Event, *, device: str | None = None,
        on_proved: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        if isinstance(event, PeerAuthenticated):
            self._opening.pop(link.websocket, None)
            if device not in (None, event.device_id):  # a record naming one robot, another's
                link.close("not the device dialed")  # address: that robot has its own loop
                return
            if on_proved is not None:
                on_proved()
            self._register(link, event.device_id)
        elif isinstance(event, NeighboursChanged):
            self._notify()
        elif isinstance(event, RevocationsChanged):  # learned from one peer: tell the others
            for other in list(self.links.values()):
                if other is not link:
                    other.send_revocations()
            self._notify()  # `wait_until` a device is revoked here
        elif isinstance(event, KeysChanged):  # granted by one peer: what the others may get
            for other in list(self.links.values()):
                if other is not link:
                    other.keys_learned()

    def _register(self, link: Link, device: str) -> None:
        if self._paused:  # the handshake was under way when the partition began
            link.close("paused")
            return
        existing = self.links.get(device)
        if existing is not None and existing is not link:
            if self._dialer(existing, device) > self._dialer(link, device):
                link.close("duplicate connection")
                return
            existing.close("duplicate connection")
        self.links[device] = link
        self._announce()
        self._notify()

    async def _unregister(self, link: Link) -> None:
        device = link.peer_id
        if device is not None and self.links.get(device) is link:
            del self.links[device]
            self._announce()
            self._notify()

    def _announce(self) -> None:
        """Tell every peer which devices this one now has links with (SPEC §6.4): they need
        not relay to it what came from those."""
        devices = set(self.links)
        for link in list(self.links.values()):
            if link.session.announce(devices):
                link.kick()

    def _dialer(self, link: Link, device: str) -> str:
        return self.credentials.identity.device_id if link.dialed else device

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._spawn(notify(), "hearthsync-notify")

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _counted_address(remote: object) -> str | None:
    """The address an accepted connection counts against (`MAX_OPENING_PER_ADDRESS`): its
    host, an IPv4 address mapped into IPv6 as IPv4; None for loopback or no address."""
    if not isinstance(remote, tuple) or not remote or not isinstance(remote[0], str):
        return None
    try:
        ip = ipaddress.ip_address(remote[0].partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if ip.is_loopback else str(ip)
