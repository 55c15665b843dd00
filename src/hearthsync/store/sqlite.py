"""The SQLite file behind a peer: per document a snapshot plus an update log (DESIGN: storage).

Schema (format version 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)
    docs(doc_id TEXT PRIMARY KEY, scope, subject, lineage, client_id, snapshot BLOB,
         snapshot_codec INTEGER)
    updates(seq INTEGER PRIMARY KEY, doc_id TEXT, data BLOB, codec INTEGER)  -- the update log
    vectors(rowid INTEGER PRIMARY KEY AUTOINCREMENT, index_name, event_id, ts, vec BLOB,
            record TEXT)                       -- the event as stored, for recall's answer

Version 2 added the codec columns: updates and snapshots are stored compressed
(`hearthsync.compression`) where that makes them smaller, compressed on the connection's thread
so the event loop never waits for it; and the ``record`` of each embedding, so that recall
answers from one indexed read, never by searching a month of events.  A version 1 file is
upgraded in place when opened (its embeddings keep no record; recall then finds them in their
document).

Rules this module lives by:

* One writer.  Every write goes through `commit` or `compact`, called by one coroutine (the
  `DocumentSet` flusher), so transactions never interleave.
* A batch is one transaction: documents created, deltas appended, embeddings and meta written
  together commit or vanish together.  The caller acknowledges its writes only after `commit`
  returns (DESIGN invariant 1).
* WAL mode with ``synchronous=FULL`` by default: a committed batch survives a power cut, not
  only a crash.  ``NORMAL`` trades the last batches on power loss for speed; ``OFF`` (the
  chaos simulation, which kills processes but not the power) leaves syncing to the OS.
* ``locking_mode=EXCLUSIVE``: the peer is the file's only user (`hearthsync.store.lock`), and
  keeps counters of it in memory that another writer would break; so no other connection may
  read or write it while the peer runs, and the WAL index lives in memory, not a ``-shm`` file.
* ``auto_vacuum=INCREMENTAL``: compaction returns freed pages to the file system, so the file
  shrinks (a common complaint about CRDT stores is that they only grow).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from hearthsync.compression import CODEC_ZSTD, MAX_STORED_BYTES, compress, decompress
from hearthsync.errors import ClosedError, StoreError
from hearthsync.store.lock import FolderLock

FORMAT_VERSION = "2"
#: what upgrades a file of the format before it to this one
_UPGRADE_FROM_1 = """
ALTER TABLE docs ADD COLUMN snapshot_codec INTEGER NOT NULL DEFAULT 0;
ALTER TABLE updates ADD COLUMN codec INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vectors ADD COLUMN record TEXT;
UPDATE meta SET value = '2' WHERE key = 'format';
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    doc_id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    lineage TEXT NOT NULL,
    client_id INTEGER NOT NULL,
    snapshot BLOB,
    snapshot_codec INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL,
    data BLOB NOT NULL,
    codec INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS updates_by_doc ON updates (doc_id, seq);
