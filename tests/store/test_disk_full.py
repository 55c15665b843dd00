"""A full disk, for real: a small tmpfs mounted for the test (root only; skipped elsewhere).

Writes that cannot be committed fail with a `StoreError` naming the file and SQLite's reason;
nothing acknowledged is lost; the peer keeps serving reads and writes again once there is room;
a vector index that cannot be saved (derived data) stops neither opening nor closing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearthsync.errors import StoreError, StoreInUseError
from hearthsync.peer import HISTORY, Peer
from hearthsync.store.lock import FolderLock

ROOM_BYTES = 512 * 1024  #: what is left free once the disk is filled
MAX_WRITES = 20_000  #: a disk that never fills fails the test instead of hanging it


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all the free space of ``disk`` but ``leave`` bytes; the filler file to remove."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


async def test_a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged(
    small_disk: Path,
) -> None:
    reports: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: reports.append(context))
    folder = small_disk / "robot"
    acked: list[str] = []
    async with Peer.open(folder, device="kitchen") as peer:
        await peer.add_user("alice", name="Alice")
        filler = fill(small_disk, ROOM_BYTES)
        refused: StoreError | None = None
        for n in range(MAX_WRITES):
            text = f"alice put mug {n} on the second shelf"
            try:
                event = await peer.record_event("alice", "OBSERVATION", "kitchen", text=text)
            except StoreError as exc:
                refused = exc
                break
            acked.append(event.id)
        assert refused is not None, f"{MAX_WRITES} writes fitted in {ROOM_BYTES} bytes"
        assert "database or disk is full" in str(refused)
        assert str(folder / "hearth.db") in str(refused)
        assert len(acked) > 10  # the disk filled while writing, not at once
        # reads go on from memory
        held = {event.id for event in peer.events("alice")}
        assert set(acked) <= held
        assert await peer.recall("alice", "mug 3 on the second shelf", k=3)
        with pytest.raises(StoreError, match="database or disk is full"):  # still full
            await peer.set_preference("alice", "beverage/tea", "green")
        # room again: the next write lands, with the one that failed (it was kept, invariant 2)
        filler.unlink()
        await peer.set_preference("alice", "beverage/tea", "green")
    async with Peer.open(folder) as reopened:
        held = {event.id for event in reopened.events("alice")}
        assert set(acked) < held  # and the refused event, which its failed batch carried
        assert reopened.preference("alice", "beverage/tea").value == "green"  # type: ignore[union-attr]
        # embedded too, with the batch that landed it: recall finds every event
        assert (await reopened.status()).vectors == {"alice.history": len(held)}
    del peer, reopened
    gc.collect()  # a failed future nobody awaited is reported when it is collected
    await asyncio.sleep(0)  # the reports are made from the loop: let them run
    assert [r for r in reports if "never retrieved" in str(r.get("message"))] == []


async def test_a_peer_opens_a_new_folder_on_a_disk_too_full_for_its_lock_files_pid(
    small_disk: Path,
) -> None:
    """The pid in ``hearth.lock`` only names the holder: the lock holds without it."""
    folder = small_disk / "robot"
    folder.mkdir()
    fill(small_disk, 0)
    lock = FolderLock.acquire(folder)
    try:
        assert lock.held
        with pytest.raises(StoreInUseError, match=r"another process, or this one"):
            FolderLock.acquire(folder)
    finally:
        lock.release()


async def test_an_index_that_cannot_be_saved_stops_neither_open_nor_close(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = small_disk / "robot"
    async with Peer.open(folder, device="kitchen") as peer:
        await peer.add_user("alice", name="Alice")
        for n in range(400):  # an index file of about 600 KiB
            await peer.record_event("alice", "OBSERVATION", "kitchen", text=f"green mug {n}")
    vectors = folder / "vectors"
    for path in vectors.iterdir():  # lost: the next open rebuilds it, and saves it
        path.unlink()
    filler = fill(small_disk, 64 * 1024)  # room for SQLite's WAL, not for the index
    with caplog.at_level(logging.WARNING, logger="hearthsync.store.vectors"):
        async with Peer.open(folder) as peer:
            assert peer._vectors.last_sync("alice", HISTORY).action == "rebuilt"  # type: ignore[union-attr]
            found = await peer.recall("alice", "green mug 7", k=1)
            assert found[0].event.text == "green mug 7"
    assert "could not save vector index alice.history" in caplog.text
    assert sorted(p.name for p in vectors.iterdir()) == []  # nothing half-written left behind
    filler.unlink()
    async with Peer.open(folder) as peer:  # rebuilt once more, and saved this time
        assert peer._vectors.last_sync("alice", HISTORY).action == "rebuilt"  # type: ignore[union-attr]
    async with Peer.open(folder) as peer:
        assert peer._vectors.last_sync("alice", HISTORY).action == "loaded"  # type: ignore[union-attr]
