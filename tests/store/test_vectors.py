"""Vector memory: derived, stamped, rebuilt only when it must be, correct within time windows."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from hearthsync.errors import NotFoundError, StoreError, ValidationError
from hearthsync.store import vectors
from hearthsync.store.embedding import HashingEmbedder
from hearthsync.store.vectors import (
    VectorIndex,
    VectorMemory,
    _save_or_warn,
    bench_vectors,
    decode_rows,
    index_name,
    synthetic_event_texts,
)

DIM = 32
EMBEDDER = HashingEmbedder(DIM)
T0 = 1_773_014_400_000
NAME = "alice.history"
T = TypeVar("T")


class MemorySource:
    """The ``vectors`` table in a dict, counting every row it hands out."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[int, int, bytes]]] = {}
        self.next_rowid = 1
        self.rows_read = 0

    def insert(self, name: str, texts: list[str], ts_ms: list[int]) -> list[tuple[int, int, bytes]]:
        blobs = [v.astype("<f2").tobytes() for v in EMBEDDER.embed(texts)]
        new = [
            (self.next_rowid + i, ts, b) for i, (ts, b) in enumerate(zip(ts_ms, blobs, strict=True))
        ]
        self.next_rowid += len(new)
        self.rows.setdefault(name, []).extend(new)
        return new

    def delete(self, name: str, rowid: int) -> None:
        self.rows[name] = [r for r in self.rows[name] if r[0] != rowid]

    async def vector_stats(self, index_name: str) -> tuple[int, int]:
        rows = self.rows.get(index_name, [])
        return len(rows), max((r[0] for r in rows), default=0)

    async def vector_rows(
        self, index_name: str, after_rowid: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        picked = [r for r in self.rows.get(index_name, []) if r[0] > after_rowid][:limit]
        self.rows_read += len(picked)
        return picked


def fill(source: MemorySource, n: int, name: str = NAME, seed: int = 0) -> None:
    source.insert(name, synthetic_event_texts(n, seed), [T0 + 60_000 * i for i in range(n)])


def memory(source: MemorySource, directory: Path, dtype: str = "f16") -> VectorMemory:
    return VectorMemory(source, directory, EMBEDDER, dtype=dtype, batch=128)


QUERIES = ["alice asked for green tea in the kitchen", "bob moved the car keys", "grandma 42"]


async def recall_all(mem: VectorMemory) -> list[list[int]]:
    index = await mem.open_index("alice", "history")
    return [[h.rowid for h in index.search(q, k=5)] for q in EMBEDDER.embed(QUERIES)]


async def built(tmp_path: Path, n: int = 300) -> tuple[MemorySource, list[list[int]]]:
    """A source of ``n`` rows and the results of a saved index over it."""
    source = MemorySource()
    fill(source, n)
    async with memory(source, tmp_path) as mem:
        results = await recall_all(mem)
        assert mem.last_sync("alice", "history") == vectors.SyncReport(
            "rebuilt", n, vectors.NEVER_SAVED
        )
    return source, results


# -- stamp, load, catch-up, rebuild ----------------------------------------------------------


async def test_matching_stamp_loads_without_reading_rows(tmp_path: Path) -> None:
    source, before = await built(tmp_path)
    source.rows_read = 0
    async with memory(source, tmp_path) as mem:
        assert await recall_all(mem) == before
        assert mem.last_sync("alice", "history") == vectors.SyncReport("loaded", 0)
    assert source.rows_read == 0


def _delete_index(d: Path) -> None:
    next(d.glob("alice.history.*.usearch")).unlink()


def _truncate_index(d: Path) -> None:
    path = next(d.glob("alice.history.*.usearch"))
    path.write_bytes(path.read_bytes()[:-100])


def _garbage_index(d: Path) -> None:
    path = next(d.glob("alice.history.*.usearch"))
    path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8))


def _damage_index_middle(d: Path) -> None:
    """Bytes flipped halfway through, where neither the header nor the tail is (found in
    review: loaded as is, it answered wrongly, raised, or crashed the process)."""
    path = next(d.glob("alice.history.*.usearch"))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _delete_stamp(d: Path) -> None:
    (d / "alice.history.stamp.json").unlink()


