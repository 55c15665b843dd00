"""One websocket connection driving one `Session`: the thin I/O around the protocol core.

The link only pumps: a received message goes into the session; what the session wants sent
goes out; its events become calls on the `SyncTarget` (the peer).  It adds three things the
sans-I/O session cannot do itself:

* **durability before acknowledgement**: an ``ApplyUpdate`` is merged into the target's
  memory at once, and ``session.applied`` queues its ``ACK`` only once the group commit holding
  it is durable.  The link keeps reading meanwhile (the next update is merged while this one is
  being committed), up to `MAX_UNDURABLE` updates: a peer that sends faster than this device's
  disk can commit is read no faster than the disk;
* **forwarding only what is durable**: local deltas reach the link from the target's commit
  listener, i.e. after they are on disk (DESIGN invariant 1); a delta is never echoed to the
  device it came from, nor relayed to a peer that has a session with that device
  (`Session.relays`);
* **back-pressure**: the outgoing queue of deltas is bounded; a peer too slow to drain it is
  disconnected and catches up from the inventory when it reconnects, instead of growing this
  process's memory without bound;
* **a peer that stops reading is dropped**: a send during which the socket takes none of the
  bytes waiting for it for `send_timeout` (`DEAD_AFTER_S` by default) aborts the connection.
  Without the bound, the task sending a heartbeat waited behind the full socket, so the
  session's own dead-peer rule (`Session.tick`) never ran again, and a hung or powered-off
  robot kept its link, and the redial of that pair, for as long as TCP did not give up (for
  ever, for a hung process);
* **a slow link is not a dead one**: a peer whose socket drains slowly is still reading, and
  bytes arriving of a frame not yet whole are still the peer speaking (`Session.heard`, counted
  by `CountingServerConnection` and `CountingClientConnection`).  Both rules used to count
  whole frames only, so a frame that took longer than `DEAD_AFTER_S` to cross the link (1 MiB
  below about 85 KB/s) dropped the link each time it was sent, and the robot never caught up;
* **a stranger is held to small messages**: until a peer's AUTH has arrived (and on the join
  path), its messages may hold at most `OPENING_MAX_MESSAGE_LEN` bytes; a larger one closes
  the connection (1009) before it is read.  Before, each of up to
  `MAX_OPENING` connections that had proved nothing could make this device hold 16 queued
  messages of 4 MiB each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from pycrdt import merge_updates
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol as WebsocketProtocol
from websockets.server import ServerProtocol

from hearthsync.crdt import statevector, updates
from hearthsync.errors import HearthError, RemoteError
from hearthsync.ids import DocId
from hearthsync.protocol.frames import MAX_FRAME_LEN, FrameType
from hearthsync.protocol.session import (
    DEAD_AFTER_S,
    Acked,
    ApplyUpdate,
    Closed,
    DocSource,
    Event,
    KeysChanged,
    KeysWanted,
    PeerAuthenticated,
    RevocationsChanged,
    SealFailed,
    Session,
    answer_from,
)

log = logging.getLogger(__name__)

#: a link's refusal already logged as a warning is logged again as one only after this long
REPEAT_QUIET_S = 600.0
MAX_WARNED = 256  #: refusals remembered for that (each names the device refused, or its cause)
_warned: dict[str, float] = {}


def _remote(websocket: Connection) -> str:
    """The peer's address, for a link closed before the peer said who it is."""
    try:
        address = websocket.remote_address
    except Exception:  # a transport already gone
        return "an unknown peer"
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return "an unknown peer"


#: bytes written to a peer and not yet taken by its socket past which it is dropped: a send
#: writes one frame (at most `MAX_FRAME_LEN`) and waits for it to drain before the next, so
#: only a peer that makes this side write without reading (websocket pings: their pongs are
#: written at once, whatever waits) gets this far
MAX_UNSENT = 2 * MAX_FRAME_LEN


class _Counting(Connection):
    """A websocket that counts the bytes arriving (`Link` tells its session), and drops a
    peer that makes it write more than `MAX_UNSENT` it does not read."""

    bytes_arrived = 0
    watch_unread = True  #: off once the link closes (`Link._flush_and_close`)

    def data_received(self, data: bytes) -> None:
        self.bytes_arrived += len(data)
        super().data_received(data)
        if self.watch_unread:
            _drop_if_unread(self)


