"""``hearth run``: one robot's peer in the foreground, syncing with its household.

It opens the peer, serves websockets (sync and enrolment of invited robots), dials static
peers, finds the others by mDNS (dialing those with a smaller device id: only the greater id
dials), serves the local HTTP API on a loopback address (`hearthsync.api`, bearer token in
``api.token``), and runs until SIGINT or SIGTERM, then shuts down cleanly: the mDNS goodbye is
sent, connections are closed, the store is flushed.  While it runs, ``run.json`` in the peer
folder says where it listens (sync and API) and whom it is connected to (``hearth status``,
``hearth invite`` and ``hearth context`` read it).

With ``--console`` it also reads one command per line (at most `CONSOLE_LINE_LIMIT` bytes) on
standard input and answers on standard output (an operator's and a test's way in; robot
software uses the HTTP API)::

    user ID NAME               -> ACK user ID
    pref USER KEY VALUE        -> ACK pref USER KEY VALUE       (VALUE is JSON, or a word)
    get USER KEY               -> VALUE USER KEY <json>
    wait USER KEY SECONDS      -> OK USER KEY | TIMEOUT USER KEY   (waits for sync, no polling)
    waituser USER SECONDS      -> OK user USER | TIMEOUT user USER
    peers                      -> PEERS id,id,...
    waitpeers COUNT SECONDS    -> PEERS id,... once COUNT peers are linked | TIMEOUT peers ...
    partition on|off           -> ACK partition on|off   (cut / restore every connection)
    revoke DEVICE              -> ACK revoke DEVICE scope@epoch,...  (the owner only)
    waitrevoked DEVICE SECONDS -> REVOKED DEVICE once this robot holds its revocation
                                  | TIMEOUT revoked DEVICE
    digest                     -> DIGEST <hex>   (every document, once flushed: chaos checks)
    forget USER                -> ACK forget USER DEVICE  (the user is forgotten everywhere)
    forgotten USER SECONDS     -> FORGOTTEN USER once nothing of theirs remains here
                                  | TIMEOUT forgotten USER: what remains; ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hearthsync import enrolment
from hearthsync.api.server import DEFAULT_PORT, check_loopback, serve_api
from hearthsync.discovery import SERVICE_TYPE, Discovery, PeerLost
from hearthsync.discovery.events import PeerEvent
from hearthsync.discovery.static import StaticPeer
from hearthsync.errors import HearthError, ValidationError
from hearthsync.peer import Peer
from hearthsync.protocol.session import DEAD_AFTER_S
from hearthsync.transport.service import SyncService

log = logging.getLogger(__name__)
RUN_FILE = "run.json"


async def run(
    path: Path,
    *,
    listen: tuple[str, int] | None,
    peers: Sequence[StaticPeer] = (),
    mdns: bool = True,
    service_type: str | None = None,
    console: bool = False,
    api: tuple[str, int] | None = ("127.0.0.1", DEFAULT_PORT),
) -> None:
    if api is not None:
        check_loopback(api[0])  # before anything starts
    async with Peer.open(path) as peer:
        state = peer.household
        if state is None:
            raise ValidationError(
                f"{path} belongs to no household: run 'hearth init' or 'hearth join' first",
                field="path",
            )

        async def join(request: bytes) -> bytes:  # file locks and fsyncs: off the event loop
            return await asyncio.to_thread(
                enrolment.enrol, path, peer.identity, request, now=int(peer.wall())
            )

        service = SyncService(
            peer, state.credentials(peer.identity), listen=listen,
            peers=tuple((p.host, p.port) for p in peers), join=join, clock=peer.wall,
        )  # fmt: skip
        async with service:
            await _serve(peer, service, path, mdns=mdns, service_type=service_type,
                         console=console, listen=listen, api=api)  # fmt: skip
    print("STOPPED", flush=True)  # after the store is flushed and closed


async def _serve(
    peer: Peer, service: SyncService, path: Path, *, mdns: bool, service_type: str | None,
    console: bool, listen: tuple[str, int] | None, api: tuple[str, int] | None,
) -> None:  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    port = service.port if listen is not None else 0
    host = listen[0] if listen is not None else ""
    assert peer.household is not None
    async with contextlib.AsyncExitStack() as stack:
        if mdns and listen is not None:
            discovery = Discovery(
                peer.device_id, port, peer.household.household.discovery_tag,
                interfaces=[host] if host not in ("", "0.0.0.0") else None,  # noqa: S104
                addresses=[host] if host not in ("", "0.0.0.0") else None,  # noqa: S104
                service_type=service_type or SERVICE_TYPE,
                preferred=lambda device: _known_robot(peer, device),
            )  # fmt: skip
            await stack.enter_async_context(discovery)
            discovery.subscribe(lambda event: _on_discovered(peer, service, event))
        served = None
        if api is not None:  # the local HTTP API (its address is in run.json)
            served = await stack.enter_async_context(serve_api(peer, *api))
        run_file = _RunFile(path, _Where(host, port, served), peer, service)
        run_file.write()
        print(f"READY {peer.device_id} {host}:{port}", flush=True)
        helpers = [asyncio.create_task(_keep_run_file(run_file), name="run.json")]
        if console:  # the end of its input does not stop the robot: only a signal does
            helpers.append(asyncio.create_task(_console(peer, service, run_file), name="console"))
        for task in helpers:
            task.add_done_callback(_said_if_failed)
        await stop.wait()
        for task in helpers:
            task.cancel()
        # what a helper failed of was said when it failed: the shutdown goes on (a console
        # that had failed made 'hearth run' exit 1 with a traceback at SIGTERM, with no
        # STOPPED and run.json left; found in review)
        await asyncio.gather(*helpers, return_exceptions=True)
    (path / RUN_FILE).unlink(missing_ok=True)


def _said_if_failed(task: asyncio.Task[None]) -> None:
    """Log a helper of the run that ended on an error, when it ends: the robot syncs on."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the %s task stopped: %s: %s", task.get_name(), type(error).__name__, error)


