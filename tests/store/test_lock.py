"""One folder, one peer (`hearthsync.store.lock`): a second opener is refused and changes
nothing; the holder's death, crash or failed start frees the folder; a forked child never
keeps it."""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import signal
import sqlite3
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from hearthsync.errors import StoreError, StoreInUseError, ValidationError
from hearthsync.peer import Peer
from hearthsync.store.embedding import HashingEmbedder
from hearthsync.store.lock import LOCK_FILE, FolderLock

WRITER = Path(__file__).parents[1] / "crash_writer.py"
LINE_TIMEOUT_S = 30.0


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


async def test_a_second_peer_on_an_open_folder_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "robot"
    async with Peer.open(folder, device="kitchen") as first:
        await first.add_user("alice", name="Alice")
        await first.set_preference("alice", "beverage/coffee", "oat latte")
        await first.flush()
        before = listing(folder)
        with pytest.raises(StoreInUseError, match="in use by another peer") as refused:
            await Peer.start(folder, device="kitchen")
        assert refused.value.pid == os.getpid()
        assert str(folder) in str(refused.value)
        assert listing(folder) == before  # no identity, database, index or run file touched
        # the holder goes on serving as if nothing happened
        await first.set_preference("alice", "beverage/coffee", "cortado")
        assert first.preference("alice", "beverage/coffee").value == "cortado"  # type: ignore[union-attr]
    async with Peer.open(folder) as reopened:  # closing freed it
        assert reopened.preference("alice", "beverage/coffee").value == "cortado"  # type: ignore[union-attr]


async def test_a_crashed_peer_frees_its_folder_as_a_killed_process_does(tmp_path: Path) -> None:
    folder = tmp_path / "robot"
    peer = await Peer.start(folder, device="kitchen")
    await peer.add_user("alice", name="Alice")
    await peer.crash()
    async with Peer.open(folder) as restarted:
        assert restarted.users() == ["alice"]


async def test_a_peer_that_fails_to_start_frees_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "robot"
    async with Peer.open(folder, device="kitchen"):
        pass
    with pytest.raises(ValidationError, match="embedded with"):
        await Peer.start(folder, embedder=HashingEmbedder(dim=64))
    async with Peer.open(folder) as peer:
        assert peer.device == "kitchen"


async def test_another_process_is_named_and_its_sigkill_frees_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "robot"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, str(WRITER), str(folder), "1", "FULL",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert writer.stdout is not None
        async with asyncio.timeout(LINE_TIMEOUT_S):
            while (await writer.stdout.readline()).strip() != b"READY":
                pass
            acked = await writer.stdout.readline()  # it writes on while this is refused
        assert acked.startswith(b"ACK ")
        with pytest.raises(StoreInUseError) as refused:
            await Peer.start(folder)
        assert refused.value.pid == writer.pid
        assert f"process {writer.pid}" in str(refused.value)
    finally:
        if writer.returncode is None:
            writer.send_signal(signal.SIGKILL)
        async with asyncio.timeout(LINE_TIMEOUT_S):
            await writer.wait()
    assert writer.returncode == -signal.SIGKILL
    async with Peer.open(folder) as peer:  # the kernel dropped the dead writer's lock
        assert peer.users() == ["alice", "bob"]


def test_a_folder_that_cannot_be_locked_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).mkdir()  # not a file: open(2) fails, as on a read-only disk
    with pytest.raises(StoreError, match=f"cannot lock {tmp_path}"):
        FolderLock.acquire(tmp_path)


async def test_no_other_connection_reads_a_running_peers_file(tmp_path: Path) -> None:
    """SQLite's exclusive locking mode: the peer's counters of its file stay true."""
    folder = tmp_path / "robot"
    async with Peer.open(folder, device="kitchen") as peer:
        await peer.add_user("alice", name="Alice")
        assert not (folder / "hearth.db-shm").exists()  # the WAL index is in memory
        other = sqlite3.connect(folder / "hearth.db", timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("SELECT count(*) FROM docs").fetchone()
        finally:
            other.close()
    other = sqlite3.connect(folder / "hearth.db", timeout=0)  # closed: free again
    try:
        assert other.execute("SELECT count(*) FROM docs").fetchone()[0] >= 1
    finally:
        other.close()


def test_a_lock_file_naming_a_dead_process_names_no_one(tmp_path: Path) -> None:
    """Between a holder's lock and its pid, the file still names the holder before it."""
    gone = multiprocessing.get_context("fork").Process(target=os.getpid)
    gone.start()
    gone.join(LINE_TIMEOUT_S)
    (tmp_path / LOCK_FILE).write_text(f"{gone.pid}\n")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that has not written its pid yet
        with pytest.raises(StoreInUseError, match="another process, or this one") as refused:
            FolderLock.acquire(tmp_path)
        assert refused.value.pid is None
    finally:
        os.close(fd)


def _child(conn: Connection) -> None:
    conn.send("up")  # the fork handlers ran before this
    conn.recv()  # alive, holding whatever it kept, until told to go


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path: Path) -> None:
    lock = FolderLock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=_child, args=(child_end,))
    child.start()
    try:
        assert parent_end.poll(LINE_TIMEOUT_S), "the child did not start"
        assert parent_end.recv() == "up"
        with pytest.raises(StoreInUseError):  # the child's copy did not free it either
            FolderLock.acquire(tmp_path)
        lock.release()
        again = FolderLock.acquire(tmp_path)  # while the child still lives
        assert again.held
        again.release()
    finally:
        parent_end.send("exit")
        child.join(LINE_TIMEOUT_S)
    assert child.exitcode == 0
