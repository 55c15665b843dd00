"""``hearth bench sync``: household sync on loopback, against pycrdt-websocket in the same run.

Figures (the keys of ``--json``); every peer is a real `Peer` (SQLite files in a temporary
folder, the default ``synchronous="FULL"``) and every link a real `SyncService` over websockets
on 127.0.0.1, with envelopes encrypted and signed:

* ``catchup_10k_s``: B was offline while A made 10,000 preference edits, each its own awaited
  write (so 10,000 durable deltas in A's store, which A has compacted by the time B returns,
  as it would have while B was away); from B's service starting to dial A until B
  holds A's state vector and has made it durable.  Baseline ``catchup_10k_pycrdt_websocket_s``:
  two pycrdt ``Provider``s through pycrdt-websocket's ``WebsocketServer`` (no encryption, no
  persistence), A's 10,000 single-edit transactions made before B connects.  Both figures are
  the median of 7 rounds, each with a B that starts from nothing (a single catch-up of 10 to
  30 ms swings by a third on a shared machine).  Every phase of the benchmark (each figure and
  each baseline) runs in a fresh process.
* ``live_edits_per_s``: A makes 10,000 edits as fast as it can while B is connected: 10,000
  `Peer.set_preference` calls back to back, each its own write with its own acknowledgement
  (a future that resolves once that edit is durable on A), awaited together at the end; edits
  per second until all are visible (in memory) on B.  hearthsync's unit of atomicity is the
  write call: edits queued together are group-committed into one CRDT transaction per document,
  which is the mechanism measured here.  Baseline ``live_pycrdt_websocket_edits_per_s``: A's
  provider makes 10,000 single-edit transactions in a loop, through the server, until B's
  document holds them all (one message per edit, each echoed back to A).
* ``live_update_p99_ms``: one edit on A (durable there first) until visible on B, p99 of 1,000
  edits one at a time; ``live_update_durable_p99_ms`` until also durable on B.
* ``wire_bytes_per_edit``: bytes written to the TCP sockets of both ends during the live burst
  (UPDATEs and their ACKs: websocket headers and masks, frames, envelopes, signatures), over the
  edits; TCP/IP headers are not counted.  ``wire_payload_bytes_per_edit`` is the same from
  `Link.bytes_sent`/`bytes_received`, i.e. without the websocket framing.  The baseline
  ``wire_bytes_per_edit_pycrdt_websocket`` counts both legs (A to server, server to B) and the
  server's echo of each update back to A, on the same sockets-level meter.
* ``idle_bytes_per_doc_per_min``: two connected peers sharing 50 documents, nothing changing:
  all bytes on the wire over an idle window (heartbeats), per document per minute.
* ``converge_8_peers_s``: 8 peers, each makes 100 edits while no service runs; then a hub (peer
  0, listening) and 7 peers dialing it start, and the clock runs until every peer holds the
  same state vector (decoded, compared per client) of every document, durably.

Extra figures: ``live_serial_edits_per_s`` and ``wire_bytes_per_edit_serial``, the live burst
again with A awaiting each edit's durability before making the next: one fsync and one
envelope per edit (about 1,000 edits a second with ``synchronous=FULL``, each envelope carrying
its 64-byte signature), the slowest way to write and what the figures above improve on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from pycrdt import Doc, Map, Provider
from pycrdt.websocket import WebsocketServer
from rich.console import Console
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from hearthsync.bench import print_figures
from hearthsync.bench.household import BenchHome, robots
from hearthsync.crdt import statevector
from hearthsync.errors import LocalError
from hearthsync.ids import DocId
from hearthsync.peer import Peer
from hearthsync.transport.link import Link
from hearthsync.transport.service import SyncService

HOST = "127.0.0.1"
USER = "alice"
PREFS = "user/alice/prefs"
TIMEOUT_S = 120.0
#: lets the catch-up's last ACKs drain before the idle window opens (it detects nothing)
SETTLE_S = 1.0
START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
MONTH_MS = 31 * 86_400_000

CrdtDoc = Doc[Map[int]]


class BenchError(LocalError):
    """The benchmark's own check failed: a bug in what it measures, not a slow figure."""