CREATE TABLE IF NOT EXISTS vectors (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    index_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    vec BLOB NOT NULL,
    record TEXT
);
CREATE INDEX IF NOT EXISTS vectors_by_index ON vectors (index_name, rowid);
"""


@dataclass(frozen=True, slots=True)
class DocRow:
    doc_id: str
    scope: str
    subject: str
    lineage: str
    client_id: int


@dataclass(frozen=True, slots=True)
class StoredDoc:
    """A document as read back: its row, its snapshot and its log in commit order, each blob
    as stored (``(codec, bytes)``); `snapshot` and `updates` decode them, raising
    `DecryptionError` for a blob that does not decode (a corrupt document)."""

    row: DocRow
    stored_snapshot: tuple[int, bytes] | None
    stored_updates: list[tuple[int, bytes]]
    #: what is wrong with its rows, if they are damaged (a value of the wrong type): the
    #: document is then corrupt, and the others load (`DocumentSet._load_one`)
    damage: str | None = None

    def snapshot(self) -> bytes | None:
        if self.stored_snapshot is None:
            return None
        return decompress(*self.stored_snapshot, limit=MAX_STORED_BYTES)

    def updates(self) -> list[bytes]:
        return [decompress(c, data, limit=MAX_STORED_BYTES) for c, data in self.stored_updates]


@dataclass(frozen=True, slots=True)
class VectorRow:
    rowid: int
    index_name: str
    event_id: str
    ts: int
    vec: bytes
    record: str | None = None  #: the event as its document stores it


@dataclass(slots=True)
class Batch:
    """Everything one transaction writes."""

    #: documents whose stored rows are deleted first: corrupt ones a peer's update replaces
    replaced: list[str] = field(default_factory=list)
    docs: list[DocRow] = field(default_factory=list)
    updates: list[tuple[str, bytes]] = field(default_factory=list)
    vectors: list[VectorRow] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    client_ids: list[tuple[str, int]] = field(default_factory=list)  #: renewed (invariant 2)
    #: Zstandard frames of some of ``updates`` (by ``id`` of their bytes), kept as they came
    packed: dict[int, bytes] = field(default_factory=dict)
    #: set once its transaction committed: `SqliteStore.commit` cancelled while the
    #: connection's thread ran it says by this whether it landed all the same
    stored: bool = field(default=False, compare=False)

    def __bool__(self) -> bool:
        return bool(
            self.replaced or self.docs or self.updates or self.vectors or self.meta
            or self.client_ids
        )  # fmt: skip


class SqliteStore:
    """Async access to one peer's SQLite file.  Use `open`, then `close`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._next_seq = 1
        self._next_vector = 1
        self._closed = False

    @classmethod
    async def open(
        cls, path: Path, *, synchronous: Literal["FULL", "NORMAL", "OFF"] = "FULL"
    ) -> SqliteStore:
        try:
            # readable by this user only, as its WAL then is (SQLite gives it the file's mode)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            os.chmod(path, 0o600)
            conn = await aiosqlite.connect(path, isolation_level=None)
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        store = cls(conn, path)
        try:
            await store._prepare(synchronous)
        except (sqlite3.Error, StoreError) as exc:
            await conn.close()
            cause = exc.__cause__ if isinstance(exc, StoreError) else exc
            if not isinstance(cause, sqlite3.Error):  # our own finding (a format version)
                raise
            hint = _no_room(path)
            raise StoreError(f"{path} is not a usable hearthsync store: {cause}{hint}") from cause
        return store

    async def _prepare(self, synchronous: str) -> None:
        conn = self._conn
        await self._run("PRAGMA locking_mode=EXCLUSIVE")  # before WAL: no -shm file then
        await self._run("PRAGMA auto_vacuum=INCREMENTAL")  # effective only on a new file
        await self._run("PRAGMA journal_mode=WAL")
        await self._run(f"PRAGMA synchronous={synchronous}")
        await self._run("PRAGMA temp_store=MEMORY")
        # deleted rows are overwritten with zeros, not only unlinked: a forgotten user's data
        # must not linger in free pages (DESIGN: forgetting); it costs little, as deletes are rare
        await self._run("PRAGMA secure_delete=ON")
        version = await self._format()
        if version == "1":  # before the tables below exist in their new form
            await (await conn.executescript(f"BEGIN;{_UPGRADE_FROM_1}COMMIT;")).close()
            version = FORMAT_VERSION
        await conn.executescript(_SCHEMA)
        if version is None:
            await conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT_VERSION,))
        elif version != FORMAT_VERSION:
            raise StoreError(f"{self.path} has store format {version}, this is {FORMAT_VERSION}")
        self._next_seq = await self._scalar("SELECT coalesce(max(seq), 0) + 1 FROM updates")
        # AUTOINCREMENT: a rowid is never reused, even after deletions, so a vector index stamped
        # "up to rowid N" can never mistake new rows for old ones
        self._next_vector = 1 + max(
            await self._scalar("SELECT coalesce(max(rowid), 0) FROM vectors"),
            await self._scalar(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'vectors'"
            ),
        )

    async def close(self) -> None:
        self._closed = True
        with self._failing("close"):
            await self._conn.close()

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """Every SQLite error of the block as a `StoreError` naming the file and ``what``; any
        use of a closed store (a crash while a background task, a purge say, still ran) as
        `ClosedError`, which such tasks expect, not aiosqlite's ``ValueError``."""
        if self._closed and what != "close":
            raise ClosedError(f"{what} on {self.path}: the store is closed")
        try:
            yield
        except ValueError:
            if self._closed:
                raise ClosedError(f"{what} on {self.path}: the store is closed") from None
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"{what} on {self.path} failed: {exc}{_no_room(self.path)}") from exc

    async def _rows(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """Every row of ``sql``, read in one hop to the connection's thread.

        Never an ``execute`` then a ``fetch`` in two hops: another coroutine's statement could
        run between them while this one is still active on the connection, and a WAL
        checkpoint then fails with "database table is locked" (found when recall began to run
        during writes: the compaction after a batch could not give its pages back)."""
        with self._failing(sql.split()[0].lower()):
            return list(await self._conn.execute_fetchall(sql, args))

    async def _scalar(self, sql: str, args: Sequence[object] = ()) -> int:
        rows = await self._rows(sql, args)
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    # ------------------------------------------------------------------------ reading

    async def _format(self) -> str | None:
        """The file's format version, or None for a new file (no meta table yet)."""
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        if not await self._scalar(sql):
            return None
        return await self.get_meta("format")

    async def get_meta(self, key: str) -> str | None:
        rows = await self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def meta_starting(self, prefix: str) -> dict[str, str]:
        """Every ``meta`` row whose key starts with ``prefix``."""
        rows = await self._rows(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(key): str(value) for key, value in rows}

    async def load(self) -> list[StoredDoc]:
        """Every document with its snapshot and log, the log in commit order."""
        logs: dict[str, list[tuple[int, bytes]]] = {}
        damaged: dict[str, str] = {}  # a row SQLite's loose typing let through, by document
        sql = "SELECT doc_id, codec, data FROM updates ORDER BY seq"
        for doc_id, codec, data in await self._rows(sql):
            if type(codec) is int and type(data) is bytes:
                logs.setdefault(doc_id, []).append((codec, data))
            else:
                damaged.setdefault(str(doc_id), "an update log row of the wrong type")
        docs = []
        sql = (
            "SELECT doc_id, scope, subject, lineage, client_id, snapshot_codec, snapshot FROM docs"
        )
        for doc_id, scope, subject, lineage, client_id, codec, snapshot in await self._rows(sql):
            texts = (doc_id, scope, subject, lineage)
            if not all(type(text) is str for text in texts) or type(client_id) is not int:
                damage: str | None = "a document row of the wrong type"
                client_id = 0
            elif snapshot is not None and not (type(codec) is int and type(snapshot) is bytes):
                damage = "a snapshot of the wrong type"
            else:
                damage = damaged.get(doc_id)
            row = DocRow(str(doc_id), str(scope), str(subject), str(lineage), client_id)
            blob = (codec, snapshot) if snapshot is not None and damage is None else None
            docs.append(StoredDoc(row, blob, logs.get(str(doc_id), []), damage))
        return docs

    async def vector_stats(self, index_name: str) -> tuple[int, int]:
        sql = "SELECT count(*), coalesce(max(rowid), 0) FROM vectors WHERE index_name = ?"
        (row,) = await self._rows(sql, (index_name,))
        return int(row[0]), int(row[1])

    async def vector_rows(
        self, index_name: str, after_rowid: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        sql = (
            "SELECT rowid, ts, vec FROM vectors WHERE index_name = ? AND rowid > ? "
            "ORDER BY rowid LIMIT ?"
        )
        rows = await self._rows(sql, (index_name, after_rowid, limit))
        return [(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    async def recalled(self, rowids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """``rowid -> (event id, record)`` of these embeddings (one indexed read)."""
        marks = ",".join("?" * len(rowids))
        sql = f"SELECT rowid, event_id, record FROM vectors WHERE rowid IN ({marks})"  # noqa: S608
        rows = await self._rows(sql, list(rowids))
        return {int(r[0]): (str(r[1]), None if r[2] is None else str(r[2])) for r in rows}

    async def embedded(self, index_name: str) -> set[str]:
        """The ids of the events of ``index_name`` that have an embedding."""
        sql = "SELECT event_id FROM vectors WHERE index_name = ?"
        rows = await self._rows(sql, (index_name,))
        return {str(r[0]) for r in rows}

    async def sizes(self) -> dict[str, tuple[int, int, int]]:
        """Per document: (snapshot bytes, log entries, log bytes)."""
        sql = (
            "SELECT d.doc_id, coalesce(length(d.snapshot), 0), count(u.seq), "
            "coalesce(sum(length(u.data)), 0) FROM docs d LEFT JOIN updates u "
            "ON u.doc_id = d.doc_id GROUP BY d.doc_id"
        )
        rows = await self._rows(sql)
        return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}

    # ------------------------------------------------------------------------ writing

    def vector_rowids(self, count: int) -> range:
        """Reserve ``count`` rowids for embeddings about to be committed."""
        start = self._next_vector
        self._next_vector += count
        return range(start, start + count)

    async def commit(self, batch: Batch) -> None:
        """Write ``batch`` in one transaction; when this returns, it is durable."""
        if not batch:
            return
        first_seq = self._next_seq
        updates = [(first_seq + i, doc_id, data) for i, (doc_id, data) in enumerate(batch.updates)]
        # reserved before the await: another transaction meanwhile (a meta-only write) must
        # not take these numbers, nor put the counter back (a failed batch leaves a gap only)
        self._next_seq = first_seq + len(updates)
        replaced = [(doc_id,) for doc_id in batch.replaced]

        def landed() -> None:
            batch.stored = True

        await self._transaction(
            ("DELETE FROM updates WHERE doc_id = ?", replaced),
            ("DELETE FROM docs WHERE doc_id = ?", replaced),
            ("INSERT INTO docs VALUES (?, ?, ?, ?, ?, NULL, 0)",
             [_doc_tuple(d) for d in batch.docs]),
            ("INSERT INTO updates (seq, doc_id, codec, data) VALUES (?, ?, ?, ?)",
             _Compressed(updates, blob=2, packed=batch.packed)),
            ("INSERT INTO vectors VALUES (?, ?, ?, ?, ?, ?)",
             [_vec_tuple(v) for v in batch.vectors]),
            ("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(batch.meta.items())),
            ("UPDATE docs SET client_id = ? WHERE doc_id = ?",
             [(client_id, doc_id) for doc_id, client_id in batch.client_ids]),
            on_commit=landed,
        )  # fmt: skip

    async def commit_meta(self, meta: dict[str, str]) -> None:
        """Write ``meta`` alone, in its own transaction (it may run while a batch commits)."""
        await self._transaction(("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items())))

    async def compact(self, doc_id: str, snapshot: bytes) -> None:
        """Replace ``doc_id``'s snapshot and log by ``snapshot`` (its whole durable state)."""
        await self._transaction(
            ("UPDATE docs SET snapshot = ?, snapshot_codec = ? WHERE doc_id = ?",
             _Compressed([(snapshot, doc_id)], blob=0)),
            ("DELETE FROM updates WHERE doc_id = ?", [(doc_id,)]),
        )  # fmt: skip

    async def drop_docs(self, doc_ids: Sequence[str]) -> None:
        """Delete these documents (rows, snapshots, update logs) in one transaction."""
        rows = [(doc_id,) for doc_id in doc_ids]
        await self._transaction(
            ("DELETE FROM updates WHERE doc_id = ?", rows),
            ("DELETE FROM docs WHERE doc_id = ?", rows),
        )

    async def drop_vectors(self, user: str) -> None:
        """Delete every embedding of ``user``'s indexes (``<user>.<scope>``)."""
        prefix = f"{user}."
        await self._transaction(
            ("DELETE FROM vectors WHERE substr(index_name, 1, ?) = ?", [(len(prefix), prefix)])
        )

    async def scrub(self) -> None:
        """Rewrite the file without free pages and empty the WAL, so that nothing deleted
        remains in either (forgetting a user; `secure_delete` zeroes rows as they go)."""
        await self._script("VACUUM;")
        await self._run("PRAGMA wal_checkpoint(TRUNCATE)")

    async def reclaim(self) -> None:
        """Return free pages to the file system and fold the WAL back into the file."""
        # executescript steps the pragma to completion; a plain execute frees one page per step
        await self._script("PRAGMA incremental_vacuum;")
        await self._run("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _script(self, sql: str) -> None:
        with self._failing(sql.rstrip(";").lower()):
            await (await self._conn.executescript(sql)).close()

    async def _run(self, sql: str, args: Sequence[object] = ()) -> None:
        """Execute ``sql`` to completion and release its statement (pragmas return rows)."""
        await self._rows(sql, args)

    async def _transaction(
        self,
        *steps: tuple[str, Iterable[Sequence[object]]],
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        """Run every step in one transaction, in one hop to the connection's thread;
        ``on_commit`` runs there once it has committed.

        A transaction as separate aiosqlite calls (BEGIN, each insert, COMMIT) costs a thread
        round trip each: about half of a lone write's latency.  Cancelled, this still returns
        (raising) only once the thread has ended the transaction, which it does whatever the
        await does: the caller then knows from ``on_commit`` whether it landed.
        """
        batches = [
            (sql, rows if isinstance(rows, _Compressed) else list(rows)) for sql, rows in steps
        ]

        def work(conn: sqlite3.Connection) -> None:
            for _, rows in batches:  # on this thread: the event loop goes on meanwhile
                if isinstance(rows, _Compressed):
                    rows.compress()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in batches:
                    if rows:
                        conn.executemany(sql, rows)
                conn.execute("COMMIT")
                if on_commit is not None:
                    on_commit()
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk, an I/O error):
                # a second ROLLBACK would fail and hide the error that matters
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        with self._failing("write"):
            # aiosqlite has no public call for "run this function on the connection's thread";
            # _execute is what each of its public methods uses to do exactly that.
            try:
                await self._conn._execute(work, self._conn._conn)  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                # found in review: a commit by hand cancelled here landed all the same, was
                # carried as if it had not, and its document rows, inserted again, failed
                # every later batch (UNIQUE constraint)
                await _after_queued_work(self._conn)
                raise


async def _after_queued_work(conn: aiosqlite.Connection) -> None:
    """Return once the connection's thread has run everything queued on it so far (it runs
    its queue in order), however often the caller is cancelled meanwhile."""
    ran = asyncio.ensure_future(conn._execute(_nothing))  # type: ignore[no-untyped-call]
    while not ran.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(ran)
    if not ran.cancelled():
        ran.exception()  # a closed connection ran nothing more: nothing to wait for


def _nothing() -> None:
    pass


class _Compressed(list[tuple[object, ...]]):
    """Rows whose item at ``blob`` is to be stored compressed: `compress` (run on the
    connection's thread) replaces it by the stored bytes and inserts their codec after it."""

    def __init__(
        self,
        rows: Iterable[tuple[object, ...]],
        *,
        blob: int,
        packed: dict[int, bytes] | None = None,
    ) -> None:
        super().__init__(rows)
        self._blob = blob
        self._packed = packed or {}

    def compress(self) -> None:
        at = self._blob
        for i, row in enumerate(self):
            data = row[at]
            assert isinstance(data, bytes)
            frame = self._packed.get(id(data))
            codec, stored = (CODEC_ZSTD, frame) if frame is not None else compress(data)
            if at == 0:  # (blob, ...) -> (stored, codec, ...)
                self[i] = (stored, codec, *row[1:])
            else:  # (..., blob) -> (..., codec, stored): the column order of ``updates``
                self[i] = (*row[:at], codec, stored, *row[at + 1 :])


def rows_of_subject(path: Path, user: str) -> dict[str, int]:
    """How many rows of ``user`` the store file ``path`` holds, by what they are: documents,
    update log rows, embeddings (what `SqliteStore.drop_docs` and `drop_vectors` delete).

    Read-only, as a crash left the file, with no `SqliteStore` (opening the peer finishes a
    purge cut short, and would hide that it was): for checks of what forgetting left.  Takes
    the folder's lock meanwhile: a store a robot runs on raises `StoreInUseError`."""
    prefix, index_prefix = f"user/{user}/", f"{user}."
    with _read_only(path) as conn:
        return {
            what: conn.execute(sql, (len(start), start)).fetchone()[0]
            for what, sql, start in (
                ("documents", "SELECT count(*) FROM docs WHERE substr(doc_id, 1, ?) = ?", prefix),
                ("update log rows",
                 "SELECT count(*) FROM updates WHERE substr(doc_id, 1, ?) = ?", prefix),
                ("embeddings",
                 "SELECT count(*) FROM vectors WHERE substr(index_name, 1, ?) = ?", index_prefix),
            )
        }  # fmt: skip


def read_meta(path: Path, key: str) -> str | None:
    """The meta value ``key`` of the store file ``path``, read-only (see `rows_of_subject`)."""
    with _read_only(path) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.is_file():  # else sqlite3 creates it, empty
        raise StoreError(f"no store file at {path}")
    # the folder's lock, as a peer takes it: a robot running on the store is refused at once
    # (`StoreInUseError`), and none can start while this reads, then find the empty WAL it
    # made removed under it (found in review: its commits went to a deleted file)
    lock = FolderLock.acquire(path.parent)
    try:
        # a peer keeps its WAL index in memory (EXCLUSIVE locking): reading the file here
        # makes a -shm file and, if there was none, an empty -wal; both are removed after, so
        # that the folder is left as it was found
        made = [p for p in (path.with_name(f"{path.name}-{end}") for end in ("shm", "wal"))
                if not p.exists()]  # fmt: skip
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                yield conn
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        finally:
            for extra in made:
                with contextlib.suppress(FileNotFoundError):
                    if extra.name.endswith("-shm") or extra.stat().st_size == 0:
                        extra.unlink()
    finally:
        lock.release()


def _no_room(path: Path) -> str:
    """A hint for SQLite's errors, which do not say when the file system is full."""
    try:
        full = os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return ""
    return " (its file system has no free space left)" if full else ""


def _doc_tuple(row: DocRow) -> tuple[str, str, str, str, int]:
    return (row.doc_id, row.scope, row.subject, row.lineage, row.client_id)


def _vec_tuple(row: VectorRow) -> tuple[int, str, str, int, bytes, str | None]:
    return (row.rowid, row.index_name, row.event_id, row.ts, row.vec, row.record)