def _known_robot(peer: Peer, device: str) -> bool:
    """A robot of the household this one holds the certificate of, not revoked: it takes
    the place of a record nobody proved in a full discovery view (`PeerView.found`)."""
    trust = peer.household.trust if peer.household is not None else None
    return trust is not None and device in trust.devices() and not trust.is_revoked(device)


def _on_discovered(peer: Peer, service: SyncService, event: PeerEvent) -> None:
    """Dial what mDNS finds, one loop per robot (found again: the loop follows its address),
    and tell the loop of a robot that said goodbye (anyone can say it in its name: the loop
    goes on dialing where the robot proved itself, for a while).  Static peers are dialed by
    address, not by device id, so a goodbye does not stop them."""
    if isinstance(event, PeerLost):
        service.stop_dialing(event.device_id)
    elif peer.device_id > event.device_id:  # only the device with the greater id dials
        service.dial(event.host, event.port, device=event.device_id)


@dataclass(frozen=True, slots=True)
class _Where:
    """Where the robot listens: sync, and the HTTP API (None: not served)."""

    host: str
    port: int
    api: tuple[str, int] | None


class _RunFile:
    """``run.json``: where the robot listens, its links and their lag, and the household's
    other robots, linked or not and when last linked (what ``hearth status`` shows: a robot
    cut off lists the robots it misses, not an empty table)."""

    def __init__(self, path: Path, where: _Where, peer: Peer, service: SyncService) -> None:
        self.path, self.where, self.peer, self.service = path, where, peer, service
        self.last_linked: dict[str, float] = {}  #: device -> when last seen linked
        self.linked: frozenset[str] = frozenset()  #: the links as last written

    def refresh(self) -> None:
        """`write`, or warn: status is a convenience, never a reason to stop syncing (nor
        to leave a console command unanswered)."""
        try:
            self.write()
        except OSError as exc:
            log.warning("could not write %s: %s", self.path / RUN_FILE, exc)

    def write(self) -> None:
        now = time.time()
        service, peer = self.service, self.peer
        self.linked = frozenset(service.links)
        for device in self.linked:
            self.last_linked[device] = now
        links = {
            device: {
                "sent": link.bytes_sent,
                "received": link.bytes_received,
                "unacknowledged_documents": sorted(link.unacked),
            }
            for device, link in service.links.items()
        }
        household = {}
        if peer.household is not None:
            trust = peer.household.trust
            for device in trust.devices():
                if device == peer.device_id or trust.is_revoked(device):
                    continue
                household[device] = {
                    "name": trust.certificate_of(device).device_name,
                    "linked": device in self.linked,
                    "last_linked": self.last_linked.get(device),
                }
        where = self.where
        api = {"host": where.api[0], "port": where.api[1]} if where.api else None
        data = {"pid": os.getpid(), "host": where.host, "port": where.port, "api": api,
                "device_id": peer.device_id, "links": links, "household": household,
                "at": now}  # fmt: skip
        partial = self.path / f".{RUN_FILE}.tmp"
        partial.write_text(json.dumps(data))
        os.replace(partial, self.path / RUN_FILE)


