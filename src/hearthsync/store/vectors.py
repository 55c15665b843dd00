"""Vector memory: semantic recall over one user's events, one usearch HNSW index per scope.

The index is **derived** data (DESIGN invariant 4).  The source of truth is the ``vectors`` table
the SQLite store owns, read through the two-method ``VectorSource`` port; the index files are a
cache stamped with exactly what they reflect and are never synced.  Opening an index compares
its stamp with the table and then does the cheapest thing that is still correct:

1. stamp matches the table: load the file into memory as is (tens of milliseconds);
2. the index holds a strict prefix of the table (only newer rows missing): add just those
   (staged: searchable at once, inserted into the graph later, unless there are many);
3. anything else (no files, truncated or garbage file, other embedder, rows deleted): rebuild
   from every row, because building 100k HNSW vectors costs ~30 s on a robot's two cores.

On disk, per index ``<user>.<scope>``: ``<name>.<gen>.usearch`` (the HNSW graph and vectors),
``<name>.<gen>.times.npy`` (rowid and timestamp of every vector, for time windows) and
``<name>.stamp.json``, written last with an atomic replace.  A save writes a new generation and
only the stamp switches to it, so a crash at any point leaves either the old consistent set or
the new one, never a stamp that describes files it does not match.  User and scope names cannot
contain ``.``, so ``<user>.*`` is exactly one user's files and forgetting is a glob and unlink.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from hearthsync.errors import NotFoundError, StoreError, ValidationError
from hearthsync.ids import check_name
from hearthsync.offload import THREAD, Offload
from hearthsync.store.embedding import Embedder, HashingEmbedder

log = logging.getLogger(__name__)

#: why an index with no file here at all starts empty: it was never saved on this robot
NEVER_SAVED = "never saved here"

F32Array = npt.NDArray[np.float32]
I64Array = npt.NDArray[np.int64]
Row = tuple[int, int, bytes]

INDEX_FORMAT = 1
DTYPES = ("i8", "f16")
#: indexes and windows holding at most this many vectors are searched exactly, not via HNSW
EXACT_WINDOW_LIMIT = 4096
#: an index opened this many rows or fewer behind the table stages them (`VectorIndex.stage`)
#: rather than inserting them before it answers; further behind, it inserts them
STAGE_CATCH_UP = 16_384
_STAMP_MAX_BYTES = 64 * 1024  # DESIGN invariant 5: files are size-bounded before parsing
_CRC_SPAN = 64 * 1024
_OVERSAMPLE = 2.0


class VectorSource(Protocol):
    """Read-only port onto the ``vectors`` table (owned by the SQLite store)."""

    async def vector_stats(self, index_name: str) -> tuple[int, int]:
        """(number of rows, greatest rowid or 0) for that index name."""
        ...

    async def vector_rows(
        self, index_name: str, after_rowid: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        """Up to `limit` rows (rowid, ts_ms, f16 vector bytes) with rowid > after_rowid,
        in rowid order."""
        ...


@dataclass(frozen=True, slots=True)
class HnswParams:
    """usearch graph parameters, tuned with ``bench_vectors``.

    16/128/32 gives recall@10 0.976 at ~30x numpy brute force, 533 bytes per vector at 100k
    (docs/explanation/vector-memory.md has the measurements behind these defaults).
    """

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 32


@dataclass(frozen=True, slots=True)
class Hit:
    """One recalled event: its ``vectors`` rowid, timestamp and cosine distance (0 = same)."""

    rowid: int
    ts_ms: int
    distance: float

    @property
    def score(self) -> float:
        """Cosine similarity, higher is closer."""
        return 1.0 - self.distance


@dataclass(frozen=True, slots=True)
class IndexStamp:
    """What a saved index reflects, and a cheap fingerprint of the files it was saved as."""

    format: int
    embedder: str
    dim: int
    dtype: str
    count: int
    last_rowid: int
    generation: int
    index_bytes: int
    index_crc: int
    times_bytes: int
    times_crc: int
    #: source rows up to ``last_rowid`` left out as malformed (`decode_rows`): the index
    #: holds ``count`` rows, the table ``count + skipped`` up to it.  Without it, one bad row
    #: made every open rebuild the whole index (found in review).  Absent: 0 (older stamps)
    skipped: int = 0
    #: crc32 of the whole index file (-1: a stamp written before it was kept, checked by
    #: ``index_crc``, head and tail only, until the next save).  Head and tail missed damage
    #: in between: a graph loaded damaged answered wrongly, raised, or crashed the process,
    #: and the next save stamped the damage as good (found in review)
    index_full_crc: int = -1

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> IndexStamp:
        """Parse a stamp, checking every field's type: the file may be anything."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("stamp is not a JSON object")
        values: dict[str, Any] = {}
        for field in fields(cls):
            value = data.get(field.name, field.default)
            expected = int if field.type == "int" else str
            if type(value) is not expected:
                raise ValueError(f"stamp field {field.name!r} is {value!r:.40}")
            values[field.name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class SyncReport:
    """How ``VectorMemory.open_index`` brought an index up to date, for logs and tests."""

    action: Literal["loaded", "caught_up", "rebuilt"]
    rows_read: int
    reason: str | None = None


def index_name(user: str, scope: str) -> str:
    """The ``vectors.index_name`` value and file prefix of a (user, scope) index."""
    return f"{check_name(user, field='user')}.{check_name(scope, field='scope')}"


def decode_rows(rows: Sequence[Row], dim: int) -> tuple[I64Array, I64Array, F32Array]:
    """Split source rows into rowids, timestamps and float32 vectors, leaving out (and
    logging) malformed ones: a blob of the wrong size, or a vector not finite or zero.  The
    index is derived data: one damaged row costs recall that event, never the whole index."""
    sized = [row for row in rows if isinstance(row[2], bytes) and len(row[2]) == 2 * dim]
    joined = b"".join(r[2] for r in sized)
    vectors = np.frombuffer(joined, dtype="<f2").reshape(len(sized), dim).astype(np.float32)
    usable = np.isfinite(vectors).all(axis=1) & np.any(vectors != 0, axis=1)
    if len(sized) < len(rows) or not usable.all():
        kept = {id(row) for row, ok in zip(sized, usable, strict=True) if ok}
        bad = [row[0] for row in rows if id(row) not in kept]
        log.warning("vectors rows %s are malformed (size, or not finite, or zero); left out of "
                    "the index", bad[:10])  # fmt: skip
        sized = [row for row, ok in zip(sized, usable, strict=True) if ok]
        vectors = vectors[usable]
    rowids = np.array([r[0] for r in sized], dtype=np.int64)
    ts = np.array([r[1] for r in sized], dtype=np.int64)
    return rowids, ts, vectors


def _file_fingerprint(path: Path, *, full: bool) -> tuple[int, int]:
    """(size, crc32): of the whole file, or of its head and tail when it is large.

    Head and tail are enough to catch truncation and a file swapped under the stamp (usearch puts
    the counts in the header) while keeping ``open`` far below the 0.2 s budget at 100k vectors.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        if full or size <= 2 * _CRC_SPAN:
            return size, zlib.crc32(f.read())
        crc = zlib.crc32(f.read(_CRC_SPAN))
        f.seek(size - _CRC_SPAN)
        return size, zlib.crc32(f.read(), crc)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VectorIndex:
    """One HNSW index (cosine) for one (user, scope), plus rowid/timestamp arrays for windows.

    Create one with ``VectorIndex.open``: it never raises on bad files, it records in ``problem``
    why they were unusable and starts empty, and ``VectorMemory`` then refills it from the source.
    Not thread-safe: use one index from one thread (the event loop) at a time.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        *,
        embedder: str,
        dim: int,
        dtype: str = "i8",
        params: HnswParams = HnswParams(),
    ) -> None:
        if dtype not in DTYPES:
            raise ValidationError(f"dtype must be one of {DTYPES}, got {dtype!r}", field="dtype")
        self.directory = Path(directory)
        self.name = name
        self.embedder = embedder
        self.dim = dim
        self.dtype = dtype
        self.params = params
        self.problem: str | None = None
        self._stamp: IndexStamp | None = None
        self._dirty = False
        self.clear()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        name: str,
        *,
        embedder: str,
        dim: int,
        dtype: str = "i8",
        params: HnswParams = HnswParams(),
    ) -> VectorIndex:
        """Load the saved index if its files match their stamp, else start empty (``problem``)."""
        index = cls(directory, name, embedder=embedder, dim=dim, dtype=dtype, params=params)
        index.problem = index._load()
        if index.problem not in (None, NEVER_SAVED):
            log.info("vector index %s unusable, starting empty: %s", name, index.problem)
        return index

    # -- state ---------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self._keys.size)

    @property
    def last_rowid(self) -> int:
        return int(self._keys[-1]) if self._keys.size else 0

    @property
    def stamp(self) -> IndexStamp | None:
        """The stamp of the files this index was loaded from or last saved to."""
        return self._stamp

    @property
    def dirty(self) -> bool:
        """True when the index holds vectors its files do not."""
        return self._dirty

    def clear(self) -> None:
        """Forget every vector (in memory only; the files stay until the next save)."""
        self._index = self._new_index()
        self._keys: I64Array = np.empty(0, dtype=np.int64)
        self._ts: I64Array = np.empty(0, dtype=np.int64)
        self._by_ts: tuple[I64Array, I64Array] | None = None
        # staged vectors live in [lo, hi) of buffers that grow by doubling: staging a batch
        # and searching them copy nothing (a batch is staged at every commit)
        self._tail_keys: I64Array = np.empty(0, dtype=np.int64)
        self._tail_ts: I64Array = np.empty(0, dtype=np.int64)
        self._tail_unit: F32Array = np.empty((0, self.dim), dtype=np.float32)
        self._lo = self._hi = 0
        self._skipped = 0  #: rows left out up to the stamp's last rowid, as it says
        self._skipped_rows: set[int] = set()  #: rowids left out since (`_decoded`)
        self._dirty = self._stamp is not None

    def _new_index(self) -> Index:
        return Index(
            ndim=self.dim,
            metric="cos",
            dtype=self.dtype,
            connectivity=self.params.connectivity,
            expansion_add=self.params.expansion_add,
            expansion_search=self.params.expansion_search,
        )

    # -- adding --------------------------------------------------------------------------------

    def add_rows(self, rows: Sequence[Row]) -> int:
        """Add source rows (rowid, ts_ms, f16 bytes); return how many were new."""
        if not rows:
            return 0
        return self.add(*self._decoded(rows))

    def stage_rows(self, rows: Sequence[Row]) -> int:
        """`stage` source rows (rowid, ts_ms, f16 bytes); return how many were new."""
        if not rows:
            return 0
        return self.stage(*self._decoded(rows))

    @property
    def skipped(self) -> int:
        """Source rows left out as malformed (`IndexStamp.skipped`)."""
        return self._skipped + len(self._skipped_rows)

    def _decoded(self, rows: Sequence[Row]) -> tuple[I64Array, I64Array, F32Array]:
        decoded = decode_rows(rows, self.dim)
        if len(rows) > decoded[0].size:
            left_out = {row[0] for row in rows}.difference(decoded[0].tolist())
            # by rowid: a row staged and read again (`VectorMemory.open_index`) counts once
            self._skipped_rows |= left_out
            if min(left_out) < self.last_rowid:
                self._dirty = True  # the stamp must count it, or the next open rebuilds
        return decoded

    def _skipped_up_to(self, rowid: int) -> int:
        """Rows left out up to ``rowid``: a stamp counts only these, as the next open reads
        every row after its last rowid again (counted twice, the table looked one row short
        and every open rebuilt when the last row was malformed; found in review)."""
        return self._skipped + sum(1 for left_out in self._skipped_rows if left_out <= rowid)

    def add(self, rowids: npt.ArrayLike, ts_ms: npt.ArrayLike, vectors: npt.ArrayLike) -> int:
        """Add vectors under their rowids; rowids already present are skipped (idempotent)."""
        keys, ts, matrix = self._check_batch(rowids, ts_ms, vectors)
        fresh = self._fresh(keys)
        if not fresh.any():
            return 0
        self._dirty = True
        self._index.add(keys[fresh].astype(np.uint64), matrix[fresh])
        self._merge_times(keys[fresh], ts[fresh])
        return int(fresh.sum())

    def _fresh(self, keys: I64Array) -> npt.NDArray[np.bool_]:
        """Which of ``keys`` are new: the first of each, and none the graph holds."""
        _, first = np.unique(keys, return_index=True)
        fresh = np.zeros(keys.size, dtype=bool)
        fresh[first] = True
        if self._keys.size and keys.size and keys.min() <= self._keys[-1]:
            # some may be here already: look them up in the sorted keys (new rows, the usual
            # case, are all beyond the last key and skip this)
            at = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
            fresh &= self._keys[at] != keys
        return fresh

    def _check_batch(
        self, rowids: npt.ArrayLike, ts_ms: npt.ArrayLike, vectors: npt.ArrayLike
    ) -> tuple[I64Array, I64Array, F32Array]:
        keys = np.asarray(rowids, dtype=np.int64).reshape(-1)
        ts = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
        matrix = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if not keys.size == ts.size == matrix.shape[0]:
            raise ValidationError("rowids, timestamps and vectors differ in length")
        if keys.size and keys.min() < 0:
            raise ValidationError("rowids must be non-negative", field="rowid")
        norms = np.linalg.norm(matrix, axis=1)
        if not np.all(np.isfinite(norms) & (norms > 0)):
            raise ValidationError("vectors must be finite and non-zero", field="vec")
        return keys, ts, matrix

    def _merge_times(self, keys: I64Array, ts: I64Array) -> None:
        appended = keys.size and (not self._keys.size or keys.min() > self._keys[-1])
        self._keys = np.concatenate((self._keys, keys))
        self._ts = np.concatenate((self._ts, ts))
        if not (appended and np.all(np.diff(keys) > 0)):
            order = np.argsort(self._keys, kind="stable")
            self._keys, self._ts = self._keys[order], self._ts[order]
        self._by_ts = None

    # -- staging: searchable at once, in the graph later -------------------------------------

    @property
    def pending(self) -> int:
        """Vectors staged (`stage`) and not yet in the graph (`absorb`)."""
        return self._hi - self._lo

    def stage(self, rowids: npt.ArrayLike, ts_ms: npt.ArrayLike, vectors: npt.ArrayLike) -> int:
        """Make vectors searchable now, exactly, and leave their insertion into the graph (the
        costly part: about 0.1 ms a vector) to `absorb`; return how many were new.  Rowids
        already in the graph or staged are skipped, as `add` skips them."""
        keys, ts, matrix = self._check_batch(rowids, ts_ms, vectors)
        fresh = self._fresh(keys)
        staged = self._staged_view()[0]
        if staged.size and fresh.any() and keys.min() <= staged.max():
            fresh &= ~np.isin(keys, staged)  # new rows, the usual case, are beyond them all
        count = int(fresh.sum())
        if not count:
            return 0
        self._reserve(count)
        end = self._hi + count
        self._tail_keys[self._hi : end] = keys[fresh]
        self._tail_ts[self._hi : end] = ts[fresh]
        unit = matrix[fresh]
        self._tail_unit[self._hi : end] = unit / np.linalg.norm(unit, axis=1, keepdims=True)
        self._hi = end
        return count

    def _reserve(self, count: int) -> None:
        """Room for ``count`` more staged vectors: the live ones moved to the front of buffers
        twice their size when they do not fit."""
        if self._hi + count <= self._tail_keys.size:
            return
        live = self._hi - self._lo
        size = max(1024, 2 * (live + count))
        keys, ts = np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64)
        unit = np.empty((size, self.dim), dtype=np.float32)
        keys[:live], ts[:live], unit[:live] = self._staged_view()
        self._tail_keys, self._tail_ts, self._tail_unit = keys, ts, unit
        self._lo, self._hi = 0, live

    def absorb(self, limit: int | None = None) -> int:
        """Insert up to ``limit`` staged vectors (all if None), oldest first, into the graph;
        return how many moved.  Searches see each vector throughout, staged or in the graph."""
        keys, ts, unit = self._staged_view()
        moved = keys.size if limit is None else min(limit, keys.size)
        if not moved:
            return 0
        self.add(keys[:moved], ts[:moved], unit[:moved])
        self._lo += moved
        if self._lo == self._hi:  # nothing staged: let the buffers go
            self._tail_keys = self._tail_ts = np.empty(0, dtype=np.int64)
            self._tail_unit = np.empty((0, self.dim), dtype=np.float32)
            self._lo = self._hi = 0
        return moved

    def _staged_view(self) -> tuple[I64Array, I64Array, F32Array]:
        """Every staged vector (keys, timestamps, unit rows), in staging order: views."""
        lo, hi = self._lo, self._hi
        return self._tail_keys[lo:hi], self._tail_ts[lo:hi], self._tail_unit[lo:hi]

    def _staged_hits(
        self, query: F32Array, k: int, since_ms: int | None, until_ms: int | None
    ) -> list[Hit]:
        """Exact search over the staged vectors within the window: one matrix-vector product
        over the buffers as they are (no copy), then the ``k`` best, ties to the lower rowid."""
        keys, ts, unit = self._staged_view()
        distances = 1.0 - unit @ (query / np.linalg.norm(query))
        if since_ms is not None or until_ms is not None:
            outside = np.zeros(keys.size, dtype=bool)
            if since_ms is not None:
                outside |= ts < since_ms
            if until_ms is not None:
                outside |= ts >= until_ms
            distances[outside] = np.inf
        if k < distances.size:  # every vector as close as the k-th best, then sorted
            kth = np.partition(distances, k - 1)[k - 1]
            picked = np.flatnonzero(distances <= kth)
        else:
            picked = np.arange(distances.size)
        picked = picked[np.isfinite(distances[picked])]
        best = picked[np.lexsort((keys[picked], distances[picked]))[:k]]
        found = zip(keys[best].tolist(), ts[best].tolist(), distances[best].tolist(), strict=True)
        return [Hit(key, t, float(d)) for key, t, d in found]

    # -- searching -----------------------------------------------------------------------------

    def search(
        self,
        vector: npt.ArrayLike,
        *,
        k: int = 10,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[Hit]:
        """The ``k`` nearest vectors, best first, optionally only those with since <= ts < until
        (the same half-open window as ``Peer.events``).

        Vectors staged and not yet in the graph (`stage`) are searched exactly and merged in.
        Small indexes and small windows are searched exactly; larger ones through the graph,
        asking for more candidates than ``k`` in proportion to how much of the index lies outside
        the window, and falling back to an exact scan when the graph still cannot fill ``k`` hits.
        """
        query = self._check_query(vector, k)
        # never more than it holds: a k of 10**400 overflowed the float that sizes a window's
        # search, an OverflowError rather than every hit (found in review)
        k = min(k, max(self.count + self.pending, 1))
        hits = self._graph_hits(query, k, since_ms, until_ms)
        if not self.pending:
            return hits
        merged = hits + self._staged_hits(query, k, since_ms, until_ms)
        return sorted(merged, key=lambda hit: (hit.distance, hit.rowid))[:k]

    def _graph_hits(
        self, query: F32Array, k: int, since_ms: int | None, until_ms: int | None
    ) -> list[Hit]:
        if not self.count:
            return []
        if since_ms is None and until_ms is None:
            # usearch's exact scan costs 0.14 ms at 4k vectors, and it is the only way to promise
            # every vector when k covers them all: HNSW may miss a few.  It also makes small
            # indexes answer identically after a (multi-threaded, so non-deterministic) rebuild.
            exact = self.count <= EXACT_WINDOW_LIMIT or k >= self.count
            matches = self._index.search(query, min(k, self.count), exact=exact)
            return self._hits(matches, k, None, None)
        lo, hi = self._window(since_ms, until_ms)
        if hi - lo <= EXACT_WINDOW_LIMIT:
            return self._exact(query, self._window_keys(lo, hi), k)
        return self._graph_window(query, k, since_ms, until_ms, hi - lo)

    def _check_query(self, vector: npt.ArrayLike, k: int) -> F32Array:
        if k < 1:
            raise ValidationError(f"k must be at least 1, got {k}", field="k")
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.size != self.dim or not np.all(np.isfinite(query)) or not query.any():
            raise ValidationError(f"query must be a finite non-zero {self.dim}-vector")
        # cosine ignores length, a float32 norm does not: the square of 1e-23 is 0 and that of
        # 1e30 infinite, and the staged and exact scans then found nothing or anything
        return (query / np.linalg.norm(query.astype(np.float64))).astype(np.float32)

    def _window(self, since_ms: int | None, until_ms: int | None) -> tuple[int, int]:
        """Positions [lo, hi) of the window in timestamp order."""
        ts_sorted, _ = self._time_order()
        lo = 0 if since_ms is None else int(np.searchsorted(ts_sorted, since_ms, side="left"))
        hi = ts_sorted.size if until_ms is None else np.searchsorted(ts_sorted, until_ms, "left")
        return lo, max(lo, int(hi))

    def _time_order(self) -> tuple[I64Array, I64Array]:
        if self._by_ts is None:
            order = np.argsort(self._ts, kind="stable")
            self._by_ts = (self._ts[order], self._keys[order])
        return self._by_ts

    def _window_keys(self, lo: int, hi: int) -> I64Array:
        return self._time_order()[1][lo:hi]

    def _exact(self, query: F32Array, keys: I64Array, k: int) -> list[Hit]:
        """Brute force over the stored (possibly quantised) vectors of ``keys``."""
        if not keys.size:
            return []
        fetched = self._index.get(keys.astype(np.uint64), dtype="f32")
        stored = np.stack(cast(tuple[F32Array, ...], fetched))
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
        distances = 1.0 - stored @ (query / np.linalg.norm(query))
        best = np.lexsort((keys, distances))[:k]
        return [self._hit(int(keys[i]), float(distances[i])) for i in best]

    def _graph_window(
        self, query: F32Array, k: int, since_ms: int | None, until_ms: int | None, inside: int
    ) -> list[Hit]:
        wanted = math.ceil(k * self.count / inside * _OVERSAMPLE)
        while wanted < self.count:
            hits = self._hits(self._index.search(query, wanted), k, since_ms, until_ms)
            if len(hits) >= k:
                return hits
            wanted *= 4
        matches = self._index.search(query, self.count, exact=True)
        return self._hits(matches, k, since_ms, until_ms)

    def _hits(self, matches: Any, k: int, since_ms: int | None, until_ms: int | None) -> list[Hit]:
        keys = np.asarray(matches.keys, dtype=np.int64)
        ts = self._ts[np.searchsorted(self._keys, keys)]
        distances = np.asarray(matches.distances, dtype=np.float64)
        if since_ms is not None or until_ms is not None:
            since = np.iinfo(np.int64).min if since_ms is None else since_ms
            until = np.iinfo(np.int64).max if until_ms is None else until_ms
            picked = np.flatnonzero((ts >= since) & (ts < until))[:k]
            keys, ts, distances = keys[picked], ts[picked], distances[picked]
        # .tolist() once: per-element numpy scalars cost more than the HNSW search itself
        triples = zip(keys[:k].tolist(), ts[:k].tolist(), distances[:k].tolist(), strict=True)
        return [Hit(key, t, d) for key, t, d in triples]

    def _hit(self, key: int, distance: float) -> Hit:
        ts = int(self._ts[np.searchsorted(self._keys, key)])
        return Hit(key, ts, distance)

    # -- files ---------------------------------------------------------------------------------

    def _path(self, suffix: str, generation: int | None = None) -> Path:
        stem = self.name if generation is None else f"{self.name}.{generation}"
        return self.directory / f"{stem}.{suffix}"

    def _load(self) -> str | None:
        """Load the saved files if they match their stamp; return why not otherwise."""
        try:
            stamp = self._read_stamp()
            mismatch = self._stamp_mismatch(stamp)
            if mismatch:
                return mismatch
            keys, ts = self._read_times(stamp)
            index_path = self._path("usearch", stamp.generation)
            if _file_fingerprint(index_path, full=False) != (stamp.index_bytes, stamp.index_crc):
                return "index file truncated or replaced since its stamp was written"
            self._read_index(index_path, stamp)
            if stamp.index_full_crc < 0:
                self._dirty = True  # an older stamp: the next save keeps the whole file's crc
        except FileNotFoundError as exc:
            if not any(self.directory.glob(f"{self.name}.*")):
                return NEVER_SAVED
            return f"missing file {Path(exc.filename or '?').name} (save cut short, or removed)"
        except (OSError, ValueError, RuntimeError) as exc:
            return f"unreadable: {exc}"
        self._keys, self._ts, self._stamp = keys, ts, stamp
        self._skipped = stamp.skipped
        return None

    def _read_stamp(self) -> IndexStamp:
        with self._path("stamp.json").open("rb") as f:
            raw = f.read(_STAMP_MAX_BYTES + 1)
        if len(raw) > _STAMP_MAX_BYTES:
            raise ValueError("stamp file too large")
        return IndexStamp.from_json(raw)

    def _stamp_mismatch(self, stamp: IndexStamp) -> str | None:
        want = (INDEX_FORMAT, self.embedder, self.dim, self.dtype)
        have = (stamp.format, stamp.embedder, stamp.dim, stamp.dtype)
        if have != want:
            return f"built as (format, embedder, dim, dtype) = {have}, want {want}"
        return None

    def _read_times(self, stamp: IndexStamp) -> tuple[I64Array, I64Array]:
        path = self._path("times.npy", stamp.generation)
        if _file_fingerprint(path, full=True) != (stamp.times_bytes, stamp.times_crc):
            raise ValueError("times file truncated or replaced since its stamp was written")
        table = np.load(path, allow_pickle=False)
        if table.dtype != np.int64 or table.shape != (stamp.count, 2):
            raise ValueError(f"times file holds {table.dtype} {table.shape}")
        keys, ts = np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])
        if keys.size and (np.any(np.diff(keys) <= 0) or keys[-1] != stamp.last_rowid):
            raise ValueError("times file rowids are not the stamped increasing sequence")
        return keys, ts

    def _read_index(self, path: Path, stamp: IndexStamp) -> None:
        # Loaded, not memory-mapped (``Index.view``): a mapped index pays a page fault for every
        # node a search first touches, which made the first thousand searches after an open
        # up to 40% slower at the tail, and the first ``add`` copied it into memory anyway.
        meta = Index.metadata(os.fspath(path))
        if not meta or meta["dimensions"] != self.dim or meta["count_present"] != stamp.count:
            raise ValueError(f"index header disagrees with the stamp: {meta}")
        # read once: the bytes checked are the bytes loaded (a crc32 costs about 12 ms for
        # the 53 MB of 100,000 vectors)
        data = path.read_bytes()
        if stamp.index_full_crc >= 0 and zlib.crc32(data) != stamp.index_full_crc:
            raise ValueError("index file damaged since its stamp was written (crc32 differs)")
        index = self._new_index()
        index.load(data)
        self._index = index

    def save(self) -> IndexStamp:
        """Write a new generation of files, then switch the stamp to it (the atomic step).

        Synchronous on purpose: the stamp must describe exactly the vectors written, so nothing
        may be added while saving.  It writes the whole index (tens of MB at 100k vectors).
        """
        if not self._dirty and self._stamp is not None:
            return self._stamp
        generation = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            generation = self._next_generation()
            index_path, times_path = self._write_generation(generation)
            index_fp = _file_fingerprint(index_path, full=False)
            times_fp = _file_fingerprint(times_path, full=True)
            whole = _file_fingerprint(index_path, full=True)[1]
            stamp = IndexStamp(
                INDEX_FORMAT, self.embedder, self.dim, self.dtype, self.count, self.last_rowid,
                generation, *index_fp, *times_fp, skipped=self._skipped_up_to(self.last_rowid),
                index_full_crc=whole,
            )  # fmt: skip
            self._write_stamp(stamp)
        except (OSError, RuntimeError) as exc:  # usearch reports a failed write as RuntimeError
            # the stamp still names the last good generation; what this one wrote goes
            for path in self.directory.glob(f"{self.name}.{generation}.*"):
                path.unlink(missing_ok=True)
            raise StoreError(f"could not save vector index {self.name} in {self.directory}: "
                             f"{exc}") from exc  # fmt: skip
        self._stamp, self._dirty = stamp, False
        self._remove_generations(keep=generation)
        return stamp

    def _next_generation(self) -> int:
        numbers = [self._generation_of(p) for p in self.directory.glob(f"{self.name}.*.*")]
        return max([0, *(n for n in numbers if n is not None)]) + 1

    def _generation_of(self, path: Path) -> int | None:
        middle = path.name[len(self.name) + 1 :].split(".", 1)[0]
        return int(middle) if middle.isdigit() else None

    def _write_generation(self, generation: int) -> tuple[Path, Path]:
        index_path = self._path("usearch", generation)
        times_path = self._path("times.npy", generation)
        self._index.save(os.fspath(index_path))
        with times_path.open("wb") as f:
            np.save(f, np.stack((self._keys, self._ts), axis=1), allow_pickle=False)
        _fsync(index_path)
        _fsync(times_path)
        return index_path, times_path

    def _write_stamp(self, stamp: IndexStamp) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f"{self.name}.tmp-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(stamp.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path("stamp.json"))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _remove_generations(self, keep: int) -> None:
        for path in self.directory.glob(f"{self.name}.*.*"):
            generation = self._generation_of(path)
            if generation is not None and generation != keep:
                path.unlink(missing_ok=True)
        # and the stamps a process killed while writing them left (`_write_stamp`): saves are
        # synchronous and the store is one process's, so none of them is being written now
        for path in self.directory.glob(f"{self.name}.tmp-*.tmp"):
            path.unlink(missing_ok=True)

    def delete_files(self) -> None:
        """Remove every file of this index (forgetting) and empty it."""
        self._stamp = None
        self.clear()
        self._dirty = False
        for path in self.directory.glob(f"{self.name}.*"):
            path.unlink(missing_ok=True)


