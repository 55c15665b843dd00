"""``hearth bench context``: get_context on a year of a household, in process and over HTTP.

Figures (the keys of ``--json``), on the store of `hearthsync.bench.local.build_year` (4 users,
100,000 events with embeddings, 2,000 preferences, 5,000 spatial annotations):

* ``context_p50_ms``, ``context_p99_ms``: `Peer.get_context` with a query (semantic recall over
  the user's events), in process, over many calls with varied users, tasks, places and
  queries.  Baseline ``recall_only_p99_ms``: `Peer.recall` alone for the same queries, in the
  same run (the vector search every query-bearing context pays for);
* ``context_http_p99_ms``: the same through the local HTTP API over a loopback socket (uvicorn
  and an httpx client in one process, so both ends' work counts);
* ``context_tokens_median``: the size of ``to_prompt()`` at the default budget (everything),
  by the documented estimate (`hearthsync.context.prompt.estimate_tokens`).

Every timing is measured after one call per user (the first recall of a user opens their
vector index from disk, and their latest month of events is decoded, once per process).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from hearthsync.api.server import api_token, serve_api
from hearthsync.bench import print_figures
from hearthsync.bench.local import USERS, WORDS, build_year
from hearthsync.context.prompt import estimate_tokens
from hearthsync.peer import Peer

TASKS = ("prepare_morning_beverage", "general_assistant", "companion_chat", "vacuum")
PLACES = (None, "kitchen", "hall", "office")


def _quantile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def _requests(count: int, seed: int = 11) -> list[dict[str, str | None]]:
    rnd = random.Random(seed)
    return [
        {
            "user": rnd.choice(USERS),
            "task": rnd.choice(TASKS),
            "location": rnd.choice(PLACES),
            "query": " ".join(rnd.choices(WORDS, k=3)),
        }
        for _ in range(count)
    ]


async def in_process(peer: Peer, calls: int) -> dict[str, float]:
    requests = _requests(calls)
    for user in USERS:  # opens each user's vector index (once per process)
        await peer.get_context(user, task="general_assistant", query="coffee")
    took: list[float] = []
    tokens: list[int] = []
    for request in requests:
        started = time.perf_counter()
        context = await peer.get_context(
            str(request["user"]), task=str(request["task"]), location=request["location"],
            query=request["query"],
        )  # fmt: skip
        took.append((time.perf_counter() - started) * 1000)
        tokens.append(estimate_tokens(context.to_prompt()))
    recall: list[float] = []
    for request in requests:
        started = time.perf_counter()
        await peer.recall(str(request["user"]), str(request["query"]), k=5)
        recall.append((time.perf_counter() - started) * 1000)
    return {
        "context_p50_ms": statistics.median(took),
        "context_p99_ms": _quantile(took, 99),
        "context_tokens_median": statistics.median(tokens),
        "recall_only_p99_ms": _quantile(recall, 99),
    }


async def over_http(peer: Peer, calls: int) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {api_token(peer.path)}"}
    async with serve_api(peer, "127.0.0.1", 0) as (host, port):
        client = httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False)
        async with client:
            took: list[float] = []
            for request in _requests(calls, seed=12):
                started = time.perf_counter()
                answer = await client.post("/context", json=request, headers=auth)
                took.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
    return {
        "context_http_p50_ms": statistics.median(took),
        "context_http_p99_ms": _quantile(took, 99),
    }


async def run_context(console: Console | None = None, *, quick: bool = False) -> dict[str, float]:
    console = console or Console()
    scale = 10 if quick else 1
    calls = 100 if quick else 1_000
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hearth-bench-context-") as tmp:
        path = Path(tmp) / "year"
        with console.status("building a year of a household (the vector index takes a while)"):
            await build_year(path, 100_000 // scale, 2_000 // scale, 5_000 // scale)
        async with Peer.open(path) as peer:
            with console.status(f"get_context with a query, {calls:,} calls in process"):
                figures.update(await in_process(peer, calls))
            with console.status(f"get_context over the HTTP API, {calls:,} calls"):
                figures.update(await over_http(peer, calls))
    print_figures(console, "hearth bench context", figures, TARGETS)
    return figures


TARGETS = {
    "context_p99_ms": ("<=", 3.0),
    "context_http_p99_ms": ("<=", 15.0),
}
