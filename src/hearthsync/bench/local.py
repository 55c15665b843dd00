"""``hearth bench local``: one robot's memory, durable and fast.

Figures (the keys of ``--json``), each with its same-run baseline:

* ``write_durable_per_s``: acknowledged preference/event writes per second from concurrent
  writers, each durable before its acknowledgement; against ``sqlite_batched_insert_per_s``,
  raw ``sqlite3`` inserting 200-byte rows 1,000 per commit with the same pragmas.
  ``index_catchup_s``: how long the HNSW graph then takes to insert the events' vectors
  (searchable exactly meanwhile), once the writers stop.
* ``write_floor_per_s`` (and ``write_floor_vs_sqlite``): the same writes with nothing durable,
  nothing asynchronous and nothing embedded: each stamped, validated, encoded and applied to a
  pycrdt document in transactions of 256, as the store does.  No peer writes faster than this
  in one Python thread, so ``write_floor_vs_sqlite`` is as high as ``write_vs_sqlite`` can go.
* ``recall_under_load_max_ms`` (and ``_p50_ms``): recall latency while 64 writers record
  events, one recall every 0.1 s; ``recall_under_load_vs_idle``: that maximum over the median
  recall of the same peer once idle (``recall_idle_p50_ms``).
* ``reopen_year_s``: reopening a year of a household (4 users, 100,000 events, 2,000
  preferences, 5,000 spatial annotations) until every document is loaded and recall answers.
* ``recall_at_10``, ``vector_speedup``, ``vector_bytes_per_item``: the vector memory against
  exact numpy search (see `hearthsync.store.vectors.bench_vectors`).
* ``store_bytes_after_compaction_ratio``: file size after 100,000 overwrites of 1,000 keys and
  a compaction, over the size of the documents' encoded state.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal

import pycrdt
from rich.console import Console

from hearthsync.bench import print_figures
from hearthsync.crdt.handles import SEP, _open_transaction
from hearthsync.hlc import HybridClock
from hearthsync.model.records import Condition, ContextSnapshot, InteractionEvent, Preference
from hearthsync.peer import NOWHERE, Peer
from hearthsync.store.documents import CHANGES_PER_TRANSACTION
from hearthsync.store.vectors import bench_vectors

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
DAY_MS = 86_400_000
USERS = ("alice", "bob", "charlie", "dana")
WORDS = [
    "coffee",
    "tea",
    "oat",
    "milk",
    "latte",
    "cortado",
    "mug",
    "green",
    "blue",
    "shelf",
    "kitchen",
    "lights",
    "music",
    "vacuum",
    "quiet",
    "morning",
    "evening",
    "night",
    "medication",
    "reminder",
    "walk",
    "door",
    "window",
    "blinds",
    "warm",
    "cool",
    "sofa",
    "book",
    "dinner",
    "breakfast",
    "lunch",
    "towel",
    "laundry",
    "plant",
    "water",
    "garden",
    "news",
    "weather",
    "alarm",
]


def sqlite_baseline(folder: Path, rows: int = 200_000) -> float:
    """Raw sqlite3: 200-byte rows, 1,000 per commit, WAL + synchronous=FULL like the store."""
    conn = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    payload = os.urandom(200)
    started = time.perf_counter()
    for _ in range(rows // 1000):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(payload,)] * 1000)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed


async def durable_writes(folder: Path, writes: int, writers: int = 256) -> dict[str, float]:
    """Concurrent writers, each awaiting every write's durability before the next."""
    async with Peer.open(folder / "writes", device="bench") as peer:
        for user in USERS:
            await peer.add_user(user, name=user.title())
        per_writer = writes // writers

        async def prefs(n: int) -> None:
            rnd = random.Random(n)
            for i in range(per_writer):
                user = USERS[i % len(USERS)]
                await peer.set_preference(user, f"bench/k{rnd.randrange(500)}", i)

        # the texts are made before the clock starts, as the sqlite baseline makes its payload:
        # drawing them was a tenth of the events' time, which measured `random`, not the peer
        texts = [
            [" ".join(rnd.choices(WORDS, k=6)) for _ in range(per_writer)]
            for rnd in map(random.Random, range(writers))
        ]

        async def events(n: int) -> None:
            for i, text in enumerate(texts[n]):
                await peer.record_event(
                    USERS[i % 4], "OBSERVATION", "bench", text=text, ts=START_MS + i * 1000
                )

        figures: dict[str, float] = {}
        for name, work in (("prefs", prefs), ("events", events)):
            started = time.perf_counter()
            await asyncio.gather(*(work(n) for n in range(writers)))
            figures[f"write_{name}_per_s"] = per_writer * writers / (time.perf_counter() - started)
        # the events' vectors were searchable at once; how long the graph takes them after
        started = time.perf_counter()
        if peer._indexer is not None:
            await peer._indexer
        catchup_s = time.perf_counter() - started
    figures["write_durable_per_s"] = 2 / sum(1 / v for v in figures.values())  # harmonic mean
    figures["index_catchup_s"] = catchup_s
    return figures