#: the most a peer's message may hold until its AUTH has arrived (SPEC §6.1): a HELLO is at
#: most about 1,100 bytes, an AUTH 70, an ERROR about 270, a PING 12, a join request 1,024
OPENING_MAX_MESSAGE_LEN = 2048
#: how an AUTH frame begins (SPEC §5: an array of two, its type in its shortest form)
AUTH_OPENING = bytes([0x92, FrameType.AUTH])
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


def _limit_the_opening(protocol: WebsocketProtocol) -> None:
    """Hold ``protocol``'s peer to `OPENING_MAX_MESSAGE_LEN` bytes a message until a message
    that is an AUTH has arrived, then to `MAX_FRAME_LEN`.

    The limit lifts as the parser takes the AUTH (`Protocol.recv_frame`), not when the
    session reads it: a peer that has checked this side's AUTH sends its INVENTORY right
    behind its own, often in the same TCP segment, which the parser reads before the
    session has seen the AUTH.  Counting messages instead let a stranger lift it with two
    small ones: another robot's certificate in a HELLO (every robot shows its own to anyone)
    and a PING, which the session allows before it opens (found in review).  A stranger can
    still send a large message right behind a forged AUTH, but the session closes the
    connection on reading that AUTH (401), a loop turn later.  On the join path no AUTH
    comes: the limit stays."""
    protocol.max_message_size = OPENING_MAX_MESSAGE_LEN
    received = protocol.recv_frame
    head = b""  # the first bytes of the message being parsed

    def recv_frame(frame: Frame) -> None:
        nonlocal head
        received(frame)
        if frame.opcode not in _DATA:
            return
        if frame.opcode is not Opcode.CONT:
            head = b""
        head += bytes(frame.data[: len(AUTH_OPENING) - len(head)])
        if frame.fin and head == AUTH_OPENING:
            protocol.max_message_size = MAX_FRAME_LEN
            del protocol.recv_frame  # the class's own from now on

    # websockets offers no hook between two frames, nor a way to choose the protocol's class
    protocol.recv_frame = recv_frame  # type: ignore[method-assign]


class CountingServerConnection(_Counting, ServerConnection):
    """An accepted websocket that counts (`_Counting`), its opening held to small messages
    (`_limit_the_opening`)."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        _limit_the_opening(protocol)
        super().__init__(protocol, *args, **kwargs)


class CountingClientConnection(_Counting, ClientConnection):
    """A dialed websocket that counts (`_Counting`), its opening held to small messages
    (`_limit_the_opening`): whatever answers at an address mDNS gave is a stranger too."""

    def __init__(self, protocol: ClientProtocol, *args: Any, **kwargs: Any) -> None:
        _limit_the_opening(protocol)
        super().__init__(protocol, *args, **kwargs)


def _drop_if_unread(websocket: Connection) -> None:
    """A peer that floods websocket pings and reads nothing had this side write their pongs
    into memory without bound, before the handshake too: a stranger on the LAN could fill it
    (found in review)."""
    unsent = websocket.transport.get_write_buffer_size()
    if unsent > MAX_UNSENT:
        log.warning("dropped the link to %s: %d bytes it does not read wait for it",
                    _remote(websocket), unsent)  # fmt: skip
        websocket.transport.abort()


def _arrived(websocket: Connection) -> int | None:
    """Bytes arrived on ``websocket`` so far, if it counts them."""
    if isinstance(websocket, _Counting):
        return websocket.bytes_arrived
    return None


def _unsent(websocket: Connection) -> int | None:
    """Bytes written to ``websocket`` that the peer has not acknowledged yet, if it can tell:
    what the transport holds, and (Linux) what the kernel's send queue holds.

    The transport's count alone moves in steps: it shrinks only when the socket turns
    writable again, once about a third of a send buffer of up to 4 MiB was acknowledged, so a
    peer reading 100 KB/s all the time looked idle for whole `send_timeout` windows and was
    dropped (found in review).  The kernel's count falls with every acknowledgement."""
    try:
        unsent = int(websocket.transport.get_write_buffer_size())
    except Exception:  # a transport gone, or none (a test double)
        return None
    return unsent + _kernel_unsent(websocket)


