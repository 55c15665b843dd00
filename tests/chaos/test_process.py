"""Process mode of the chaos harness: the fault proxy on plain sockets, then real robots.

The proxy tests run against an echo server on loopback.  Absence (a cut holds the bytes) is
shown by a bounded wait that must time out; presence by a wait that fails loudly if it does.
The process tests run ``hearth run`` robots through the proxies (see hearthsync.chaos.process);
the checks that need a live household (a write made during the cut is absent across it, then
present everywhere after the heal) are made by the run itself and read from its report.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import random
import select
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from hearthsync.chaos import process
from hearthsync.chaos.console import run_in_processes
from hearthsync.chaos.process import (
    FORGOTTEN,
    LATE_KEY,
    NEW_USER,
    USER,
    AddUser,
    CheckCut,
    Cut,
    Forget,
    Heal,
    Kill,
    Restart,
    Revoke,
    Settle,
    Stray,
    Throttle,
    Write,
    admin_of,
    draw_steps,
    hearth_script,
    run_processes,
)
from hearthsync.chaos.proxy import FaultProxy

TIMEOUT = 5.0
ABSENT_S = 0.3  #: how long nothing must arrive for "nothing arrived"


class Echo:
    """A TCP echo server on loopback that counts its connections and keeps what it got."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.connections = 0
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(4096):
                self.received += data
                writer.write(self.prefix + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", int(self.server.sockets[0].getsockname()[1]))


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    async with server.server:
        yield server


@pytest.fixture
async def proxy(echo: Echo) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(echo.address, name="test") as opened:
        yield opened


async def dial(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*proxy.address)


async def read(reader: asyncio.StreamReader, count: int) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        return await reader.readexactly(count)


async def assert_nothing_arrives(reader: asyncio.StreamReader) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(ABSENT_S):
            await reader.read(1)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(TIMEOUT):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# ------------------------------------------------------------------------------ the proxy


async def test_the_proxy_forwards_both_ways_and_counts_bytes(proxy: FaultProxy, echo: Echo) -> None:
    reader, writer = await dial(proxy)
    writer.write(b"hello")
    assert await read(reader, 5) == b"hello"
    await close(writer)
    assert echo.received == b"hello"
    assert proxy.counters.bytes_forwarded == 10
    assert proxy.counters.connections == 1
    assert proxy.counters.faults == 0


async def test_a_cut_holds_bytes_silently_and_a_heal_delivers_them(
    proxy: FaultProxy, echo: Echo
) -> None:
    reader, writer = await dial(proxy)
    writer.write(b"before")
    assert await read(reader, 6) == b"before"
    proxy.cut()
    writer.write(b"during")
    await assert_nothing_arrives(reader)
    assert echo.received == b"before"  # not delivered late either: held
    assert not reader.at_eof()  # silent: nothing was closed
    late_reader, late_writer = await dial(proxy)  # a new connection finds no route either
    late_writer.write(b"late")
    await assert_nothing_arrives(late_reader)
    assert echo.connections == 1
    proxy.heal()
    assert await read(reader, 6) == b"during"  # the same stream resumes, intact
    assert await read(late_reader, 4) == b"late"
    assert echo.connections == 2
    assert proxy.counters.cuts == 1
    await close(writer)
    await close(late_writer)


async def test_a_reset_closes_every_connection_and_new_ones_still_work(
    proxy: FaultProxy,
) -> None:
    pairs = [await dial(proxy) for _ in range(3)]
    for reader, writer in pairs:
        writer.write(b"x")
        assert await read(reader, 1) == b"x"
    proxy.reset()
    for reader, _ in pairs:
        await assert_closed(reader)
    assert proxy.counters.resets == 3
    reader, writer = await dial(proxy)
    writer.write(b"again")
    assert await read(reader, 5) == b"again"
    await close(writer)
    for _, writer in pairs:
        await close(writer)


async def test_a_reset_during_a_cut_closes_at_once(proxy: FaultProxy) -> None:
    reader, writer = await dial(proxy)
    writer.write(b"x")
    assert await read(reader, 1) == b"x"
    proxy.cut()
    writer.write(b"held")
    proxy.reset()
    await assert_closed(reader)  # not at the heal: now
    await close(writer)


async def test_a_delay_keeps_the_order_even_when_it_shrinks(proxy: FaultProxy) -> None:
    """Chunks sent under a long delay, then under none: the later ones must not overtake."""
    reader, writer = await dial(proxy)
    sent = b""
    for i in range(40):
        proxy.delay(0.1 if i < 20 else 0.0)
        chunk = f"{i:03d},".encode()
        writer.write(chunk)
        await writer.drain()
        sent += chunk
        await asyncio.sleep(0)  # let the proxy read it as its own chunk: not a wait for an event
    assert await read(reader, len(sent)) == sent
    assert proxy.counters.delays == 20
    await close(writer)


async def test_a_throttle_delivers_a_chunk_in_pieces_and_a_heal_lifts_it(
    proxy: FaultProxy, echo: Echo
) -> None:
    """At 20,000 bytes a second, 4,000 bytes to the echo server and back arrive whole and in
    order, in pieces, and no sooner than the bandwidth allows (a busy machine only makes it
    later: a lower bound holds however loaded the machine is)."""
    proxy.throttle(20_000)
    assert proxy.counters.throttles == 1
    reader, writer = await dial(proxy)
    sent = bytes(range(256)) * 15 + bytes(160)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(sent)
    pieces = []
    async with asyncio.timeout(TIMEOUT):
        while sum(map(len, pieces)) < len(sent):
            pieces.append(await reader.read(len(sent)))
    assert b"".join(pieces) == sent
    assert len(pieces) > 1
    assert loop.time() - started >= 9 * 400 / 20_000  # ten slices, nine waits between them
    proxy.heal()
    writer.write(sent)
    assert await read(reader, len(sent)) == sent
    assert proxy.counters.bytes_forwarded == 4 * len(sent)
    with pytest.raises(ValueError, match="negative"):
        proxy.throttle(-1)
    await close(writer)


async def test_drop_refuses_connections_with_its_seeded_probability(
    proxy: FaultProxy, echo: Echo
) -> None:
    proxy.drop(1.0, random.Random(0))
    reader, writer = await dial(proxy)
    await assert_closed(reader)
    await close(writer)
    assert echo.connections == 0
    proxy.drop(0.5, random.Random(7))
    draws = random.Random(7)
    refused = 0
    for _ in range(12):
        reader, writer = await dial(proxy)
        writer.write(b"?")
        if draws.random() < 0.5:
            refused += 1
            await assert_closed(reader)
        else:
            assert await read(reader, 1) == b"?"
        await close(writer)
    assert 0 < refused < 12
    assert proxy.counters.refused == refused + 1
    proxy.heal()
    reader, writer = await dial(proxy)
    writer.write(b"!")
    assert await read(reader, 1) == b"!"
    await close(writer)


async def test_retarget_moves_new_connections_and_no_target_refuses(echo: Echo) -> None:
    other = Echo(prefix=b">")
    other.server = await asyncio.start_server(other.handle, "127.0.0.1", 0)
    async with other.server, FaultProxy(name="moving") as proxy:
        reader, writer = await dial(proxy)  # no target yet: refused, like a closed port
        await assert_closed(reader)
        await close(writer)
        assert proxy.counters.unreachable == 1
        proxy.retarget(*echo.address)
        reader, writer = await dial(proxy)
        writer.write(b"a")
        assert await read(reader, 1) == b"a"
        proxy.retarget(*other.address)
        moved_reader, moved_writer = await dial(proxy)
        moved_writer.write(b"b")
        assert await read(moved_reader, 2) == b">b"
        writer.write(b"c")  # the open connection stays where it was
        assert await read(reader, 1) == b"c"
        await close(writer)
        await close(moved_writer)


async def test_closing_the_proxy_closes_its_connections_and_leaves_no_task(echo: Echo) -> None:
    async with FaultProxy(echo.address) as proxy:
        reader, writer = await dial(proxy)
        writer.write(b"x")
        assert await read(reader, 1) == b"x"
        proxy.cut()  # even a held connection is closed
        held_reader, held_writer = await dial(proxy)
    await assert_closed(reader)
    await assert_closed(held_reader)
    left = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith(("FaultProxy.", "_Pipe."))
    ]
    assert left == []
    await close(writer)
    await close(held_writer)