async def _keep_run_file(run_file: _RunFile) -> None:
    """Write ``run.json`` again whenever a link opens or closes, and every 2 s (the traffic)."""
    service = run_file.service
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await service.wait_until(lambda: frozenset(service.links) != run_file.linked)
        run_file.refresh()


# ------------------------------------------------------------------------------ the console


#: what the console's ``help`` lists (docs/reference/cli.md has the answers too)
CONSOLE_COMMANDS = (
    "user ID NAME", "pref USER KEY VALUE", "get USER KEY", "wait USER KEY SECONDS",
    "waituser USER SECONDS", "peers", "waitpeers COUNT SECONDS", "partition on|off",
    "revoke DEVICE (name or id)", "waitrevoked DEVICE SECONDS", "forget USER",
    "forgotten USER SECONDS", "digest", "help",
)  # fmt: skip


#: the longest console line (a command and its value), in bytes: a longer one is answered
#: with ``ERR`` and skipped whole (robot software with more to say uses the HTTP API)
CONSOLE_LINE_LIMIT = 65_536


async def _console(peer: Peer, service: SyncService, run_file: _RunFile) -> None:
    reader = asyncio.StreamReader(limit=CONSOLE_LINE_LIMIT)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async for line in _lines(reader):
        try:
            if line is None:
                raise ValueError(f"a console line is at most {CONSOLE_LINE_LIMIT} bytes")
            text = line.decode()
            words = text.split()
            if not words:
                continue
            if words[0] == "pref":  # its VALUE is the rest of the line, runs of spaces kept
                words = text.split(maxsplit=3)
                words[3:] = [value.strip() for value in words[3:]]
            print(await _command(peer, service, words, run_file), flush=True)
        except (HearthError, ValueError, IndexError, OSError) as exc:
            print(f"ERR {exc}", flush=True)


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes | None]:
    """The lines of ``reader``, None for each longer than its limit, skipped to its end: one
    answer per line, whatever its length.  ``readline`` raised ValueError for such a line,
    outside the console's ``try``, and the console answered nothing more (found in review);
    it also left the rest of the line to be read as a line of its own."""
    too_long = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # the input ends (with an unfinished line)
            if end.partial:
                yield None if too_long else end.partial
            return
        except asyncio.LimitOverrunError as over:  # no newline within the limit
            await reader.readexactly(over.consumed)  # dropped; so is the rest, up to a newline
            too_long = True
            continue
        yield None if too_long else line
        too_long = False