@dataclass(frozen=True, slots=True)
class Sizes:
    edits: int
    catchups: int
    samples: int
    peers: int
    peer_edits: int
    idle_docs: int
    idle_s: float


FULL = Sizes(
    edits=10_000, catchups=7, samples=1_000, peers=8, peer_edits=100, idle_docs=50, idle_s=30.0
)
QUICK = Sizes(
    edits=1_000, catchups=3, samples=100, peers=4, peer_edits=100, idle_docs=50, idle_s=4.0
)


# ------------------------------------------------------------------------------ instruments


class Signal:
    """An `asyncio.Event` any callback can set; `until` re-checks a condition after each set."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __call__(self, *_: object) -> None:
        self._event.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; raise `TimeoutError` after `TIMEOUT_S`."""
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                self._event.clear()
                if condition():
                    return
                await self._event.wait()


class Meter:
    """Counts what one end of a TCP connection writes: every websocket frame with its header
    and (client side) mask, i.e. everything on the wire but the TCP/IP headers."""

    def __init__(self, changed: Signal | None = None) -> None:
        self.bytes = 0
        self.writes = 0
        self._changed = changed

    def watch(self, transport: asyncio.BaseTransport | None) -> None:
        assert isinstance(transport, asyncio.WriteTransport), transport
        write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            self.bytes += len(data)
            self.writes += 1
            if self._changed is not None:
                self._changed()
            write(data)

        # an instrument, not a feature: websockets writes every frame through this method
        setattr(transport, "write", counted)  # noqa: B010


@contextlib.contextmanager
def watching(peer: Peer, doc_id: str, signal: Signal) -> Iterator[None]:
    """Set ``signal`` on every transaction of ``peer``'s replica of ``doc_id``, i.e. as soon as
    a change is visible in memory, before it is durable.  `Peer` has no public hook for that,
    so this reaches into its document set, as ``bench.local`` does for sizes."""
    replica = peer._docs.get(DocId(doc_id))
    if replica is None:
        raise BenchError(f"{peer.device} does not hold {doc_id}")
    subscription = replica.doc.observe(signal)
    try:
        yield
    finally:
        replica.doc.unobserve(subscription)


def identical(peers: list[Peer]) -> bool:
    """Every peer holds the same decoded state vector of every document any of them holds."""
    doc_ids = set().union(*(peer.document_ids() for peer in peers))
    return all(
        all(statevector.decode(p.state_vector(d)) == statevector.decode(peers[0].state_vector(d))
            for p in peers[1:])
        for d in doc_ids
    )  # fmt: skip


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


# ------------------------------------------------------------------------------ hearthsync


async def write_edits(peer: Peer, prefix: str, count: int) -> None:
    """``count`` preference edits, each its own write, each awaited until durable."""
    for i in range(count):
        await peer.set_preference(USER, f"{prefix}/{i}", i)


async def hearth_catchup(folder: Path, home: BenchHome, sizes: Sizes) -> float:
    """The median catch-up of ``sizes.catchups`` robots coming back, each from nothing, to a
    robot that made ``sizes.edits`` edits meanwhile."""
    async with robots(folder, 1, "home") as (a,):
        await write_edits(a, "offline", sizes.edits)
        await a.compact()  # A's housekeeping after the burst is done before B comes back
        async with SyncService(a, home.enrol(a)) as hub:
            rounds: list[float] = []
            for n in range(sizes.catchups):
                async with (
                    robots(folder, 1, f"late-{n}") as (late,),
                    catch_up(hub, a, late, home, sizes, rounds),
                ):
                    pass
    return statistics.median(rounds)