# ------------------------------------------------------------------------------ the steps


def test_the_steps_are_drawn_from_the_seed_alone() -> None:
    assert draw_steps(5, 3, 12) == draw_steps(5, 3, 12)
    assert draw_steps(5, 3, 12) != draw_steps(6, 3, 12)


def test_the_weather_caps_a_pair_s_bandwidth_in_some_runs_and_never_without_weather() -> None:
    throttles = [
        step for seed in range(20) for step in draw_steps(seed, 3, 12)
        if isinstance(step, Throttle)
    ]  # fmt: skip
    assert throttles
    assert all(t.robot != t.other and 20_000 <= t.bytes_per_s < 200_000 for t in throttles)
    calm = [draw_steps(seed, 3, 12, weather=False) for seed in range(20)]
    assert not [step for steps in calm for step in steps if isinstance(step, Throttle)]


@pytest.mark.parametrize("seed", range(20))
def test_every_run_cuts_kills_restarts_and_writes_only_on_live_robots(seed: int) -> None:
    steps = draw_steps(seed, 3, 12)
    writes = [step for step in steps if isinstance(step, Write)]
    assert {write.key for write in writes} == {f"chaos/{i:03d}" for i in range(12)} | {LATE_KEY}
    assert len(writes) == 13
    assert sum(isinstance(step, Cut) for step in steps) == 2
    assert sum(isinstance(step, CheckCut) for step in steps) == 1
    assert isinstance(steps[-1], Heal)
    down: set[str] = set()
    for step in steps:
        if isinstance(step, Kill):
            down.add(step.robot)
        elif isinstance(step, Restart):
            down.remove(step.robot)
        elif isinstance(step, Write):
            assert step.robot not in down
        elif isinstance(step, CheckCut):
            assert not down  # every robot answers the check
    assert not down
    first_cut = next(i for i, step in enumerate(steps) if isinstance(step, Cut))
    victim = steps[first_cut]
    assert isinstance(victim, Cut)
    # the robot cut off adds a user, and writes of them first: keyed only after the heal
    assert steps[first_cut + 1] == AddUser(victim.robot, NEW_USER)
    assert steps[first_cut + 2] == Write(victim.robot, "chaos/004", writes[4].value, NEW_USER)
    assert [w.user for w in writes].count(NEW_USER) == 1
    # then a robot the cut does not reach forgets frank, of whom the second write and one in
    # four before the cut were; the robot cut off, which cannot hear of it, writes of him
    forget = steps[first_cut + 3]
    assert isinstance(forget, Forget)
    assert (forget.user, forget.robot != victim.robot) == (FORGOTTEN, True)
    assert steps[first_cut + 4] == Write(victim.robot, LATE_KEY, 4, FORGOTTEN)
    before = [step for step in steps[:first_cut] if isinstance(step, Write)]
    assert [w.user == FORGOTTEN for w in before] == [False, True, False, False]
    after = [step for step in steps[first_cut + 5 :] if isinstance(step, Write)]
    assert {w.user for w in after} == {USER}
    # once every write so far is everywhere, the owner revokes another robot, which writes
    # once more and then takes no part: no write, kill or cut of it
    (revoke,) = [i for i, step in enumerate(steps) if isinstance(step, Revoke)]
    gone = steps[revoke]
    assert isinstance(gone, Revoke)
    assert gone.robot != "r0"
    assert isinstance(steps[revoke - 1], Settle)
    stray = steps[revoke + 1]
    assert isinstance(stray, Stray)
    assert stray.robot == gone.robot
    assert stray.key not in {write.key for write in writes}
    owners = steps[revoke + 2]  # the owner writes at once, under the new epoch
    assert isinstance(owners, Write)
    assert owners.robot == "r0"
    later = steps[revoke + 2 :]
    assert all(getattr(step, "robot", None) != gone.robot for step in later
               if isinstance(step, Write | Kill | Cut | Restart))  # fmt: skip
    assert revoke > next(i for i, step in enumerate(steps) if isinstance(step, Heal))


