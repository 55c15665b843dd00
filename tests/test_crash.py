"""Nothing acknowledged is lost across SIGKILL (DESIGN principle 2, Durability).

A writer subprocess (``tests/crash_writer.py``) hammers a peer with concurrent writes and prints
a line for each write whose awaitable returned.  The test kills it with SIGKILL at a random
moment (during start-up, after a handful of acknowledgements, or after hundreds), reopens the
folder in this process and checks that every acknowledged write is there, then lets a new writer
resume on the same folder and kills it again.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hearthsync.peer import HISTORY, Peer

WRITER = Path(__file__).with_name("crash_writer.py")
CYCLES = 16  # per parametrisation: 32 kill/reopen cycles in all
LINE_TIMEOUT_S = 30.0  # a healthy writer prints a line every few milliseconds


@dataclass
class Acked:
    """Everything the writers acknowledged on one folder, across all cycles."""

    prefs: dict[tuple[str, str], int] = field(default_factory=dict)  # highest acked value
    places: dict[str, int] = field(default_factory=dict)  # highest acked shelf number
    events: dict[str, set[str]] = field(default_factory=dict)  # user -> acked event ids
    last_event: dict[str, str] = field(default_factory=dict)  # user -> an event acked last
    count: int = 0

    def record(self, line: str) -> None:
        kind, *rest = line.split()
        if kind == "pref":
            user, key, value = rest
            slot = (user, key)
            self.prefs[slot] = max(self.prefs.get(slot, 0), int(value))
        elif kind == "event":
            user, event_id = rest
            self.events.setdefault(user, set()).add(event_id)
            self.last_event[user] = event_id
        elif kind == "place":
            obj, n = rest
            self.places[obj] = max(self.places.get(obj, 0), int(n))
        else:
            raise AssertionError(f"writer acknowledged something unknown: {line!r}")
        self.count += 1


def kill_point(rng: random.Random) -> tuple[str, int]:
    """Where to kill: right after ``BOOT`` (inside Peer.start) or after ``n`` acks."""
    roll = rng.random()
    if roll < 0.15:
        return "BOOT", 0
    if roll < 0.45:
        return "READY", rng.randint(0, 5)
    if roll < 0.75:
        return "READY", rng.randint(6, 60)
    return "READY", rng.randint(100, 600)


async def next_line(proc: asyncio.subprocess.Process, stderr: Path) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT_S)
    except TimeoutError:
        raise AssertionError(f"writer printed nothing for {LINE_TIMEOUT_S} s") from None
    if not raw:
        await proc.wait()
        raise AssertionError(
            f"writer exited with {proc.returncode} before it was killed:\n{stderr.read_text()}"
        )
    return raw.decode().rstrip("\n")


async def run_and_kill(
    folder: Path, seed: int, synchronous: str, stage: str, acks: int, acked: Acked
) -> None:
    """Run one writer, kill it at (stage, acks), record every ack it printed before dying."""
    stderr = folder.with_suffix(".stderr")
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WRITER), str(folder), str(seed), synchronous,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        assert await next_line(proc, stderr) == "BOOT"
        if stage == "READY":
            assert await next_line(proc, stderr) == "READY"
            seen = 0
            while seen < acks:
                line = await next_line(proc, stderr)
                assert line.startswith("ACK "), line
                acked.record(line.removeprefix("ACK "))
                seen += 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), LINE_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, stderr.read_text()
    rest = await asyncio.wait_for(proc.stdout.read(), LINE_TIMEOUT_S)
    for line in rest.decode().splitlines():
        if line.startswith("ACK "):  # printed before death: acknowledged all the same
            acked.record(line.removeprefix("ACK "))


async def check_reopened(folder: Path, acked: Acked) -> None:
    """Every acknowledged write survived, and recall answers over every surviving event."""
    async with Peer.open(folder) as peer:
        assert peer.corrupt == {}
        assert peer.users() == ["alice", "bob"]
        for (user, key), value in acked.prefs.items():
            found = peer.preference(user, key)
            assert found is not None, f"acked preference {user} {key}={value} is gone"
            assert found.value >= value, f"{user} {key}: acked {value}, store has {found.value}"
        for obj, n in acked.places.items():
            found_place = peer.placement(obj)
            assert found_place is not None, f"acked placement of {obj} is gone"
            assert found_place.region is not None
            stored = int(found_place.region.removeprefix("shelf-"))
            assert stored >= n, f"{obj}: acked shelf-{n}, store has shelf-{stored}"
        for user in peer.users():
            events = peer.events(user)
            ids = [event.id for event in events]
            assert len(ids) == len(set(ids)), f"{user} has duplicated events"
            missing = acked.events.get(user, set()) - set(ids)
            assert not missing, f"{len(missing)} acked events of {user} are gone"
            # The index is derived: after a kill it must catch up with (or be rebuilt from)
            # every committed embedding, one per event, and answer a recall.
            index = await peer._vectors.open_index(user, HISTORY)
            assert index.count + index.pending == len(events)  # in the graph, or staged for it
            if user in acked.last_event:
                wanted = next(e for e in events if e.id == acked.last_event[user])
                hits = await peer.recall(user, wanted.text, k=5)
                assert wanted.id in [hit.event.id for hit in hits]
                assert hits[0].score > 0.99


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("seed", "synchronous"), [(1, "FULL"), (2, "NORMAL")])
async def test_nothing_acknowledged_is_lost_across_sigkill(
    tmp_path: Path, seed: int, synchronous: str
) -> None:
    rng = random.Random(seed)
    folder = tmp_path / "robot"
    acked = Acked()
    for cycle in range(CYCLES):
        stage, acks = kill_point(rng)
        if cycle == 0:  # the first run must get as far as registering the users
            stage = "READY"
        await run_and_kill(folder, seed * 1000 + cycle, synchronous, stage, acks, acked)
        await check_reopened(folder, acked)
    assert acked.count > 200, "the kills came too early to prove anything"
    assert acked.events
    assert acked.prefs
    assert acked.places


# Kill the process right after it creates its first file in the folder (os.open with O_CREAT),
# before a byte is written: where a SIGKILL lands when it hits a file being created.
KILL_AFTER_FIRST_CREATE = """
import asyncio, os, signal, sys
from hearthsync.peer import Peer
folder = os.path.abspath(sys.argv[1])
real_open = os.open
def open_then_die(path, flags, *args, **kwargs):
    fd = real_open(path, flags, *args, **kwargs)
    if flags & os.O_CREAT and os.path.abspath(path).startswith(folder + os.sep):
        os.kill(os.getpid(), signal.SIGKILL)
    return fd
os.open = open_then_die
async def main():
    async with Peer.open(folder, device="crash") as peer:
        await peer.add_user("alice", name="Alice")
asyncio.run(main())
"""


async def test_kill_while_creating_the_first_file_leaves_a_folder_that_opens(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "robot"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILL_AFTER_FIRST_CREATE, str(folder)
    )
    await asyncio.wait_for(proc.wait(), LINE_TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, "the injected kill never happened"
    async with Peer.open(folder, device="crash") as peer:
        await peer.add_user("alice", name="Alice")
        assert peer.corrupt == {}
        assert peer.users() == ["alice"]