def _kernel_unsent(websocket: Connection) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (``SIOCOUTQ``), or 0
    where the platform cannot tell."""
    with contextlib.suppress(Exception):  # ImportError too: fcntl and termios are Unix only
        import fcntl
        import termios

        sock = websocket.transport.get_extra_info("socket")
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4))
        return int(struct.unpack("i", queued)[0])
    return 0


#: deltas waiting to be sent to one peer before it counts as too slow, and their bytes: a
#: delta is a group commit's change to one document, of any size, and a peer reading slowly
#: (never dropped by `send_timeout`) let 68 MB queue up and growing at the write rate while
#: the count allowed 10,000 of them (found in review)
MAX_PENDING_DELTAS = 10_000
MAX_PENDING_BYTES = 64 * 1024 * 1024
#: updates received from one peer, merged in memory and not yet durable, before the link stops
#: reading until the oldest is (back-pressure towards a peer faster than this device's disk)
MAX_UNDURABLE = 64
#: frames the session made and the socket has not taken yet, at most: past it the peer is
#: too slow (it catches up from the inventory at its next link).  The reader goes on reading
#: while the writer waits on the socket (`Link._write`), so what a burst of requests makes
#: the session answer waits here; generous, as a catch-up's answers all come at once
MAX_UNSENT_BYTES = 256 * 1024 * 1024
TICK_S = 0.5

Durable = Sequence[tuple[str, bytes, str]]


class SyncTarget(Protocol):
    """What a link needs from the peer."""

    @property
    def docs(self) -> DocSource: ...

    def receive_update(
        self, doc_id: str, update: bytes, *, origin: str, packed: bytes | None = None
    ) -> asyncio.Future[None] | None:
        """Merge ``update`` in memory now; the future resolves once it is durable (``None``:
        it held nothing new).  ``packed``: the Zstandard frame it arrived in, if any, which
        the store may keep as it is.  Raises `HearthError` for an update that cannot be
        merged."""
        ...

    def state_vector(self, doc_id: str) -> bytes:
        """The canonical state vector of ``doc_id`` in memory."""
        ...

    def on_durable(self, listener: Callable[[Durable], None]) -> Callable[[], None]:
        """Subscribe to (doc_id, delta, origin) batches once durable; returns unsubscribe."""
        ...

    def keys_changed(self) -> None:
        """A peer granted keys this device did not hold: persist them."""
        ...

    def keys_wanted(self, user: str) -> None:
        """(The owner.)  A peer asked for the keys of ``user``, whom no robot keyed in the
        current epoch: key them, which grants them on every link."""
        ...

    @property
    def on_keys_made(self) -> list[Callable[[], None]]:
        """Called when the peer has keys to grant (it made some, or an owner or admin was
        granted some): the service grants them to every linked robot."""
        ...

    def trust_changed(self) -> None:
        """The trust store changed (a newer revocation list, a peer's certificate): persist it."""
        ...


class Link:
    """Runs one session over one websocket until either side closes it."""

    def __init__(
        self,
        websocket: Connection,
        session: Session,
        target: SyncTarget,
        *,
        dialed: bool,
        on_event: Callable[[Link, Event], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        send_timeout: float = DEAD_AFTER_S,
    ) -> None:
        self.websocket = websocket
        self.session = session
        self.target = target
        self.dialed = dialed
        self._on_event = on_event
        self._clock = clock  #: the session's timers: monotonic, a wall clock may jump
        self._wall = wall  #: certificates, grants and revocations
        self._send_timeout = send_timeout  #: a peer that takes no frame this long is dropped
        self._pending: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._pending_bytes = 0  #: of the deltas in `_pending`
        self._overflow = False
        self.bytes_sent = 0
        self.bytes_received = 0
        #: documents sent to the peer and not yet acknowledged durable there: the lag
        self.unacked: dict[str, statevector.StateVector] = {}
        #: updates from the peer merged here whose commit is pending (counted, not queued:
        #: the updates of one group commit share one future, and only `_durable_here` counts
        #: one down, once per update)
        self._undurable = 0
        self._room = asyncio.Event()  #: set whenever `_undurable` goes down
        self.authenticated = False  #: the handshake completed (PEER_AUTHENTICATED was seen)
        self._sending = asyncio.Lock()  #: one batch of frames on the wire at a time (`_flush`)
        self._to_send = asyncio.Event()  #: the reader has frames for the writer (`_write`)
        self._arrived = _arrived(websocket)  #: bytes arrived as of the last tick

    @property
    def peer_id(self) -> str | None:
        return self.session.peer_id

    async def run(self) -> None:
        """Pump until the connection ends; always leaves the websocket closed."""
        unsubscribe = self.target.on_durable(self._durable)
        tasks = [
            asyncio.create_task(self._receive(), name="hearthsync-link-receive"),
            asyncio.create_task(self._write(), name="hearthsync-link-write"),
            asyncio.create_task(self._tick(), name="hearthsync-link-tick"),
            asyncio.create_task(self._forward(), name="hearthsync-link-forward"),
        ]
        try:
            await self._flush()
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            unsubscribe()
            failure = await _stop(tasks)
            await self._flush_and_close()  # even after a bug: the peer must not wait for a close
        if failure is not None:
            raise failure

    def close(self, reason: str = "closing") -> None:
        self.session.close(reason)
        self.kick()

    def kick(self) -> None:
        """Wake the forwarder so what the session queued from outside gets sent."""
        self._pending.put_nowait(("", b""))

    def send_grants(self) -> None:
        if self.session.send_grants():
            self.kick()

    def keys_learned(self) -> None:
        """Keys were granted on another link: offer what may be sealed for this peer now."""
        self.session.keys_learned()
        self.kick()

    def send_revocations(self) -> None:
        self.session.send_revocations()  # may close the session: a revoked peer
        self.kick()

    # -------------------------------------------------------------- the three pumps

    async def _receive(self) -> None:
        async for message in self.websocket:
            if isinstance(message, str):  # the protocol is binary only
                self.session.refuse("text messages are not accepted: the protocol is binary")
            else:
                self.bytes_received += len(message)
                self.session.receive_data(message, self._clock(), self._wall())
            await self._handle_events()
            # not sent here: a reader that waited for its own sends read nothing meanwhile,
            # and two robots each answering a large catch-up of the other filled both
            # sockets, stopped reading both, and dropped the link for good at every retry
            # (found in review: 7.5 MB each way on loopback); the writer sends them
            self._to_send.set()
            if self.session.unsent_bytes() > MAX_UNSENT_BYTES:
                self.session.close("too slow: reconnect and catch up from the inventory")
            if self.session.closed:
                return
            while self._undurable >= MAX_UNDURABLE:  # let the disk catch up
                self._room.clear()
                await self._room.wait()

    async def _write(self) -> None:
        """Send what the reader made the session queue, while the reader goes on reading."""
        while True:
            await self._to_send.wait()
            self._to_send.clear()
            await self._flush()
            if self.session.closed and not self.session.unsent_bytes():
                return

    async def _tick(self) -> None:
        while not self.session.closed:
            await asyncio.sleep(TICK_S)  # a timer, not a wait for an event: heartbeats
            arrived = _arrived(self.websocket)
            if arrived != self._arrived:  # part of a frame, still on its way
                self._arrived = arrived
                self.session.heard(self._clock())
            self.session.tick(self._clock(), self._wall())
            await self._handle_events()
            await self._flush()

    async def _forward(self) -> None:
        while not self.session.closed:
            batch = [await self._pending.get()]
            while not self._pending.empty():
                batch.append(self._pending.get_nowait())
            self._pending_bytes -= sum(len(delta) for _, delta in batch)
            if self._overflow:
                self.session.close("too slow: reconnect and catch up from the inventory")
            else:
                self._send_merged(batch)
            await self._flush()

    def _send_merged(self, batch: list[tuple[str, bytes]]) -> None:
        """One envelope per document for everything queued meanwhile (one signature each),
        but for deltas that delete: one each (`merged_for_sending`)."""
        for doc_id, delta in merged_for_sending(batch):
            if self.session.send_update(DocId(doc_id), delta):
                self._sent(doc_id)

    # -------------------------------------------------------------- plumbing

    def _durable(self, batch: Durable) -> None:
        for doc_id, delta, origin in batch:
            if self._overflow:  # the link closes: the peer catches up from the inventory, and
                return  # a send stuck meanwhile must not see one marker more per commit
            if not self.session.relays(DocId(doc_id), origin, delta):
                continue  # the peer sent it, or has it from where it came (SPEC §6.4)
            if (
                self._pending.qsize() >= MAX_PENDING_DELTAS
                or self._pending_bytes + len(delta) > MAX_PENDING_BYTES
            ):
                self._overflow = True
                self._pending.put_nowait(("", b""))
                return
            self._pending.put_nowait((doc_id, delta))
            self._pending_bytes += len(delta)

    def _sent(self, doc_id: str) -> None:
        self.unacked[doc_id] = statevector.decode(self.target.docs.state_vector(DocId(doc_id)))

    def _acked(self, doc_id: str, state_vector: bytes) -> None:
        sent = self.unacked.get(doc_id)
        try:
            acked = statevector.decode(state_vector)
        except RemoteError:
            return
        if sent is not None and statevector.covers(acked, sent):
            del self.unacked[doc_id]

    def _log_closed(self, event: Closed) -> None:
        """Log why the link closed: a warning, unless it is an ordinary end (1000, 408), or
        the same refusal was logged in the last `REPEAT_QUIET_S` (a revoked robot redials
        every few seconds, for good: a warning each time was noise; found by a new user)."""
        peer = self.peer_id or _remote(self.websocket)  # refused before it said who it is
        level = logging.INFO if event.code in (1000, 408) else logging.WARNING
        if level == logging.WARNING:
            now = time.monotonic()
            # per robot (another's refusal is news); by host before it said who it is (each
            # redial comes from another port)
            who = self.peer_id or peer.rsplit(":", 1)[0]
            said = f"{who} {event.code} {event.reason}"
            if now - _warned.get(said, -REPEAT_QUIET_S) < REPEAT_QUIET_S:
                level = logging.DEBUG
            else:
                if len(_warned) >= MAX_WARNED:
                    _warned.pop(next(iter(_warned)))
                _warned[said] = now
        log.log(level, "link to %s closed (%s): %s", peer, event.code, event.reason)

    async def _handle_events(self) -> None:
        for event in self.session.events_received():
            if isinstance(event, ApplyUpdate):
                if not self.session.closed:  # closed meanwhile (paused, a duplicate): not merged
                    self._apply(event)
            elif isinstance(event, KeysChanged):
                self.target.keys_changed()
            elif isinstance(event, KeysWanted):
                self.target.keys_wanted(event.user)
            elif isinstance(event, RevocationsChanged):
                self.target.trust_changed()
            elif isinstance(event, Acked):
                self._acked(event.doc_id, event.state_vector)
            elif isinstance(event, Closed):
                self._log_closed(event)
            elif isinstance(event, SealFailed):
                log.warning("did not send %s to %s: %s", event.doc_id, self.peer_id, event.reason)
            elif isinstance(event, PeerAuthenticated):
                self.authenticated = True
                log.info("link to %s authenticated", event.device_id)
                self.target.trust_changed()  # its certificate joined the trust store
            if self._on_event is not None:
                self._on_event(self, event)

    def _apply(self, event: ApplyUpdate) -> None:
        """Merge the update now; acknowledge it once its commit is durable.

        The state vector acknowledged is the one right after the merge: whatever it covers was
        merged before this update, so it is durable once this update is (group commits land in
        order), while anything merged later is not promised.
        """
        try:
            origin = self.session.peer_id or event.author
            done = self.target.receive_update(
                event.doc_id,
                event.update,
                origin=answer_from(origin) if event.answer else origin,
                packed=event.packed,
            )
        except HearthError as exc:  # a corrupt local document
            log.warning("could not apply %s from %s: %s", event.doc_id, self.peer_id, exc)
            self.session.close(f"could not apply {event.doc_id}")
            return
        state_vector = self.target.state_vector(event.doc_id)
        if done is None:  # nothing new: what it holds is already durable here
            self.session.applied(event.doc_id, state_vector)
            return
        self._undurable += 1
        done.add_done_callback(partial(self._durable_here, event.doc_id, state_vector))

    def _durable_here(self, doc_id: DocId, state_vector: bytes, done: asyncio.Future[None]) -> None:
        self._undurable -= 1
        self._room.set()
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:  # a failed commit: the peer will send again
            log.warning("could not commit %s from %s: %s", doc_id, self.peer_id, error)
            self.session.close(f"could not commit {doc_id}")
        else:
            self.session.applied(doc_id, state_vector)
        self.kick()

    async def _flush(self) -> None:
        """Send what the session has to send, in its order.  The pumps flush concurrently;
        taking and sending under one lock keeps a batch whole: a send waiting on a full socket
        (after its frame was written) let another pump's frames overtake the rest of its
        batch, and an UPDATE overtook the KEY_GRANT of its key, which closed the link (409,
        found in review)."""
        async with self._sending:
            for data in self.session.data_to_send():
                self.bytes_sent += len(data)
                if not await self._send(data):
                    return

    async def _send(self, data: bytes) -> bool:
        """Send one frame; False if the peer was dropped instead: the socket took none of the
        bytes waiting for it for `send_timeout` (an authenticated peer reading slowly, that
        takes some in every `send_timeout`, is sent on).

        No task and no timer for a send the socket takes at once (nearly all): a callback
        looks at the socket on the next turn of the loop, once the send has written its frame
        and waits for it to drain, and from then on every `send_timeout`."""
        loop = asyncio.get_running_loop()
        waiting: int | None = None  # what the socket had not taken, at the last look
        late = False
        handle: asyncio.Handle  # the next look

        def look() -> None:
            nonlocal waiting, handle, late
            try:
                now_waiting = _unsent(self.websocket)
            except Exception:  # whatever it is, the send must not wait unwatched for ever
                now_waiting = None
            # a stranger's frames are a few hundred bytes: one not taken in a window is not a
            # slow link, and waiting on would hold its opening slot past the handshake's
            # deadline (it can make its socket take a little now and then, found in review)
            if waiting is not None and (
                not self.authenticated or now_waiting is None or now_waiting >= waiting
            ):
                late = True
                deadline.reschedule(loop.time())  # ends the send below, now
                return
            waiting = now_waiting if now_waiting is not None else -1
            handle = loop.call_later(self._send_timeout, look)

        handle = loop.call_soon(look)
        try:
            async with asyncio.timeout(None) as deadline:
                await self.websocket.send(data)  # waits while the peer does not read
        except TimeoutError:
            if not late:
                raise
            if self.authenticated:
                self._abort(f"it took no data for {self._send_timeout:g} s")
            else:
                self._abort(f"it took no frame in {self._send_timeout:g} s before authenticating")
            return False
        finally:
            handle.cancel()
        return True

    async def _flush_and_close(self) -> None:
        if isinstance(self.websocket, _Counting):
            # a send cancelled part-way left its frame in the buffer, and the frames flushed
            # now may pass `MAX_UNSENT` behind it: the close has its own bound (found in review)
            self.websocket.watch_unread = False
        with contextlib.suppress(ConnectionClosed):
            await self._flush()
        if not self.authenticated:
            # no closing handshake with a peer that proved nothing: it sends its ERROR (401,
            # 426...) and the socket closes.  Waiting for the peer's close frame kept what it
            # had sent queued meanwhile, up to 16 messages of 4 MiB behind a forged AUTH, for
            # the 10 s of the close timeout (found in review)
            self.websocket.transport.close()
            return
        try:
            async with asyncio.timeout(self._send_timeout):
                await self.websocket.close()  # it waits for the socket to drain, without bound
        except TimeoutError:
            self._abort(f"it did not close in {self._send_timeout:g} s")

    def _abort(self, reason: str) -> None:
        """Drop a peer that stopped reading: a closing handshake would wait behind the frames
        it does not read either.  It catches up from the inventory when it reconnects."""
        level = logging.INFO if self.session.closed else logging.WARNING
        peer = self.peer_id or _remote(self.websocket)  # a stranger: where it dialed from
        log.log(level, "dropped the link to %s: %s", peer, reason)
        self.session.close(reason)
        self.websocket.transport.abort()


async def _stop(tasks: list[asyncio.Task[None]]) -> BaseException | None:
    """Cancel ``tasks`` and wait for their end; the first unexpected exception one of them
    raised (a bug), if any, for the caller to raise once the connection is closed."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, ConnectionClosed):
            return error
    return None


def merged_for_sending(batch: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """``batch`` (document, delta) as the updates to send, in order per document: deltas
    that delete nothing merged while they follow each other, each delta that deletes alone.

    Merged, one delta's removal of an entry would look, to a robot that holds another's
    overwrite of it beyond a gap, like that overwrite's own deletion, which waits with it
    (`hearthsync.crdt.replica`): the robots downstream would show the entry where the robots
    that got the removal alone do not (found in review)."""
    groups: dict[str, list[list[bytes]]] = {}  #: per document, in order: what goes together
    for doc_id, delta in batch:
        if not delta:
            continue
        found = groups.setdefault(doc_id, [])
        if updates.deletes_nothing(delta) and found and updates.deletes_nothing(found[-1][-1]):
            found[-1].append(delta)
        else:
            found.append([delta])
    return [
        (doc_id, group[0] if len(group) == 1 else bytes(merge_updates(*group)))
        for doc_id, found in groups.items()
        for group in found
    ]