def test_odd_seeds_of_three_robots_or_more_have_an_admin() -> None:
    assert [admin_of(seed, 3) for seed in range(4)] == [None, "r1", None, "r1"]
    assert admin_of(5, 7) == "r1"
    assert admin_of(5, 2) is None  # as in the simulation: three robots or more


def test_two_robots_revoke_none() -> None:
    """The one left would have no one to converge with."""
    assert not any(isinstance(step, Revoke | Settle | Stray) for step in draw_steps(3, 2, 12))


# ------------------------------------------------------------------------------ real robots


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [0, 1])  # 0: the cut robot is killed; 1: a bystander is
async def test_three_robots_lose_nothing_through_a_cut_kills_and_a_heal(
    tmp_path: Path, seed: int
) -> None:
    report = await run_processes(tmp_path, peers=3, seed=seed, edits=12)
    trace = " | ".join(report.fault_trace)
    assert report.lost_writes == [], trace
    assert report.divergences == 0, trace
    # every write but frank's is everywhere; his (one before the cut, one on the robot cut
    # off after he was forgotten elsewhere) are nowhere, in memory or store
    assert report.acknowledged_writes == report.verified_writes + report.exempt_writes == 13
    assert report.exempt_writes == 2
    assert (report.forgotten, report.forgetting_remnants) == (FORGOTTEN, [])
    assert report.ok
    # the faults really happened: kills, restarts, and a cut that held
    for word in (" cut ", " kill ", " restart ", " heal"):
        assert word in f"{trace} ", trace
    assert report.faults >= 4
    assert report.bytes_forwarded > 0  # the robots talked through the proxies
    # seed 1 (odd): r1 joined as an admin, and makes and grants keys as the owner does
    assert ("r1 is an admin" in trace) == (seed == 1), trace
    victim = next(line.split()[2] for line in report.fault_trace if " cut " in line)
    # written on the cut robot during the cut: absent on the others before the heal...
    assert any(robot == victim for robot, _ in report.isolated_writes), report.isolated_writes
    assert report.leaked_writes == []
    # ... and on every robot after it (verified == acknowledged, with their values), the write
    # of the user it added while cut off included: the owner keyed them once it heard
    assert not set(report.isolated_writes) & set(report.lost_writes)
    assert f"{victim} adds {NEW_USER}" in trace
    # the owner revoked a robot: its later write reached no one, no one links to it, and it
    # holds no key of the new epoch (its credentials read back)
    assert report.revoked in ("r1", "r2")
    assert f" revoke {report.revoked}" in trace
    assert f"{report.revoked}, revoked, writes chaos/stray" in trace
    assert report.revocation_leaks == []
    forgetter = next(line.split()[1] for line in report.fault_trace if "forgets" in line)
    assert forgetter != victim
    assert f"{victim} adds {NEW_USER} | " in trace  # then the forgetting, across the cut