def write_floor(writes: int, writers: int = 256) -> dict[str, float]:
    """The writes of `durable_writes` with everything but the model and the CRDT taken away:
    stamped by a hybrid clock, validated by the records' own checks, encoded as the documents
    store them and applied in pycrdt transactions of `CHANGES_PER_TRANSACTION` (one delta
    each), in one thread, with no store, no event loop, no embedding and no vector index.
    An upper bound on what `durable_writes` can reach on this machine in this run."""
    per_writer = writes // writers
    clock = HybridClock("bench", lambda: int(time.time() * 1000))
    deltas: list[bytes] = []

    def applied(doc: pycrdt.Doc[Any], items: list[tuple[str, str]], kind: str) -> None:
        # the handles' own fast path (`hearthsync.crdt.handles`): one Yrs insert per item
        prefs, events = doc.get("prefs", type=pycrdt.Map), doc.get("events", type=pycrdt.Array)
        for start in range(0, len(items), CHANGES_PER_TRANSACTION):
            with doc.transaction():
                txn = _open_transaction(prefs)
                for slot, record in items[start : start + CHANGES_PER_TRANSACTION]:
                    if kind == "prefs":
                        prefs.integrated.insert(txn, slot, record)
                    else:
                        events.integrated.insert(txn, events.integrated.len(txn), record)

    def prefs() -> None:
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        doc.observe(lambda event: deltas.append(event.update))
        items: list[tuple[str, str]] = []
        for n in range(writers):
            rnd = random.Random(n)
            for i in range(per_writer):
                pref = Preference.build(
                    user=USERS[i % len(USERS)], key=f"bench/k{rnd.randrange(500)}", value=i,
                    set_at=clock.now_text(), device="bench",
                )  # fmt: skip
                slot = f"{pref.user}/{pref.key}#{SEP}bench"
                items.append((slot, pref.encode(without=frozenset({"user", "key", "device"}))))
                if len(items) == CHANGES_PER_TRANSACTION:
                    applied(doc, items, "prefs")
                    items = []
        applied(doc, items, "prefs")

    texts = [
        [" ".join(rnd.choices(WORDS, k=6)) for _ in range(per_writer)]
        for rnd in map(random.Random, range(writers))
    ]
    ids = random.Random(0)

    def events() -> None:
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        doc.observe(lambda event: deltas.append(event.update))
        items: list[tuple[str, str]] = []
        for n in range(writers):
            for i, text in enumerate(texts[n]):
                ts = START_MS + i * 1000
                event = InteractionEvent.build(
                    id=f"ev-{ts:012x}{ids.getrandbits(80):020x}", user=USERS[i % 4],
                    type="OBSERVATION", domain="bench", text=text, context=NOWHERE, ts=ts,
                    hlc=clock.now_text(), device="bench",
                )  # fmt: skip
                items.append(("", event.encode(without=frozenset({"user"}))))
                if len(items) == CHANGES_PER_TRANSACTION:
                    applied(doc, items, "events")
                    items = []
        applied(doc, items, "events")

    figures: dict[str, float] = {}
    for name, work in (("prefs", prefs), ("events", events)):
        started = time.perf_counter()
        work()
        elapsed = time.perf_counter() - started
        figures[f"write_floor_{name}_per_s"] = per_writer * writers / elapsed
    if not deltas:  # pragma: no cover - the observer is what proves the CRDT did the work
        raise RuntimeError("the floor's documents yielded no delta")
    figures["write_floor_per_s"] = 2 / sum(1 / v for v in figures.values())  # harmonic mean
    return figures