async def hearth_pair(folder: Path, home: BenchHome, sizes: Sizes) -> dict[str, float]:
    """B catches up with A's offline edits, then, connected: the live burst, the serial burst,
    latency."""
    figures: dict[str, float] = {}
    async with robots(folder, 2, "pair") as (a, b):
        await write_edits(a, "offline", sizes.edits)
        await a.compact()
        hub = SyncService(a, home.enrol(a))
        async with hub, catch_up(hub, a, b, home, sizes, []) as edge:
            async with asyncio.timeout(TIMEOUT_S):
                await hub.wait_for_peers({b.device_id})
                await edge.wait_for_peers({a.device_id})
            a_link, b_link = hub.links[b.device_id], edge.links[a.device_id]
            burst = await live_burst(a, b, a_link, b_link, sizes.edits, serial=False)
            figures["live_edits_per_s"], figures["wire_bytes_per_edit"], payload = burst
            figures["wire_payload_bytes_per_edit"] = payload
            burst = await live_burst(a, b, a_link, b_link, sizes.edits, serial=True)
            figures["live_serial_edits_per_s"], figures["wire_bytes_per_edit_serial"], _ = burst
            figures.update(await latency(a, b, sizes.samples))
    return figures


@contextlib.asynccontextmanager
async def catch_up(
    hub: SyncService, a: Peer, b: Peer, home: BenchHome, sizes: Sizes, rounds: list[float]
) -> AsyncIterator[SyncService]:
    """B, which holds none of A's edits, dials A: append the seconds until B holds A's state
    vector durably to ``rounds``, then yield B's service, still running."""
    target = a.state_vector(PREFS)
    credentials = home.enrol(b)
    durable = Signal()
    off = b.on_durable(durable)
    started = time.perf_counter()
    async with SyncService(b, credentials, listen=None, peers=((HOST, hub.port),)) as edge:
        try:
            await durable.until(lambda: b.state_vector(PREFS) == target)
            await b.flush()
            rounds.append(time.perf_counter() - started)
        finally:
            off()
        if len(b.preferences(USER, "offline/")) != sizes.edits:
            raise BenchError("B caught up with A's state vector but misses edits")
        yield edge


async def live_burst(
    a: Peer, b: Peer, a_link: Link, b_link: Link, edits: int, *, serial: bool
) -> tuple[float, float, float]:
    """(edits per second, wire bytes per edit, payload bytes per edit) of one burst from A."""
    prefix = "serial" if serial else "live"
    written = Signal()
    a_meter, b_meter = Meter(), Meter(written)
    a_meter.watch(a_link.websocket.transport)
    b_meter.watch(b_link.websocket.transport)
    payload_before = b_link.bytes_sent + b_link.bytes_received
    visible = Signal()
    with watching(b, PREFS, visible):
        started = time.perf_counter()
        if serial:
            await write_edits(a, prefix, edits)
        else:  # as fast as it can: every call queues its edit at once
            await asyncio.gather(
                *[a.set_preference(USER, f"{prefix}/{i}", i) for i in range(edits)]
            )
        target = a.state_vector(PREFS)
        await visible.until(lambda: b.state_vector(PREFS) == target)
        elapsed = time.perf_counter() - started
    # the burst's bytes include B's ACK of every UPDATE: B answers each message of A with one
    await b.flush()
    await written.until(lambda: b_meter.writes >= a_meter.writes)
    wire = (a_meter.bytes + b_meter.bytes) / edits
    payload = (b_link.bytes_sent + b_link.bytes_received - payload_before) / edits
    if len(b.preferences(USER, f"{prefix}/")) != edits:
        raise BenchError(f"B misses some of the {prefix} edits")
    return edits / elapsed, wire, payload


async def latency(a: Peer, b: Peer, samples: int) -> dict[str, float]:
    """One edit at a time: until visible on B, and until durable on B."""
    visible_ms: list[float] = []
    durable_ms: list[float] = []
    visible = Signal()
    with watching(b, PREFS, visible):
        for i in range(samples):
            key = f"latency/{i}"
            started = time.perf_counter()
            await a.set_preference(USER, key, i)
            await visible.until(lambda: b.preference(USER, key) is not None)  # noqa: B023
            visible_ms.append((time.perf_counter() - started) * 1000)
            await b.flush()
            durable_ms.append((time.perf_counter() - started) * 1000)
    return {
        "live_update_p99_ms": p99(visible_ms),
        "live_update_p50_ms": statistics.median(visible_ms),
        "live_update_durable_p99_ms": p99(durable_ms),
    }