IGNORES_TOMBSTONES = """
# a broken 'hearth run': a robot forgets a user when told to, never when another robot did
import sys
if len(sys.orig_argv) > 2 and sys.orig_argv[2] == "run":
    from hearthsync import forgetting
    forgetting.Forgetting.on_household_change = lambda self: None
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_robots_that_ignore_another_robots_forgetting_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remnants are found in memory and in the stores as the robots left them (opening a
    store here honours the tombstone, and would have hidden them)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(IGNORES_TOMBSTONES)
    monkeypatch.setenv("PYTHONPATH", str(broken))  # the robots' processes only
    monkeypatch.setattr(process, "CONVERGE_TIMEOUT_S", 15.0)  # waited out for the remnants
    report = await run_processes(tmp_path / "run", peers=3, seed=0, edits=12)
    assert not report.ok
    assert report.lost_writes == []  # everything else worked
    found = " | ".join(report.forgetting_remnants)
    forgetter = next(line.split()[1] for line in report.fault_trace if "forgets" in line)
    for robot in {"r0", "r1", "r2"} - {forgetter, report.revoked}:
        # his profile (added at the start) and his preferences (written of before the cut)
        assert f"{robot} holds 2 documents of {FORGOTTEN} (user/{FORGOTTEN}/prefs" in found
        assert f"{robot} has not finished purging {FORGOTTEN}" in found, found
        assert f"{robot}'s store holds 2 documents of {FORGOTTEN}" in found, found
        assert f"{robot}'s store does not record a finished purge of {FORGOTTEN}" in found
        assert f"{robot}'s credentials hold the data keys of {FORGOTTEN}" in found, found
    held = {line.split()[0].partition("'")[0] for line in report.forgetting_remnants}
    assert forgetter not in held  # it forgot him itself


BROKEN_REVOCATION = """
# a broken 'hearth run'
import sys
if len(sys.orig_argv) > 2 and sys.orig_argv[2] == "run":
    from hearthsync.crypto import certificate
    from hearthsync.protocol import session
    {fault}
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("fault", "found"),
    [
        # revocation lists are taken for nothing, the owner's own among them
        ("certificate.TrustStore.accept_revocations = lambda self, revocations, now: False",
         ["holds chaos/stray, written by {gone} after its revocation",
          "is still linked to {gone}, revoked"]),
        # a session does not check its peer again once open (the first review of stop 21):
        # the owner grants the new epoch's keys to the robot it revoked, on its open link
        ("session.Session._peer_refused = lambda self: None",
         ["{gone}, revoked, holds a key of core epoch"]),
    ],
)  # fmt: skip
async def test_robots_that_mishandle_a_revocation_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, found: list[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(BROKEN_REVOCATION.replace("{fault}", fault))
    monkeypatch.setenv("PYTHONPATH", str(broken))  # the robots' processes only
    report = await run_processes(tmp_path / "run", peers=3, seed=0, edits=12)
    assert not report.ok
    leaks = " | ".join(report.revocation_leaks)
    for leak in found:
        assert leak.format(gone=report.revoked) in leaks, leaks


NEVER_STORED = """
# a broken 'hearth run': what arrives from other robots is merged and acknowledged, never stored
import sys
if len(sys.orig_argv) > 2 and sys.orig_argv[2] == "run":
    from hearthsync.store import documents
    flush = documents.DocumentSet._flush
    async def _flush(self, queue):
        queue.remote = []
        return await flush(self, queue)
    async def _maybe_compact(self, *, force=False):
        return 0  # a snapshot would store what the broken flush left out
    documents.DocumentSet._flush = _flush
    documents.DocumentSet._maybe_compact = _maybe_compact
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_robots_that_acknowledge_what_they_never_store_fail_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the verdict read the robots' memory only, so such a build passed."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(NEVER_STORED)
    monkeypatch.setenv("PYTHONPATH", str(broken))  # the robots' processes only
    report = await run_processes(tmp_path / "run", peers=3, seed=0, edits=12)
    assert not report.ok
    assert report.lost_writes
    assert all("store)" in robot for robot, _ in report.lost_writes), report.lost_writes


BROKEN_R1 = """
# a broken 'hearth run' of r1, at its first preference write
import os, sys
if len(sys.orig_argv) > 3 and sys.orig_argv[2] == "run" and sys.orig_argv[3].endswith("/r1"):
    from hearthsync import runner
    command = runner._command
    async def _command(peer, service, words, run_file):
        if words[0] == "pref":
            {fault}
        return await command(peer, service, words, run_file)
    runner._command = _command
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("os._exit(3)", "r1 exited (3)"),  # it dies
        ("return 'ERROR no'", "r1 refused chaos/"),  # it refuses: nothing acked, nothing lost
    ],
)
def test_a_robot_that_dies_or_refuses_fails_its_schedule_which_keeps_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, problem: str
) -> None:
    """Found in review: a death ended the whole run with an error naming a log already
    deleted, and a build that refused every write passed (it acknowledged none)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(BROKEN_R1.replace("{fault}", fault))
    monkeypatch.setenv("PYTHONPATH", str(broken))  # the robots' processes only
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's folders go
    console = Console(file=io.StringIO(), width=200)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    report = run_in_processes(console, schedules=1, seed=0, peers=3, edits=12)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not report.ok
    assert report.errors == 1
    assert problem in report.failures[0].problems[0]
    assert "--processes --seed 0" in report.failures[0].replay
    kept = list(tmp_path.glob("hearth-chaos-processes-*"))
    assert len(kept) == 1
    assert (kept[0] / "r1" / "stderr.log").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_long_silent_cut_is_noticed_by_the_heartbeats(tmp_path: Path) -> None:
    """Past the session's 12 s dead-peer timeout (and the websocket's 10 s close timeout, which
    the link waits out before it lets go), no robot keeps a link across the cut."""
    report = await run_processes(tmp_path, peers=3, seed=2, edits=6, cut_s=30.0)
    assert report.links_across_cut == 0, report.fault_trace
    assert report.ok, report


STARTED = """
import os, sys
if len(sys.orig_argv) > 2 and sys.orig_argv[2] == "run":  # a robot: say so, with its pid
    with open({fifo!r}, "w") as started:
        started.write(f"{{os.getpid()}}\\n")