async def _command(peer: Peer, service: SyncService, words: list[str], run_file: _RunFile) -> str:
    match words:
        case ["user", user, *name]:
            await peer.add_user(user, name=" ".join(name) or user)
            return f"ACK user {user}"
        case ["pref", user, key, value]:  # a line without VALUE is refused, writing nothing
            await peer.set_preference(user, key, _value(value))  # (it stored "": found in review)
            return f"ACK pref {user} {key} {value}"
        case ["get", user, key]:
            found = peer.preference(user, key)
            return f"VALUE {user} {key} {json.dumps(found.value if found else None)}"
        case ["wait", user, key, seconds]:
            ok = await _wait_for(
                peer, lambda: peer.preference(user, key) is not None, float(seconds)
            )
            return f"{'OK' if ok else 'TIMEOUT'} {user} {key}"
        case ["waituser", user, seconds]:
            ok = await _wait_for(peer, lambda: user in peer.users(), float(seconds))
            return f"{'OK' if ok else 'TIMEOUT'} user {user}"
        case ["peers"]:
            return "PEERS " + ",".join(sorted(service.links))
        case ["waitpeers", count, seconds]:
            try:
                async with asyncio.timeout(float(seconds)):
                    await service.wait_for_links(int(count))
            except TimeoutError:
                return "TIMEOUT peers " + ",".join(sorted(service.links))
            return "PEERS " + ",".join(sorted(service.links))
        case ["revoke", device]:
            assert peer.household is not None
            device = enrolment.device_named(peer.household, device)  # a name, or the id
            epochs = enrolment.revoke(peer.path, peer.household, peer.identity, device,
                                      now=int(peer.wall()), users=peer.users())  # fmt: skip
            # what the revoked device signed no longer counts here; the new epochs' keys go to
            # every robot still trusted, after the list (`Session.send_grants`)
            peer.trust_changed()
            service.trust_changed()  # drops the revoked device, tells the others
            return f"ACK revoke {device} " + ",".join(f"{s}@{e}" for s, e in sorted(epochs.items()))
        case ["waitrevoked", device, seconds]:
            assert peer.household is not None
            trust = peer.household.trust
            device = device.replace("-", "")
            try:  # woken when the trust store takes a list in (`SyncService.wait_until`)
                async with asyncio.timeout(float(seconds)):
                    await service.wait_until(lambda: device in trust.revoked)
            except TimeoutError:
                return f"TIMEOUT revoked {device}"
            return f"REVOKED {device}"
        case ["forget", user]:
            tombstone = await peer.forget(user)
            return f"ACK forget {user} {tombstone.device}"
        case ["forgotten", user, seconds]:  # another robot's forgetting reached this one
            if await _wait_for(peer, lambda: not peer.forgetting_remnants(user), float(seconds)):
                return f"FORGOTTEN {user}"
            return (
                f"TIMEOUT forgotten {user}: {'; '.join(map(str, peer.forgetting_remnants(user)))}"
            )
        case ["digest"]:  # equal on two robots: they hold the same documents
            # imported here: the chaos package (simulator and all) is no part of a running robot
            from hearthsync.chaos.check import digest

            await peer.flush()
            return f"DIGEST {digest(peer)}"
        case ["partition", "on"]:
            run_file.refresh()  # the links about to be cut, as last linked now
            service.pause()
            # answered once the links are gone (closing one is bounded by DEAD_AFTER_S) and
            # run.json says so: `hearth status` then shows the cut
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DEAD_AFTER_S + 1.0):
                    await service.wait_until(lambda: not service.links)
            run_file.refresh()
            return "ACK partition on"
        case ["partition", "off"]:
            service.resume()
            return "ACK partition off"
        case ["help"]:
            return "COMMANDS " + "; ".join(CONSOLE_COMMANDS)
    known = {usage.split()[0] for usage in CONSOLE_COMMANDS}
    if words[0] in known:  # a known command with the wrong arguments
        usage = "; ".join(u for u in CONSOLE_COMMANDS if u.split()[0] == words[0])
        raise ValueError(f"usage: {usage}")
    raise ValueError(f"unknown command: {' '.join(words)!r}; 'help' lists the commands")


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def _wait_for(peer: Peer, condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` holds within ``seconds``: looked at again after each commit and
    each purge's end, never by polling."""
    changed = asyncio.Event()
    off = peer.on_durable(lambda _: changed.set())
    peer.on_forgotten.append(woken := lambda _: changed.set())  # a purge's end commits nothing
    try:
        async with asyncio.timeout(seconds):
            while not condition():
                changed.clear()
                await changed.wait()
        return True
    except TimeoutError:
        return False
    finally:
        off()
        peer.on_forgotten.remove(woken)