async def idle(folder: Path, home: BenchHome, sizes: Sizes) -> float:
    """Bytes per document per minute between two connected peers while nothing changes."""
    async with robots(folder, 2, "idle") as (a, b):
        await a.set_preference(USER, "idle/seed", 0)
        months = sizes.idle_docs - len(a.document_ids())
        for month in range(months):  # one events document per month
            ts = START_MS + month * MONTH_MS
            await a.record_event(USER, "OBSERVATION", "idle", text=f"month {month}", ts=ts)
        docs = len(a.document_ids())
        if docs != sizes.idle_docs:
            raise BenchError(f"the idle pair holds {docs} documents, not {sizes.idle_docs}")
        durable = Signal()
        offs = [peer.on_durable(durable) for peer in (a, b)]
        async with (
            SyncService(a, home.enrol(a)) as hub,
            SyncService(b, home.enrol(b), listen=None, peers=((HOST, hub.port),)) as edge,
        ):
            await durable.until(lambda: identical([a, b]))
            await asyncio.gather(a.flush(), b.flush())
            for off in offs:
                off()
            await asyncio.sleep(SETTLE_S)
            a_meter, b_meter = Meter(), Meter()
            a_meter.watch(hub.links[b.device_id].websocket.transport)
            b_meter.watch(edge.links[a.device_id].websocket.transport)
            await asyncio.sleep(sizes.idle_s)  # the idle window itself
            if set(hub.links) != {b.device_id}:
                raise BenchError("the idle link dropped during the window")
    return (a_meter.bytes + b_meter.bytes) / docs / (sizes.idle_s / 60)


async def converge(folder: Path, home: BenchHome, sizes: Sizes) -> float:
    """Partitioned edits on every peer, then a hub and spokes start: seconds until identical."""
    async with robots(folder, sizes.peers, "mesh") as peers:
        await asyncio.gather(*(write_edits(p, p.device, sizes.peer_edits) for p in peers))
        if identical(peers):
            raise BenchError("the partitioned peers already agree: nothing to converge")
        credentials = [home.enrol(peer) for peer in peers]
        durable = Signal()
        offs = [peer.on_durable(durable) for peer in peers]
        async with AsyncExitStack() as stack:
            started = time.perf_counter()
            hub = await stack.enter_async_context(SyncService(peers[0], credentials[0]))
            for peer, creds in zip(peers[1:], credentials[1:], strict=True):
                spoke = SyncService(peer, creds, listen=None, peers=((HOST, hub.port),))
                await stack.enter_async_context(spoke)
            await durable.until(lambda: identical(peers))
            await asyncio.gather(*(peer.flush() for peer in peers))
            elapsed = time.perf_counter() - started
        for off in offs:
            off()
        for peer in peers:
            if len(peer.preferences(USER)) != sizes.peers * sizes.peer_edits:
                raise BenchError(f"{peer.device} converged without every edit")
    return elapsed


# ------------------------------------------------------------------------------ pycrdt-websocket


class WsChannel:
    """pycrdt's ``Channel`` over a websockets connection (pycrdt-websocket leaves the adapter
    to the application); counts the messages it receives."""

    def __init__(self, websocket: Connection, path: str, received: Signal | None = None) -> None:
        self._websocket = websocket
        self._path = path
        self._received = received
        self.messages = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._websocket.send(message)

    async def recv(self) -> bytes:
        message = await self._websocket.recv()
        self.messages += 1
        if self._received is not None:
            self._received()
        return message if isinstance(message, bytes) else message.encode()