"""


def _stop_a_process_run(tmp_path: Path, signals: list[signal.Signals]) -> str:
    """Start ``hearth chaos --processes``, and once a robot runs send it ``signals``, the
    first alone and the others one at a time until it exits (each a further Ctrl-C or SIGTERM
    while it stops); then check that it left no robot running and no folder.  Returns what it
    printed, once it exited with status 130."""
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(STARTED.format(fifo=str(fifo)))
    runs = tmp_path / "runs"
    runs.mkdir()
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # before any robot opens it to write
    env = os.environ | {"PYTHONPATH": str(inject), "TMPDIR": str(runs), "COLUMNS": "200"}
    command = [hearth_script(), "chaos", "--processes", "--peers", "3"]
    pids: list[int] = []
    try:
        with subprocess.Popen(
            [*command, "--schedules", "3"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as runner:  # fmt: skip
            try:
                ready, _, _ = select.select([reader], [], [], 60)
                assert ready, "no robot started within 60 s"
                pids += [int(line) for line in os.read(reader, 4096).split()]
                assert pids, "a robot opened the pipe and said nothing"
                first, *further = signals
                runner.send_signal(first)
                for again in itertools.cycle(further) if further else ():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        runner.wait(timeout=0.02)
                    if runner.returncode is not None:
                        break
                    runner.send_signal(again)
                out = runner.communicate(timeout=60)[0].decode(errors="replace")
            finally:
                runner.kill()
        with contextlib.suppress(BlockingIOError):
            pids += [int(line) for line in os.read(reader, 4096).split()]  # started meanwhile
    finally:
        os.close(reader)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone already: what is wanted
            fd = os.pidfd_open(pid)
            try:
                ended, _, _ = select.select([fd], [], [], 30)
                assert ended, f"robot {pid} still runs 30 s after its run was stopped"
            finally:
                os.close(fd)
    assert list(runs.iterdir()) == []
    assert runner.returncode == 130, out
    assert "Traceback" not in out, out
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on pidfds (Linux)")
def test_sigterm_stops_a_process_run_and_leaves_no_robot_and_no_folder(tmp_path: Path) -> None:
    """Found in review: SIGTERM ended the run but left a robot listening (its parent pid 1)
    and the run's folder behind."""
    out = _stop_a_process_run(tmp_path, [signal.SIGTERM])
    assert "interrupted" in out


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on pidfds (Linux)")
def test_ctrl_c_again_and_again_while_a_process_run_stops_still_stops_it_cleanly(
    tmp_path: Path,
) -> None:
    """A person presses Ctrl-C again while the run stops (and a supervisor sends SIGTERM):
    the run stops its robots, removes its folder and prints its report all the same; it took
    the second signal in the middle of that, with a traceback and robots left running."""
    out = _stop_a_process_run(tmp_path, [signal.SIGINT, signal.SIGINT, signal.SIGTERM])
    assert "interrupted" in out