def _save_or_warn(index: VectorIndex) -> None:
    """Save ``index``; a failure is logged, not raised: the index is derived data, it serves
    from memory all the same, and the next open catches it up from SQLite."""
    try:
        index.save()
    except StoreError as exc:
        log.warning("%s; it is caught up again at the next open", exc)


class VectorMemory:
    """The vector indexes of one robot, kept in step with the ``vectors`` table.

    Use ``async with VectorMemory(...)``: leaving the block saves what changed.  Call ``stage``
    (or ``add``, which inserts at once) after committing rows to the table, ``absorb`` when
    there is time, and ``save`` periodically; a crash before ``save`` only costs a catch-up of
    the unsaved rows at the next ``open_index``.
    """

    def __init__(
        self,
        source: VectorSource,
        directory: str | os.PathLike[str],
        embedder: Embedder,
        *,
        dtype: str = "i8",
        params: HnswParams = HnswParams(),
        batch: int = 4096,
        offload: Offload = THREAD,
    ) -> None:
        self._source = source
        #: where inserts and saves run (`hearthsync.offload`): a worker thread by default
        self.offload = offload
        self.directory = Path(directory)
        self.embedder = embedder
        self._dtype = dtype
        self._params = params
        self._batch = batch
        self._open: dict[str, VectorIndex] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._reports: dict[str, SyncReport] = {}
        self._dropped: set[str] = set()  #: users forgotten (`drop`): their indexes never open
        #: rows committed while an index is being opened, by index: `_sync` awaits after its
        #: last read of the table, and these would reach neither the index nor its next read
        self._opening: dict[str, list[Row]] = {}

    async def __aenter__(self) -> VectorMemory:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def open_index(self, user: str, scope: str) -> VectorIndex:
        """The up-to-date index of (user, scope): loaded, caught up or rebuilt (see module doc)."""
        name = index_name(user, scope)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if user in self._dropped:
                raise NotFoundError(f"user {user!r} was forgotten: their index is gone")
            if name not in self._open:
                # in the loop's thread: indexes are opened by `Peer.open` before it serves (40 ms
                # for a year), and a worker thread here made the chaos simulation's schedules
                # depend on thread timing, so they no longer replayed bit for bit
                index = VectorIndex.open(
                    self.directory, name, embedder=self.embedder.name, dim=self.embedder.dim,
                    dtype=self._dtype, params=self._params,
                )  # fmt: skip
                self._opening[name] = []
                try:
                    report = await self._sync(index, name)
                finally:
                    arrived = self._opening.pop(name)
                # A row committed after `_sync` began reached ``add`` or ``stage`` meanwhile and
                # waited in ``arrived`` (found in review: recall missed it until the next open);
                # staged here, with no await before the index is open, so every later row
                # reaches it directly.  Rows read by `_sync` too are skipped (`VectorIndex.stage`)
                if arrived:
                    index.stage_rows(arrived)
                self._open[name] = index
                self._reports[name] = report
            return self._open[name]

    def is_open(self, user: str, scope: str) -> bool:
        """Whether the index of (user, scope) is open: rows reach it (`stage`, `add`)."""
        return index_name(user, scope) in self._open

    def last_sync(self, user: str, scope: str) -> SyncReport | None:
        """How the index of (user, scope) was brought up to date when it was opened."""
        return self._reports.get(index_name(user, scope))

    async def _sync(self, index: VectorIndex, name: str) -> SyncReport:
        count, max_rowid = await self._source.vector_stats(name)
        reason = index.problem or self._lost_rows(index, count, max_rowid)
        if reason is None:
            before = index.count + index.skipped
            # a few rows (those committed since the last save): staged, searchable at once and
            # left to the graph for later, so an open never waits for HNSW inserts
            stage = count - before <= STAGE_CATCH_UP
            read, up_to_max = await self._pull(index, name, max_rowid, stage=stage)
            if before + up_to_max == count:
                return SyncReport("caught_up" if read else "loaded", read)
            reason = f"index held {before} rows but the source has {count - up_to_max} up to it"
        if index.count:
            index.clear()
        read, _ = await self._pull(index, name, max_rowid)
        # a brand-new index (no rows yet) is not news, nor is the first index of rows this
        # robot never indexed (a user it heard of from another robot, whose events arrived by
        # sync: the demo's second robot warned of each); a rebuild of an index it had is
        report = log.warning if read and reason != NEVER_SAVED else log.debug
        report("rebuilt vector index %s from %d rows: %s", name, read, reason)
        return SyncReport("rebuilt", read, reason)

    @staticmethod
    def _lost_rows(index: VectorIndex, count: int, max_rowid: int) -> str | None:
        if max_rowid < index.last_rowid or count < index.count:
            have = f"index has {index.count} up to {index.last_rowid}"
            return f"source has {count} rows up to rowid {max_rowid}, {have}"
        return None

    async def _pull(
        self, index: VectorIndex, name: str, max_rowid: int, *, stage: bool = False
    ) -> tuple[int, int]:
        """Add (or ``stage``) every source row after the index's last rowid; return (read,
        read <= max_rowid)."""
        read = up_to_max = 0
        after = index.last_rowid
        while True:
            rows = await self._source.vector_rows(name, after, self._batch)
            _check_order(rows, after, name)
            if rows:
                if stage:
                    index.stage_rows(rows)
                else:
                    await self.offload(index.add_rows, rows)  # keeps the loop responsive
                read += len(rows)
                up_to_max += sum(1 for row in rows if row[0] <= max_rowid)
                after = rows[-1][0]
            if len(rows) < self._batch:
                break
        if index.dirty and read:
            await self.offload(_save_or_warn, index)  # nobody else holds the index yet
        return read, up_to_max

    def add(self, user: str, scope: str, rows: Sequence[Row]) -> int:
        """Index rows just committed to the table; ignored if the index is not open (it will
        catch up when opened).  Returns how many vectors were new."""
        name = index_name(user, scope)
        index = self._open.get(name)
        if index is None:
            self._opening.get(name, []).extend(rows)  # an index being opened takes them then
            return 0
        return index.add_rows(rows)

    def stage(
        self, user: str, scope: str, rows: Sequence[Row], vectors: F32Array | None = None
    ) -> int:
        """Make rows just committed to the table searchable now, and leave them to `absorb`
        for the graph (`VectorIndex.stage`); ignored if the index is not open.  ``vectors``:
        the rows' blobs decoded (float16 as float32), if the caller has them (the flusher,
        whose embedder made them): decoding the blobs again cost about 1 us an event."""
        name = index_name(user, scope)
        index = self._open.get(name)
        if index is None:
            self._opening.get(name, []).extend(rows)  # an index being opened takes them then
            return 0
        if not rows:
            return 0
        if vectors is None:
            return index.stage_rows(rows)
        return index.stage([row[0] for row in rows], [row[1] for row in rows], vectors)

    @property
    def pending(self) -> int:
        """Vectors staged in every open index and not yet in its graph."""
        return sum(index.pending for index in self._open.values())

    def absorb(self, limit: int | None = None) -> int:
        """Insert up to ``limit`` staged vectors (all if None) into their graphs; return how
        many moved."""
        moved = 0
        for index in list(self._open.values()):
            if limit is not None and moved >= limit:
                break
            moved += index.absorb(None if limit is None else limit - moved)
        return moved

    async def search(
        self,
        user: str,
        scope: str,
        query: str | npt.ArrayLike,
        *,
        k: int = 10,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[Hit]:
        """Semantic recall: embed ``query`` if it is text, then search the (user, scope) index."""
        index = await self.open_index(user, scope)
        vector = self.embedder.embed([query])[0] if isinstance(query, str) else query
        return index.search(vector, k=k, since_ms=since_ms, until_ms=until_ms)

    def save(self) -> None:
        """Save every open index holding unsaved vectors (inserting what is staged first)."""
        for index in self._open.values():
            index.absorb()
            if index.dirty:
                _save_or_warn(index)

    async def drop(self, user: str) -> None:
        """Forget ``user``: close their indexes and delete all their files (DESIGN: Forgetting);
        from then on their indexes do not open (`NotFoundError`).

        Under each index's lock, as `open_index` works: an open under way when the user was
        forgotten (their first recall, say) saved their vectors and kept the index after this
        had deleted everything (found in review).  It finishes first now, and its index and
        files go with the rest."""
        prefix = f"{check_name(user, field='user')}."
        self._dropped.add(user)  # before the first await: every open from here refuses
        for name in sorted(n for n in self._locks if n.startswith(prefix)):
            async with self._locks[name]:
                pass  # an open under way has stored its index (and saved it) by now
        for name in [n for n in self._open if n.startswith(prefix)]:
            self._open.pop(name).delete_files()
            self._reports.pop(name, None)
        for path in self.directory.glob(f"{prefix}*"):
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """Save and forget every open index."""
        self.save()
        self._open.clear()


def _check_order(rows: Sequence[Row], after: int, name: str) -> None:
    """The port promises rowid order after ``after``; anything else would loop or skip rows."""
    previous = after
    for rowid, _, _ in rows:
        if rowid <= previous:
            raise StoreError(f"vector source for {name} returned rowid {rowid} after {previous}")
        previous = rowid


# -- benchmark ---------------------------------------------------------------------------------

_WHO = ("alice", "bob", "carol", "dan", "grandma", "the kids", "the guest", "eve")
_DID = ("asked for", "declined", "corrected", "thanked the robot for", "ignored", "requested",
        "complained about", "moved", "looked for", "put away")  # fmt: skip
_WHAT = ("coffee with oat milk", "green tea", "the blue blanket", "jazz music", "the news",
         "a glass of water", "the green mug", "the lights dimmed", "the window open",
         "the reading lamp", "her pills", "the tv remote", "a cheese sandwich", "the thermostat",
         "the car keys", "his glasses", "the dog lead", "a podcast", "the laundry",
         "fresh towels")  # fmt: skip
_WHERE = ("in the kitchen", "in the living room", "on the balcony", "in the bedroom",
          "at the desk", "in the hallway", "by the front door", "in the garden")  # fmt: skip
_WHEN = ("in the morning", "after lunch", "before bed", "at noon", "on the weekend",
         "after the walk", "during dinner", "late at night")  # fmt: skip
_HOW = ("quickly", "politely", "again", "for the first time", "loudly", "while tired", "", "")


def synthetic_event_texts(n: int, seed: int = 0) -> list[str]:
    """Short household event texts with the shape and vocabulary of the interaction log."""
    rng = random.Random(seed)
    parts = (_WHO, _DID, _WHAT, _WHERE, _WHEN, _HOW)
    return [" ".join(rng.choice(p) for p in parts) + f" {rng.randrange(10_000)}" for _ in range(n)]


def bench_vectors(n: int = 100_000, dim: int = 384, seed: int = 0) -> dict[str, float]:
    """Measure recall, speed and size of the product index against numpy brute force.

    Data: HashingEmbedder vectors of ``synthetic_event_texts`` (what the index holds in
    production), 200 held-out texts as queries.  Recall counts a hit as correct when its exact
    float32 similarity ties or beats the exact 10th best, so duplicate texts do not count as misses.
    """
    embedder = HashingEmbedder(dim)
    texts = synthetic_event_texts(n + 200, seed)
    data, queries = embedder.embed(texts[:n]), embedder.embed(texts[n:])
    with tempfile.TemporaryDirectory() as tmp:
        figures, found = _bench_index(Path(tmp), data, queries, embedder.name)
    exact_qps, truth = _bench_bruteforce(data, queries)
    figures["numpy_bruteforce_qps"] = exact_qps
    figures["vector_speedup"] = figures["vector_qps"] / exact_qps
    figures["recall_at_10"] = _recall(data, queries, found, truth)
    return figures


def _bench_index(
    directory: Path, data: F32Array, queries: F32Array, embedder: str
) -> tuple[dict[str, float], list[list[int]]]:
    n, dim = data.shape
    index = VectorIndex(directory, "bench.history", embedder=embedder, dim=dim)
    started = time.perf_counter()
    index.add(np.arange(1, n + 1), np.arange(n), data)
    build_s = time.perf_counter() - started
    stamp = index.save()
    started = time.perf_counter()
    loaded = VectorIndex.open(directory, "bench.history", embedder=embedder, dim=dim)
    load_s = time.perf_counter() - started
    if loaded.problem is not None:
        raise StoreError(f"benchmark index did not reload: {loaded.problem}")
    started = time.perf_counter()
    found = [[hit.rowid - 1 for hit in loaded.search(q, k=10)] for q in queries]
    qps = len(queries) / (time.perf_counter() - started)
    figures = {
        "vector_qps": qps,
        "vector_bytes_per_item": stamp.index_bytes / n,
        "index_build_s": build_s,
        "index_load_s": load_s,
    }
    return figures, found


def _bench_bruteforce(
    data: F32Array, queries: F32Array
) -> tuple[float, list[npt.NDArray[np.intp]]]:
    """Single-query exact cosine top-10 (rows are unit vectors, so a dot product)."""
    started = time.perf_counter()
    truth = []
    for query in queries:
        scores = data @ query
        top = np.argpartition(-scores, 10)[:10]
        truth.append(top[np.argsort(-scores[top])])
    return len(queries) / (time.perf_counter() - started), truth


def _recall(data: F32Array, queries: F32Array, found: list[list[int]], truth: list[Any]) -> float:
    total = 0.0
    for query, got, best in zip(queries, found, truth, strict=True):
        tenth = float(data[best[-1]] @ query)
        total += sum(1 for i in got if float(data[i] @ query) >= tenth - 1e-6) / len(best)
    return total / len(queries)