@dataclass(slots=True)
class CrdtRig:
    """A pycrdt-websocket server on loopback, with every socket end it opens metered."""

    rooms: WebsocketServer
    port: int
    meters: list[Meter]

    @property
    def bytes(self) -> int:
        return sum(meter.bytes for meter in self.meters)

    def meter(self, transport: asyncio.BaseTransport | None) -> None:
        meter = Meter()
        meter.watch(transport)
        self.meters.append(meter)


@contextlib.asynccontextmanager
async def crdt_server() -> AsyncIterator[CrdtRig]:
    # same settings as our links: no permessage-deflate, no websocket keepalive pings
    async with WebsocketServer(auto_clean_rooms=False) as rooms:
        rig = CrdtRig(rooms, 0, [])

        async def handler(websocket: ServerConnection) -> None:
            rig.meter(websocket.transport)
            assert websocket.request is not None
            await rooms.serve(WsChannel(websocket, websocket.request.path))

        async with serve(handler, HOST, 0, compression=None, ping_interval=None) as server:
            rig.port = int(next(iter(server.sockets)).getsockname()[1])
            yield rig


@contextlib.asynccontextmanager
async def crdt_client(
    rig: CrdtRig, room: str, doc: CrdtDoc, received: Signal | None = None
) -> AsyncIterator[WsChannel]:
    uri = f"ws://{HOST}:{rig.port}/{room}"
    async with connect(uri, proxy=None, compression=None, ping_interval=None) as websocket:
        rig.meter(websocket.transport)
        channel = WsChannel(websocket, room, received)
        async with Provider(doc, channel) as provider:
            async with asyncio.timeout(TIMEOUT_S):
                await provider.synced.wait()
            yield channel


def edit(doc: CrdtDoc, prefs: Map[int], key: str, value: int) -> None:
    with doc.transaction():
        prefs[key] = value


async def crdt_catchup(edits: int) -> float:
    async with crdt_server() as rig:
        a: CrdtDoc = Doc()
        b: CrdtDoc = Doc()
        a_prefs: Map[int] = a.get("prefs", type=Map)
        b.get("prefs", type=Map)
        async with crdt_client(rig, "catchup", a):
            for i in range(edits):
                edit(a, a_prefs, f"offline/{i}", i)
            target = a.get_state()
            room = rig.rooms.rooms["/catchup"].ydoc
            stored = Signal()
            subscription = room.observe(stored)
            await stored.until(lambda: room.get_state() == target)
            room.unobserve(subscription)
            visible = Signal()
            b.observe(visible)
            started = time.perf_counter()
            async with crdt_client(rig, "catchup", b):
                await visible.until(lambda: b.get_state() == target)
                elapsed = time.perf_counter() - started
    if len(b.get("prefs", type=Map)) != edits:
        raise BenchError("the pycrdt-websocket catch-up missed edits")
    return elapsed


async def crdt_live(edits: int) -> tuple[float, float]:
    """(edits per second, wire bytes per edit) of a burst through pycrdt-websocket."""
    async with crdt_server() as rig:
        a: CrdtDoc = Doc()
        b: CrdtDoc = Doc()
        a_prefs: Map[int] = a.get("prefs", type=Map)
        b_prefs: Map[int] = b.get("prefs", type=Map)
        echoed, visible = Signal(), Signal()
        b.observe(visible)
        async with (
            crdt_client(rig, "live", a, echoed) as a_channel,
            crdt_client(rig, "live", b),
        ):
            bytes_before, echoes_before = rig.bytes, a_channel.messages
            started = time.perf_counter()
            for i in range(edits):
                edit(a, a_prefs, f"live/{i}", i)
            target = a.get_state()
            await visible.until(lambda: b.get_state() == target)
            elapsed = time.perf_counter() - started
            # the server echoes every update to its author too: count those bytes as well
            await echoed.until(lambda: a_channel.messages - echoes_before >= edits)
            wire = (rig.bytes - bytes_before) / edits
    if len(b_prefs) != edits:
        raise BenchError("the pycrdt-websocket burst missed edits")
    return edits / elapsed, wire