def _garbage_stamp(d: Path) -> None:
    (d / "alice.history.stamp.json").write_text('{"format": "1"}')


def _truncate_times(d: Path) -> None:
    path = next(d.glob("alice.history.*.times.npy"))
    path.write_bytes(path.read_bytes()[:-16])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_delete_index, "missing file"),
        (_truncate_index, "truncated or replaced"),
        (_garbage_index, "truncated or replaced"),
        (_delete_stamp, "missing file"),
        (_garbage_stamp, "stamp field"),
        (_truncate_times, "times file truncated"),
    ],
)
async def test_damaged_files_are_rebuilt_with_the_same_results(
    tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    source, before = await built(tmp_path)
    damage(tmp_path)
    source.rows_read = 0
    async with memory(source, tmp_path) as mem:
        assert await recall_all(mem) == before
        report = mem.last_sync("alice", "history")
    assert report is not None
    assert report.action == "rebuilt"
    assert reason in (report.reason or "")
    assert source.rows_read == 300


async def test_only_the_rebuild_of_an_index_this_robot_had_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first index of rows this robot never indexed (a user heard of from another robot,
    whose events came by sync) is built quietly: the demo's second robot warned of a rebuild
    for each user.  One that was saved and lost its stamp is still a warning."""
    caplog.set_level(logging.DEBUG, logger=vectors.__name__)
    source = MemorySource()
    fill(source, 50)
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        assert mem.last_sync("alice", "history") == vectors.SyncReport(
            "rebuilt", 50, vectors.NEVER_SAVED
        )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    _delete_stamp(tmp_path)
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "rebuilt vector index alice.history from 50 rows: missing file "
        "alice.history.stamp.json (save cut short, or removed)"
    ]


async def test_an_index_damaged_between_head_and_tail_is_rebuilt(tmp_path: Path) -> None:
    source, before = await built(tmp_path, n=1000)
    path = next(tmp_path.glob("alice.history.*.usearch"))
    assert path.stat().st_size > 2 * vectors._CRC_SPAN + 128  # the middle is neither head nor tail
    _damage_index_middle(tmp_path)
    async with memory(source, tmp_path) as mem:
        assert await recall_all(mem) == before
        report = mem.last_sync("alice", "history")
    assert report is not None
    assert (report.action, report.reason) == (
        "rebuilt", "unreadable: index file damaged since its stamp was written (crc32 differs)"
    )  # fmt: skip
    async with memory(source, tmp_path) as mem:  # and the rebuilt one is saved as good
        assert await recall_all(mem) == before
        assert mem.last_sync("alice", "history") == vectors.SyncReport("loaded", 0)


async def test_a_stamp_from_before_the_whole_files_crc_loads_and_is_saved_with_it(
    tmp_path: Path,
) -> None:
    """A stamp written by an older version (no ``skipped``, no ``index_full_crc``) loads as
    it did, rather than costing a rebuild (30 s at 100,000), and the next save keeps the
    whole file's crc."""
    source, before = await built(tmp_path)
    stamp_path = tmp_path / "alice.history.stamp.json"
    older = json.loads(stamp_path.read_bytes())
    del older["skipped"], older["index_full_crc"]
    stamp_path.write_text(json.dumps(older))
    async with memory(source, tmp_path) as mem:
        assert await recall_all(mem) == before
        assert mem.last_sync("alice", "history") == vectors.SyncReport("loaded", 0)
    saved = json.loads(stamp_path.read_bytes())
    assert saved["index_full_crc"] >= 0
    assert saved["skipped"] == 0


async def test_index_of_another_embedder_is_not_used(tmp_path: Path) -> None:
    await built(tmp_path)
    index = VectorIndex.open(tmp_path, NAME, embedder="other-model", dim=DIM, dtype="f16")
    assert index.count == 0
    assert "other-model" in (index.problem or "")


async def test_catch_up_reads_only_the_new_rows(tmp_path: Path) -> None:
    source, _ = await built(tmp_path)
    new = source.insert(NAME, ["dan asked for a cheese sandwich on the balcony"] * 25, [T0] * 25)
    source.rows_read = 0
    async with memory(source, tmp_path) as mem:
        index = await mem.open_index("alice", "history")
        assert mem.last_sync("alice", "history") == vectors.SyncReport("caught_up", 25)
        assert (index.count, index.pending) == (300, 25)  # staged: no insert before it answers
        top = index.search(EMBEDDER.embed(["dan asked for a cheese sandwich"])[0], k=25)
    assert source.rows_read == 25
    assert {h.rowid for h in top} == {r[0] for r in new}


async def test_deleted_rows_force_a_rebuild(tmp_path: Path) -> None:
    """Same count and a greater max rowid, but not a prefix: row 7 is gone from the table."""
    source, _ = await built(tmp_path)
    source.delete(NAME, 7)
    fill(source, 1, seed=9)
    async with memory(source, tmp_path) as mem:
        index = await mem.open_index("alice", "history")
        report = mem.last_sync("alice", "history")
        hits = index.search(np.frombuffer(source.rows[NAME][5][2], "<f2"), k=300)
    assert report is not None
    assert report.action == "rebuilt"
    assert 7 not in {h.rowid for h in hits}
    assert len(hits) == 300


async def test_added_rows_are_searchable_and_saved(tmp_path: Path) -> None:
    source, _ = await built(tmp_path, n=50)
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        rows = source.insert(NAME, ["eve put away fresh towels"], [T0 + 1])
        assert mem.add("alice", "history", rows) == 1
        assert mem.add("alice", "history", rows) == 0  # idempotent
        hits = await mem.search("alice", "history", "eve put away fresh towels", k=1)
        assert [(h.rowid, h.ts_ms) for h in hits] == [(rows[0][0], T0 + 1)]
        assert hits[0].distance == pytest.approx(0.0, abs=1e-3)
    source.rows_read = 0
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        assert mem.last_sync("alice", "history") == vectors.SyncReport("loaded", 0)


async def test_add_to_an_unopened_index_waits_for_catch_up(tmp_path: Path) -> None:
    source = MemorySource()
    async with memory(source, tmp_path) as mem:
        rows = source.insert(NAME, ["bob ignored the news"], [T0])
        assert mem.add("alice", "history", rows) == 0
        index = await mem.open_index("alice", "history")
        assert index.count == 1


class PowerCut(BaseException):
    """The process stops where it is: no handler runs, nothing is cleaned up."""


async def cut_before_the_stamp(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    save: Callable[[VectorMemory], object],
) -> None:
    """An index with one unsaved row whose save fails with ``error`` as it writes the stamp
    (``save`` runs it and checks what it left); then the process dies, and the next open
    must take the stamped generation and catch up the row."""
    source, _ = await built(tmp_path)
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        mem.add("alice", "history", source.insert(NAME, ["carol asked for jazz music"], [T0]))

        def cut(self: VectorIndex, stamp: vectors.IndexStamp) -> None:
            raise error

        monkeypatch.setattr(VectorIndex, "_write_stamp", cut)
        save(mem)
        monkeypatch.undo()
        mem._open.clear()  # the process died: nothing left to save
    source.rows_read = 0
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        assert mem.last_sync("alice", "history") == vectors.SyncReport("caught_up", 1)
        mem.save()


async def test_a_save_cut_short_before_the_stamp_keeps_the_previous_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def save(mem: VectorMemory) -> None:
        before = sorted(p.name for p in tmp_path.glob("alice.history.*"))
        with caplog.at_level(logging.WARNING, logger="hearthsync.store.vectors"):
            mem.save()  # derived data: a failed save is logged, never raised to a closing peer
        assert "could not save vector index alice.history" in caplog.text
        assert "power cut" in caplog.text
        # what the cut-short generation wrote is gone; the stamp names the previous one
        assert sorted(p.name for p in tmp_path.glob("alice.history.*")) == before

    await cut_before_the_stamp(tmp_path, monkeypatch, OSError("power cut"), save)


async def test_a_power_cut_before_the_stamp_leaves_files_the_next_open_ignores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    left: set[Path] = set()

    def save(mem: VectorMemory) -> None:
        before = set(tmp_path.glob("alice.history.*"))
        with pytest.raises(PowerCut):
            mem.save()
        left.update(set(tmp_path.glob("alice.history.*")) - before)
        assert {p.suffix for p in left} == {".usearch", ".npy"}  # a whole new generation

    await cut_before_the_stamp(tmp_path, monkeypatch, PowerCut(), save)
    assert left
    assert not any(p.exists() for p in left)  # ignored by the open, removed by the next save


async def test_a_stamp_left_half_written_by_a_killed_save_is_removed_by_the_next(
    tmp_path: Path,
) -> None:
    """A process killed while it wrote the stamp leaves its temporary file behind: the next
    save removes it, as it removes generations no stamp names (each kill left one for good)."""
    source, _ = await built(tmp_path)
    killed = tmp_path / "alice.history.tmp-x1y2z3.tmp"  # as `tempfile.mkstemp` names it
    killed.write_bytes(b'{"format": 1, "embed')
    fill(source, 5, seed=3)
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")  # caught up, and saved
    assert not killed.exists()
    assert sorted(p.suffix for p in tmp_path.glob("alice.history.*")) == [
        ".json",
        ".npy",
        ".usearch",
    ]


async def test_drop_deletes_only_that_users_files(tmp_path: Path) -> None:
    source = MemorySource()
    fill(source, 20)
    fill(source, 20, name="bob.history")
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        await mem.open_index("bob", "history")
        mem.save()
        await mem.drop("alice")
        assert sorted(p.name.split(".")[0] for p in tmp_path.iterdir()) == ["bob"] * 3


class HeldSource(MemorySource):
    """A source whose next read waits, once `hold` is called, until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.held = asyncio.Event()  # a read is waiting
        self.release = asyncio.Event()

    def hold(self) -> None:
        self.holding = True

    async def vector_rows(
        self, index_name: str, after_rowid: int, limit: int
    ) -> list[tuple[int, int, bytes]]:
        if self.holding:
            self.holding = False
            self.held.set()
            await self.release.wait()
        return await super().vector_rows(index_name, after_rowid, limit)


async def test_an_open_under_way_when_its_user_is_dropped_leaves_nothing(tmp_path: Path) -> None:
    """Found in review: an index being opened (a user's first recall) while the user was
    forgotten was saved and kept after the drop had deleted everything."""
    source = HeldSource()
    fill(source, 300)
    fill(source, 20, name="bob.history")
    mem = memory(source, tmp_path)
    source.hold()
    opening = asyncio.create_task(mem.open_index("alice", "history"))
    async with asyncio.timeout(10):
        await source.held.wait()

    async def drop() -> None:
        source.release.set()  # the open goes on only once the drop has begun
        await mem.drop("alice")

    async with asyncio.timeout(10):
        index, _ = await asyncio.gather(opening, drop())
    assert index.count == 0  # what the open loaded went with the drop
    assert mem.last_sync("alice", "history") is None
    assert list(tmp_path.glob("alice.*")) == []
    with pytest.raises(NotFoundError, match="forgotten"):
        await mem.open_index("alice", "history")  # nor does it come back later
    assert list(tmp_path.glob("alice.*")) == []
    assert (await mem.open_index("bob", "history")).count == 20
    mem.close()
    assert sorted(p.name.split(".")[0] for p in tmp_path.iterdir()) == ["bob"] * 3


async def test_malformed_source_rows_are_left_out_and_the_rest_indexed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # derived data: one damaged row must not keep the index, or the peer, from opening
    source = MemorySource()
    fill(source, 3)
    good = list(source.rows[NAME])
    nan = np.full(DIM, np.nan, dtype="<f2").tobytes()
    zero = np.zeros(DIM, dtype="<f2").tobytes()
    source.rows[NAME] = [*good, (10, T0, b"\x00" * 10), (11, T0, nan), (12, T0, zero)]
    index = await memory(source, tmp_path).open_index("alice", "history")
    assert index.count == len(good)
    assert "[10, 11, 12] are malformed" in caplog.text
    fill(source, 2, name="bob.history")
    source.rows["bob.history"].reverse()
    with pytest.raises(StoreError, match="rowid"):
        await memory(source, tmp_path).open_index("bob", "history")


async def test_malformed_rows_left_out_do_not_make_every_open_rebuild(tmp_path: Path) -> None:
    """Found in review: the saved index counted the rows it held, the table every row, so
    one malformed row made each later open rebuild the whole index (12 s at 100,000)."""
    source = MemorySource()
    fill(source, 20)
    source.rows[NAME][3] = (source.rows[NAME][3][0], T0, b"\x00")  # a blob of the wrong size
    async with memory(source, tmp_path) as mem:
        assert (await mem.open_index("alice", "history")).count == 19
        assert mem.last_sync("alice", "history").action == "rebuilt"  # type: ignore[union-attr]
    bad_later = np.full(DIM, np.nan, dtype="<f2").tobytes()
    source.rows[NAME].append((source.next_rowid, T0, bad_later))  # caught up, left out
    source.next_rowid += 1
    fill(source, 2)
    for expected in ("caught_up", "loaded", "loaded"):
        read_before = source.rows_read
        async with memory(source, tmp_path) as mem:
            index = await mem.open_index("alice", "history")
            assert index.count + index.pending == 21  # in the graph, or staged for it
            assert mem.last_sync("alice", "history").action == expected  # type: ignore[union-attr]
        assert source.rows_read - read_before <= 3  # the new rows at most, never all of them


async def test_a_malformed_last_row_does_not_make_every_open_rebuild(tmp_path: Path) -> None:
    """The stamp counted a malformed row beyond the last row the index holds (its
    ``last_rowid``), and the next open read that row again after it: one row too many, so
    every open rebuilt the whole index, whether the row was read or staged by a commit."""
    source = MemorySource()
    fill(source, 20)
    nan = np.full(DIM, np.nan, dtype="<f2").tobytes()
    source.rows[NAME].append((source.next_rowid, T0, nan))
    source.next_rowid += 1
    async with memory(source, tmp_path) as mem:
        await mem.open_index("alice", "history")
        bad = (source.next_rowid, T0, nan)  # and one more, committed while it is open
        source.rows[NAME].append(bad)
        source.next_rowid += 1
        assert mem.stage("alice", "history", [bad]) == 0
    for _ in range(2):
        read_before = source.rows_read
        async with memory(source, tmp_path) as mem:
            index = await mem.open_index("alice", "history")
            assert mem.last_sync("alice", "history") == vectors.SyncReport("caught_up", 2)
            assert (index.count, index.skipped) == (20, 2)
        assert source.rows_read - read_before == 2  # the two left out, never all of them


async def test_a_row_committed_while_its_index_is_being_opened_is_found(tmp_path: Path) -> None:
    # opening awaits after its last read of the table (inserting, saving): a batch committed
    # then is handed to the memory (`stage`), which must keep it for the index being opened
    source = MemorySource()
    fill(source, 300)
    mem: VectorMemory

    async def offload(func: Callable[..., T], /, *args: Any) -> T:
        if func is _save_or_warn:  # after the last read: a batch commits meanwhile
            mem.stage("alice", "history", source.insert(NAME, ["zebra piano"], [T0 + 1]))
        return func(*args)

    mem = VectorMemory(source, tmp_path, EMBEDDER, batch=128, offload=offload)
    index = await mem.open_index("alice", "history")
    assert index.count + index.pending == 301
    hits = index.search(EMBEDDER.embed(["zebra piano"])[0], k=1)
    assert [hit.rowid for hit in hits] == [source.rows[NAME][-1][0]]


def test_index_names_are_validated() -> None:
    assert index_name("alice", "history") == "alice.history"
    with pytest.raises(ValidationError):
        index_name("alice.history", "x")


# -- search ------------------------------------------------------------------------------------


def small_index(tmp_path: Path, n: int = 600) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    """An f16 index (stores the f16 vectors exactly) with timestamps one minute apart."""
    source = MemorySource()
    fill(source, n)
    rowids, ts, vecs = decode_rows(source.rows[NAME], DIM)
    index = VectorIndex(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM, dtype="f16")
    index.add(rowids, ts, vecs)
    return index, ts, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def exact(
    vecs: np.ndarray, ts: np.ndarray, query: np.ndarray, k: int, lo: int, hi: int
) -> list[int]:
    distances = 1.0 - vecs @ (query / np.linalg.norm(query))
    inside = np.flatnonzero((ts >= lo) & (ts < hi))
    best = inside[np.lexsort((inside, distances[inside]))][:k]
    return [int(i) + 1 for i in best]  # rowids start at 1


WINDOWS = [
    (0, 10**15),
    (T0, T0 + 60_000 * 9),
    (T0 + 60_000 * 100, T0 + 60_000 * 400),
    (T0 + 1, T0 + 59_999),
]


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_small_windows_are_exact(tmp_path: Path, since: int, until: int) -> None:
    index, ts, vecs = small_index(tmp_path)
    for query in EMBEDDER.embed(QUERIES):
        hits = index.search(query, k=10, since_ms=since, until_ms=until)
        assert [h.rowid for h in hits] == exact(vecs, ts, query, 10, since, until)
        assert all(since <= h.ts_ms < until for h in hits)


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_large_windows_use_the_graph_and_stay_in_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: int, until: int
) -> None:
    monkeypatch.setattr(vectors, "EXACT_WINDOW_LIMIT", 0)  # force the graph path on small data
    index, ts, vecs = small_index(tmp_path)
    for query in EMBEDDER.embed(QUERIES):
        hits = index.search(query, k=10, since_ms=since, until_ms=until)
        want = exact(vecs, ts, query, 10, since, until)
        assert all(since <= h.ts_ms < until for h in hits)
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        assert len(hits) == len(want)
        assert len({h.rowid for h in hits} & set(want)) >= 0.8 * len(want)


def test_one_sided_windows(tmp_path: Path) -> None:
    index, ts, vecs = small_index(tmp_path)
    query = EMBEDDER.embed(QUERIES[:1])[0]
    late = index.search(query, k=5, since_ms=T0 + 60_000 * 590)
    early = index.search(query, k=5, until_ms=T0 + 60_000 * 2)
    assert [h.rowid for h in late] == exact(vecs, ts, query, 5, T0 + 60_000 * 590, 10**15)
    assert sorted(h.rowid for h in early) == [
        1,
        2,
    ]  # half-open: the event at exactly `until` is outside


def test_unwindowed_search_finds_an_exact_copy_first(tmp_path: Path) -> None:
    index, _, vecs = small_index(tmp_path)
    hits = index.search(vecs[123], k=3)
    assert hits[0].rowid == 124
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_empty_index_and_empty_window(tmp_path: Path) -> None:
    query = EMBEDDER.embed(["anything"])[0]
    empty = VectorIndex(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM)
    assert empty.search(query) == []
    assert empty.search(query, since_ms=0, until_ms=T0) == []
    index, _, _ = small_index(tmp_path)
    assert index.search(query, since_ms=T0 - 10, until_ms=T0 - 1) == []


def test_a_huge_k_returns_every_hit_of_the_window(tmp_path: Path) -> None:
    """A k of 10**400 with a window the graph answers overflowed a float (found in review)."""
    index, _, _ = small_index(tmp_path, n=vectors.EXACT_WINDOW_LIMIT + 500)
    inside = index.search(np.ones(DIM), k=10**400, since_ms=T0, until_ms=T0 + 10**12)
    assert len(inside) == index.count


def test_bad_queries_are_refused(tmp_path: Path) -> None:
    index, _, _ = small_index(tmp_path, n=5)
    for bad in (np.zeros(DIM), np.full(DIM, np.nan), np.ones(DIM + 1)):
        with pytest.raises(ValidationError):
            index.search(bad)
    with pytest.raises(ValidationError):
        index.search(np.ones(DIM), k=0)


def test_quantised_index_saves_and_reopens(tmp_path: Path) -> None:
    """The default i8 index: reopened from its file, it answers as before."""
    source = MemorySource()
    fill(source, 400)
    index = VectorIndex(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM)
    index.add_rows(source.rows[NAME])
    index.save()
    again = VectorIndex.open(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM)
    assert again.problem is None
    for query in EMBEDDER.embed(QUERIES):
        assert again.search(query, k=5, since_ms=T0) == index.search(query, k=5, since_ms=T0)


def test_bench_reports_every_figure_on_small_data() -> None:
    figures = bench_vectors(n=2000, dim=64, seed=1)
    assert figures["recall_at_10"] >= 0.9
    assert figures["vector_bytes_per_item"] < 64 * 4 * 2  # i8 vectors plus graph, under f32
    assert figures["vector_speedup"] == pytest.approx(
        figures["vector_qps"] / figures["numpy_bruteforce_qps"]
    )
    assert {"index_build_s", "index_load_s"} <= figures.keys()


def test_add_skips_the_rows_it_holds_wherever_they_fall(tmp_path: Path) -> None:
    """New rows usually come after the last one held; a batch may also repeat old rows or fill
    a hole among them (a rescan), and only the rows not held yet are added."""
    rng = np.random.default_rng(3)
    index = vectors.VectorIndex(tmp_path, "bench.history", embedder="test", dim=8)
    assert index.add([2, 4, 6], [1, 2, 3], rng.standard_normal((3, 8))) == 3
    assert index.add([7, 8], [4, 5], rng.standard_normal((2, 8))) == 2  # beyond the last
    assert index.add([4, 5, 8, 9, 9], [2, 9, 5, 6, 6], rng.standard_normal((5, 8))) == 2
    assert index.count == 7
    assert index.add([2, 4, 5, 6, 7, 8, 9], [0] * 7, rng.standard_normal((7, 8))) == 0


# -- staging: searchable at once, in the graph later -------------------------------------------


def staged_index(tmp_path: Path, n: int, in_graph: int) -> VectorIndex:
    """An f16 index over ``n`` rows: the first ``in_graph`` in its graph, the rest staged."""
    source = MemorySource()
    fill(source, n)
    rowids, ts, vecs = decode_rows(source.rows[NAME], DIM)
    index = VectorIndex(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM, dtype="f16")
    index.add(rowids[:in_graph], ts[:in_graph], vecs[:in_graph])
    for start in range(in_graph, n, 50):  # staged as the flusher stages: batch by batch
        end = min(start + 50, n)
        assert index.stage(rowids[start:end], ts[start:end], vecs[start:end]) == end - start
    return index


@pytest.mark.parametrize(("since", "until"), WINDOWS)
def test_staged_vectors_are_found_as_if_they_were_in_the_graph(
    tmp_path: Path, since: int, until: int
) -> None:
    index = staged_index(tmp_path / "a", 600, 200)
    whole, ts, vecs = small_index(tmp_path / "b")
    assert (index.count, index.pending) == (200, 400)
    for query in EMBEDDER.embed(QUERIES):
        want = exact(vecs, ts, query, 10, since, until)
        hits = index.search(query, k=10, since_ms=since, until_ms=until)
        assert [h.rowid for h in hits] == want
        assert [h.rowid for h in whole.search(query, k=10, since_ms=since, until_ms=until)] == want
        assert all(since <= h.ts_ms < until for h in hits)


def test_absorb_moves_staged_vectors_into_the_graph_oldest_first(tmp_path: Path) -> None:
    index = staged_index(tmp_path, 300, 0)
    query = EMBEDDER.embed(QUERIES[:1])[0]
    before = index.search(query, k=10, since_ms=T0)
    assert index.absorb(64) == 64
    assert (index.count, index.pending, index.last_rowid) == (64, 236, 64)
    assert index.search(query, k=10, since_ms=T0) == before
    assert index.absorb() == 236
    assert (index.count, index.pending, index.absorb()) == (300, 0, 0)
    assert index.search(query, k=10, since_ms=T0) == before


def test_stage_skips_rows_in_the_graph_or_staged_already(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    index = VectorIndex(tmp_path, "bench.history", embedder="test", dim=8)
    index.add([1, 2, 3], [1, 2, 3], rng.standard_normal((3, 8)))
    assert index.stage([3, 4, 5], [3, 4, 5], rng.standard_normal((3, 8))) == 2
    assert index.stage([2, 5, 6, 6], [2, 5, 6, 6], rng.standard_normal((4, 8))) == 1
    assert (index.count, index.pending) == (3, 3)
    with pytest.raises(ValidationError):
        index.stage([7], [7], np.zeros((1, 8)))
    assert index.pending == 3  # a refused batch stages nothing


async def test_a_save_holds_the_graph_and_the_next_open_catches_up_the_rest(
    tmp_path: Path,
) -> None:
    """An index's files hold its graph, not what is staged: staged rows are in the table,
    beyond the stamp, and the next open catches them up (a crash loses none of them)."""
    source = MemorySource()
    fill(source, 100)
    mem = memory(source, tmp_path)
    index = await mem.open_index("alice", "history")
    new = source.insert(NAME, ["the green mug is on shelf two"] * 3, [T0 + 1, T0 + 2, T0 + 3])
    assert mem.stage("alice", "history", new) == 3
    assert mem.stage("bob", "history", new) == 0  # not open: caught up when opened
    assert mem.pending == 3
    assert mem.absorb(2) == 2
    assert index.save().count == 102  # then the robot dies: no close
    async with memory(source, tmp_path) as again:
        index = await again.open_index("alice", "history")
        assert again.last_sync("alice", "history") == vectors.SyncReport("caught_up", 1)
        assert (index.count, index.pending) == (102, 1)
        assert index.search(EMBEDDER.embed(["green mug on shelf two"])[0], k=1)[0].rowid in {
            row[0] for row in new
        }
    async with memory(source, tmp_path) as closed_properly:  # a close inserts, then saves
        index = await closed_properly.open_index("alice", "history")
        assert closed_properly.last_sync("alice", "history") == vectors.SyncReport("loaded", 0)
        assert (index.count, index.pending) == (103, 0)


async def test_a_catch_up_far_behind_inserts_before_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging is for the few rows committed since the last save; an index further behind
    inserts them (on the worker thread), so nothing unbounded sits in the exact scan."""
    source, _ = await built(tmp_path)
    fill(source, 40, seed=9)
    monkeypatch.setattr(vectors, "STAGE_CATCH_UP", 39)
    async with memory(source, tmp_path) as mem:
        index = await mem.open_index("alice", "history")
        assert mem.last_sync("alice", "history") == vectors.SyncReport("caught_up", 40)
        assert (index.count, index.pending) == (340, 0)


def test_staged_ties_go_to_the_lower_rowid_and_windows_hold(tmp_path: Path) -> None:
    """Duplicate texts give equal distances: the k best are the lowest rowids among them."""
    index = VectorIndex(tmp_path, NAME, embedder=EMBEDDER.name, dim=DIM, dtype="f16")
    same = np.repeat(EMBEDDER.embed(["the green mug"]), 30, axis=0)
    other = EMBEDDER.embed(synthetic_event_texts(30, seed=4))
    rows = np.concatenate((other[:15], same, other[15:]))
    order = np.random.default_rng(2).permutation(60)  # staged in a shuffled rowid order
    index.stage(order + 1, T0 + order, rows[order])
    query = same[0]
    assert [h.rowid for h in index.search(query, k=5)] == [16, 17, 18, 19, 20]
    window = index.search(query, k=5, since_ms=T0 + 40)
    assert [h.rowid for h in window] == [41, 42, 43, 44, 45]
    assert index.search(query, k=5, since_ms=T0 + 100) == []


@pytest.mark.parametrize("scale", [1e-23, 1e30])
def test_a_query_of_any_length_finds_what_its_direction_finds(tmp_path: Path, scale: float) -> None:
    """Cosine ignores a query's length, and so must every path: normed in float32, a query
    scaled by 1e-23 squared to 0 (no staged hit at all) and one by 1e30 overflowed (every
    distance 0), while the graph answered them as the unit query (found in review)."""
    index = staged_index(tmp_path, 600, 200)  # graph, staged, and windows searched exactly
    for query in EMBEDDER.embed(QUERIES):
        for since in (None, T0 + 60_000 * 100):
            want = index.search(query, k=10, since_ms=since)
            hits = index.search(query * scale, k=10, since_ms=since)
            assert [h.rowid for h in hits] == [h.rowid for h in want]
            assert np.allclose([h.distance for h in hits], [h.distance for h in want], atol=1e-6)