async def recall_under_load(
    folder: Path, seconds: float = 3.0, writers: int = 64
) -> dict[str, float]:
    """Recall latency while ``writers`` record events as fast as they can, one recall every
    0.1 s; against the same recall once the writers stopped and the graph caught up."""
    async with Peer.open(folder / "recall", device="bench") as peer:
        await peer.add_user("alice", name="Alice")
        stop = time.perf_counter() + seconds

        async def write(n: int) -> None:
            rnd = random.Random(n)
            while time.perf_counter() < stop:
                text = " ".join(rnd.choices(WORDS, k=6))
                await peer.record_event("alice", "OBSERVATION", "bench", text=text)

        async def recall(latencies: list[float]) -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                await peer.recall("alice", "the green mug on the shelf", k=10)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)

        loaded: list[float] = []
        await asyncio.gather(recall(loaded), *(write(n) for n in range(writers)))
        if peer._indexer is not None:
            await peer._indexer
        idle = []
        for _ in range(20):
            started = time.perf_counter()
            await peer.recall("alice", "the green mug on the shelf", k=10)
            idle.append(time.perf_counter() - started)
    loaded.sort()
    idle.sort()
    return {
        "recall_under_load_max_ms": loaded[-1] * 1000,
        "recall_under_load_p50_ms": loaded[len(loaded) // 2] * 1000,
        "recall_idle_p50_ms": idle[len(idle) // 2] * 1000,
        "recall_under_load_vs_idle": loaded[-1] / idle[len(idle) // 2],
    }


async def build_year(path: Path, events: int, prefs: int, spatial: int) -> None:
    """A year of one household, written through the public API, then compacted."""
    rnd = random.Random(7)
    async with Peer.open(path, device="year", synchronous="NORMAL") as peer:
        for user in USERS:
            await peer.add_user(user, name=user.title())
        pending: list[Awaitable[object]] = []
        for i in range(events):
            text = " ".join(rnd.choices(WORDS, k=8))
            ts = START_MS + int(i * (365 * DAY_MS / events))
            context = ContextSnapshot(location=rnd.choice(("kitchen", "hall", "office")))
            pending.append(
                peer.record_event(
                    USERS[i % 4],
                    rnd.choice(("COMMAND", "OBSERVATION")),
                    "daily",
                    text=text,
                    context=context,
                    ts=ts,
                )
            )
            if len(pending) >= 2_000:
                await asyncio.gather(*pending)
                pending = []
        for i in range(prefs):
            days: Literal["weekday", "weekend"] | None = rnd.choice((None, "weekday", "weekend"))
            pending.append(
                peer.set_preference(
                    USERS[i % 4],
                    f"domain{i % 20}/key{i // 20}",
                    rnd.choice(WORDS),
                    condition=Condition(days=days),
                )
            )
        for i in range(spatial):
            pending.append(
                peer.place(
                    f"object-{i % 1500}", f"Object {i % 1500}", region=f"region-{rnd.randrange(40)}"
                )
            )
        await asyncio.gather(*pending)
        await peer.compact()


async def reopen(path: Path) -> float:
    started = time.perf_counter()
    async with Peer.open(path) as peer:
        hits = await peer.recall("alice", "coffee in the green mug", k=10)
        elapsed = time.perf_counter() - started
        assert hits, "the reopened store recalled nothing"
    return elapsed


async def compaction_ratio(folder: Path, overwrites: int, keys: int) -> float:
    async with Peer.open(folder / "compaction", device="bench") as peer:
        await peer.add_user("alice", name="Alice")
        pending = []
        for i in range(overwrites):
            pending.append(peer.set_preference("alice", f"k/{i % keys}", i % 97))
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        await peer.compact()
        state = sum(len(r.encode_state()) for r in peer._docs.replicas.values())
    files = [folder / "compaction" / name for name in ("hearth.db", "hearth.db-wal")]
    size = sum(f.stat().st_size for f in files if f.exists())
    return size / state


async def run_local(console: Console | None = None, *, quick: bool = False) -> dict[str, float]:
    console = console or Console()
    scale = 10 if quick else 1
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmp:
        folder = Path(tmp)
        with console.status("raw sqlite3 baseline"):
            figures["sqlite_batched_insert_per_s"] = sqlite_baseline(folder, 200_000 // scale)
        with console.status("durable writes, 256 concurrent writers"):
            figures.update(await durable_writes(folder, 51_200 // scale))
        figures["write_vs_sqlite"] = (
            figures["write_durable_per_s"] / figures["sqlite_batched_insert_per_s"]
        )
        with console.status("the same writes with nothing durable (the ceiling)"):
            figures.update(write_floor(51_200 // scale))
        figures["write_floor_vs_sqlite"] = (
            figures["write_floor_per_s"] / figures["sqlite_batched_insert_per_s"]
        )
        with console.status("recall while 64 writers record events"):
            figures.update(await recall_under_load(folder, 3.0 / scale))
        with console.status("building a year of a household (the vector index takes a while)"):
            started = time.perf_counter()
            await build_year(folder / "year", 100_000 // scale, 2_000 // scale, 5_000 // scale)
            figures["build_year_s"] = time.perf_counter() - started
        with console.status("reopening the year"):
            await reopen(folder / "year")  # first open after build may catch the index up
            figures["reopen_year_s"] = min([await reopen(folder / "year") for _ in range(3)])
        with console.status("compaction"):
            figures["store_bytes_after_compaction_ratio"] = await compaction_ratio(
                folder, 100_000 // scale, 1_000 // scale
            )
    with console.status("vector memory against numpy brute force"):
        figures.update(bench_vectors(n=100_000 // scale))
    _print(console, figures)
    return figures


TARGETS = {
    "write_vs_sqlite": (">=", 0.2),
    "reopen_year_s": ("<=", 0.5),
    "recall_at_10": (">=", 0.95),
    "vector_speedup": (">=", 20.0),
    "vector_bytes_per_item": ("<=", 600.0),
    "store_bytes_after_compaction_ratio": ("<=", 2.0),
}


def _print(console: Console, figures: dict[str, float]) -> None:
    print_figures(console, "hearth bench local", figures, TARGETS)