# ------------------------------------------------------------------------------ the suite


async def run_sync(console: Console | None = None, *, quick: bool = False) -> dict[str, float]:
    console = console or Console()
    sizes = QUICK if quick else FULL
    figures: dict[str, float] = {}
    # Each phase runs in a fresh process: a process that has run robots before runs everything
    # after a little slower (a live burst after six catch-up rounds: 28,000 edits/s instead of
    # 34,000), so no figure or baseline depends on what was measured before it.
    phases = [
        ("pycrdt-websocket: catch-up", "crdt_catchup"),
        (f"hearthsync: {sizes.catchups} catch-ups of {sizes.edits:,} edits", "hearth_catchup"),
        ("pycrdt-websocket: live burst", "crdt_live"),
        (f"hearthsync: {sizes.edits:,} edits live, serial, one at a time", "hearth_pair"),
        (f"hearthsync: {sizes.idle_s:.0f} s idle, {sizes.idle_docs} documents", "idle"),
        (f"hearthsync: {sizes.peers} peers converge after a partition", "converge"),
    ]
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    for label, phase in phases:
        with (
            console.status(label),
            ProcessPoolExecutor(max_workers=1, mp_context=context) as fresh,
        ):
            figures.update(await loop.run_in_executor(fresh, run_phase, phase, sizes))
    figures["catchup_vs_pycrdt_websocket"] = (
        figures["catchup_10k_s"] / figures["catchup_10k_pycrdt_websocket_s"]
    )
    figures["live_vs_pycrdt_websocket"] = (
        figures["live_edits_per_s"] / figures["live_pycrdt_websocket_edits_per_s"]
    )
    bad = [key for key, value in figures.items() if not (math.isfinite(value) and value > 0)]
    if bad:
        raise BenchError(f"figures that are not positive and finite: {bad}")
    _print(console, figures, sizes)
    return figures


def run_phase(phase: str, sizes: Sizes) -> dict[str, float]:
    """One phase of `run_sync`, in this process (`run_sync` starts a fresh one for each)."""
    return asyncio.run(_phase(phase, sizes))


async def _phase(phase: str, sizes: Sizes) -> dict[str, float]:
    home = BenchHome()
    with tempfile.TemporaryDirectory(prefix="hearth-bench-sync-") as tmp:
        folder = Path(tmp)
        if phase == "crdt_catchup":
            rounds = [await crdt_catchup(sizes.edits) for _ in range(sizes.catchups)]
            return {"catchup_10k_pycrdt_websocket_s": statistics.median(rounds)}
        if phase == "hearth_catchup":
            return {"catchup_10k_s": await hearth_catchup(folder, home, sizes)}
        if phase == "crdt_live":
            rate, wire = await crdt_live(sizes.edits)
            return {
                "live_pycrdt_websocket_edits_per_s": rate,
                "wire_bytes_per_edit_pycrdt_websocket": wire,
            }
        if phase == "hearth_pair":
            return await hearth_pair(folder, home, sizes)
        if phase == "idle":
            return {"idle_bytes_per_doc_per_min": await idle(folder, home, sizes)}
        if phase == "converge":
            return {"converge_8_peers_s": await converge(folder, home, sizes)}
    raise ValueError(f"no benchmark phase {phase!r}")


TARGETS = {
    "catchup_vs_pycrdt_websocket": ("<=", 1.5),
    "live_vs_pycrdt_websocket": (">=", 5.0),
    "live_update_p99_ms": ("<=", 3.0),
    "wire_bytes_per_edit": ("<=", 40.0),
    "idle_bytes_per_doc_per_min": ("<=", 10.0),
    "converge_8_peers_s": ("<=", 1.0),
}


def _print(console: Console, figures: dict[str, float], sizes: Sizes) -> None:
    title = (
        f"hearth bench sync ({sizes.edits:,} edits, {sizes.samples:,} samples, "
        f"{sizes.peers} peers; SQLite synchronous=FULL)"
    )
    print_figures(console, title, figures, TARGETS)
