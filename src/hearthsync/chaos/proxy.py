"""A fault-injecting TCP proxy: the network between two real ``hearth run`` processes.

The deterministic simulator cuts and delays messages inside one process; process mode needs the
same faults between real processes, whose only shared medium is TCP on loopback.  One
`FaultProxy` stands on one path (robot A dialing robot B): A dials the proxy, the proxy dials B,
and bytes are pumped both ways through controls a chaos run flips:

* `cut` is a **silent partition**: nothing is forwarded either way and nothing is closed, as
  when a cable is pulled.  Neither side learns of it from the proxy; the session's heartbeat
  (SPEC §6: dead after 12 s of silence) is what must notice a long one.  Bytes held during a cut
  stay in the kernel buffers (the proxy stops reading), so a short cut healed in time behaves
  like TCP retransmission: the stream resumes intact.  Connections accepted during a cut are
  held unanswered too (the dialer's open timeout fires, as it would without a route).
* `reset` closes every proxied connection at once, both sides, without a close handshake.
* `delay` adds latency to every chunk, in order (the reading and the writing of each direction
  are separate tasks, so latency does not turn into a throughput cap).
* `throttle` caps each direction of every connection at a bandwidth (a robot at the edge of
  the Wi-Fi): the bytes arrive, slowly, a few at a time.
* `drop` refuses new connections with a probability.  TCP cannot lose bytes inside a live
  stream without breaking it (a gap is retransmitted or kills the connection), so loss is
  modelled where TCP shows it to the application: connections that fail.
* `heal` lifts every fault.

``async with FaultProxy(("127.0.0.1", port)) as proxy: ...`` listens on ``127.0.0.1`` at
``proxy.port``; leaving the block closes the server and every connection and awaits every task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: chunks read ahead of the writer per direction: enough to keep a delayed stream moving,
#: small enough that a slow reader pushes back on the sender instead of growing this process
READ_AHEAD = 64
#: a throttled connection forwards this many seconds' worth of bytes at a time
THROTTLE_SLICE_S = 0.02
Address = tuple[str, int]


@dataclass(slots=True)
class ProxyCounters:
    """What went through a proxy and what it did to it."""

    bytes_forwarded: int = 0  #: both directions, counted when written to the other side
    connections: int = 0  #: connections forwarded to the target
    unreachable: int = 0  #: connections closed because the target was unset or refused
    cuts: int = 0  #: `cut` calls that started a partition
    resets: int = 0  #: connections closed by `reset`
    refused: int = 0  #: connections closed by `drop`
    delays: int = 0  #: `delay` calls that set a latency
    throttles: int = 0  #: `throttle` calls that set a bandwidth

    @property
    def faults(self) -> int:
        """Faults applied (an unreachable target is the robot's state, not a fault)."""
        return self.cuts + self.resets + self.refused + self.delays + self.throttles


class FaultProxy:
    """Forwards TCP connections from ``127.0.0.1:port`` to ``target``, with faults on demand."""

    def __init__(self, target: Address | None = None, *, name: str = "proxy") -> None:
        self.name = name
        self.counters = ProxyCounters()
        self._target = target
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._drop = 0.0
        self._rate = 0.0  #: bytes a second per direction and connection; 0: unthrottled
        self._rng = random.Random(0)
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._handlers: set[asyncio.Task[object]] = set()

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, close every connection, await every task (idempotent)."""
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "use the proxy inside 'async with'"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> Address:
        """Where to dial to go through this proxy."""
        return ("127.0.0.1", self.port)

    @property
    def target(self) -> Address | None:
        return self._target

    @property
    def is_cut(self) -> bool:
        return not self._flowing.is_set()

    @property
    def open_connections(self) -> int:
        return len(self._pipes)

    # -------------------------------------------------------------- faults

    def retarget(self, host: str, port: int) -> None:
        """Send new connections to ``host:port`` (a restarted robot listens on a new port).

        Open connections keep their old target: they end when it does.
        """
        self._target = (host, port)

    def cut(self) -> None:
        """Forward nothing either way, close nothing, until `heal` (a silent partition)."""
        if self._flowing.is_set():
            self.counters.cuts += 1
        self._flowing.clear()

    def reset(self) -> None:
        """Close every open connection now, both sides, with no close handshake."""
        self.counters.resets += len(self._pipes)
        for pipe in list(self._pipes):
            pipe.abort()

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every chunk read from now on (order is kept)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        if seconds > 0:
            self.counters.delays += 1
        self._delay = seconds

    def throttle(self, bytes_per_s: float) -> None:
        """Forward at most ``bytes_per_s`` each way on each connection from now on (0: no
        cap), in slices of a fiftieth of a second: a frame arrives a piece at a time."""
        if bytes_per_s < 0:
            raise ValueError("a bandwidth cannot be negative")
        if bytes_per_s > 0:
            self.counters.throttles += 1
        self._rate = bytes_per_s

    def drop(self, probability: float, rng: random.Random) -> None:
        """Refuse each new connection with ``probability``, drawn from ``rng``.

        Open connections are untouched: TCP has no way to lose bytes inside a live stream and
        go on, so loss shows up as connections that fail (see the module docstring).
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError("a probability is between 0 and 1")
        self._drop = probability
        self._rng = rng

    def heal(self) -> None:
        """Lift every fault: forward again (held bytes first), no delay, no throttle, no drop."""
        self._delay = 0.0
        self._rate = 0.0
        self._drop = 0.0
        self._flowing.set()

    # -------------------------------------------------------------- forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self._drop and self._rng.random() < self._drop:
            self.counters.refused += 1
            client_writer.transport.abort()
            return
        pipe = _Pipe(self, client_writer)
        self._pipes.add(pipe)
        try:
            await self._flowing.wait()  # no route during a partition: not even a SYN gets through
            if client_writer.is_closing():  # reset while it waited
                return
            target = self._target
            try:
                if target is None:
                    raise ConnectionRefusedError("no target yet")
                upstream_reader, upstream_writer = await asyncio.open_connection(*target)
            except OSError as exc:
                log.debug("%s: target %s unreachable: %s", self.name, target, exc)
                self.counters.unreachable += 1
                pipe.abort()  # the dialer sees its connection refused, as it would directly
                return
            pipe.upstream = upstream_writer
            self.counters.connections += 1
            await pipe.run(client_reader, upstream_reader)
        finally:
            self._pipes.discard(pipe)
            pipe.close()

    def _due(self) -> float:
        return asyncio.get_running_loop().time() + self._delay


class _Pipe:
    """One proxied connection: four tasks (read and write, each direction)."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sockets at once (an RST, not a FIN: nothing queued is sent), and stop
        pumping (a pump parked by a cut would otherwise wait for the heal)."""
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()
        for task in self._tasks:
            task.cancel()

    def close(self) -> None:
        """Close both sockets after what is queued (a no-op after `abort`)."""
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()

    async def run(self, client: asyncio.StreamReader, upstream: asyncio.StreamReader) -> None:
        assert self.upstream is not None
        try:
            async with asyncio.TaskGroup() as group:
                for source, sink in ((client, self.upstream), (upstream, self.client)):
                    chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(READ_AHEAD)
                    self._tasks.append(group.create_task(self._read(source, chunks)))
                    self._tasks.append(group.create_task(self._write(chunks, sink)))
        except* OSError:  # one side reset: the other gets a reset too (abort, in the caller)
            pass

    async def _read(
        self, source: asyncio.StreamReader, chunks: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        flowing = self.proxy._flowing
        while True:
            await flowing.wait()  # during a cut the bytes wait in the kernel, as on a dead route
            # throttled, a slice at a time: what waits for the slow link waits in the sender's
            # socket (which pushes back on it), not in this process
            rate = self.proxy._rate
            data = await source.read(max(1, int(rate * THROTTLE_SLICE_S)) if rate else CHUNK)
            await chunks.put((self.proxy._due(), data))
            if not data:
                return

    async def _write(
        self, chunks: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        flowing = self.proxy._flowing
        loop = asyncio.get_running_loop()
        while True:
            due, data = await chunks.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)  # the injected latency itself, not a wait for an event
            await flowing.wait()  # a chunk read just before a cut is held, not delivered
            if not data:  # end of stream: pass the half-close on
                if sink.can_write_eof():
                    sink.write_eof()
                return
            while data:
                await flowing.wait()  # a cut stops a throttled chunk part-way too
                rate = self.proxy._rate
                piece = data if not rate else data[: max(1, int(rate * THROTTLE_SLICE_S))]
                data = data[len(piece) :]
                sink.write(piece)
                await sink.drain()
                self.proxy.counters.bytes_forwarded += len(piece)
                if rate:  # the bandwidth itself, as the latency above: not a wait for an event
                    await asyncio.sleep(len(piece) / rate)
