"""``hearth bench sync --quick``: every figure is there, measured, and the ratios add up."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from hearthsync.bench.sync import TARGETS, run_sync

KEYS = {
    "catchup_10k_s",
    "catchup_10k_pycrdt_websocket_s",
    "catchup_vs_pycrdt_websocket",
    "live_edits_per_s",
    "live_pycrdt_websocket_edits_per_s",
    "live_vs_pycrdt_websocket",
    "live_update_p99_ms",
    "wire_bytes_per_edit",
    "wire_bytes_per_edit_pycrdt_websocket",
    "idle_bytes_per_doc_per_min",
    "converge_8_peers_s",
}


@pytest.mark.slow
async def test_quick_run_reports_every_figure() -> None:
    console = Console(record=True, width=120)
    figures = await run_sync(console=console, quick=True)

    assert set(figures) >= KEYS
    assert set(TARGETS) <= set(figures)
    for key, value in figures.items():
        assert math.isfinite(value), key
        assert value > 0, key
    assert figures["catchup_vs_pycrdt_websocket"] == pytest.approx(
        figures["catchup_10k_s"] / figures["catchup_10k_pycrdt_websocket_s"]
    )
    assert figures["live_vs_pycrdt_websocket"] == pytest.approx(
        figures["live_edits_per_s"] / figures["live_pycrdt_websocket_edits_per_s"]
    )
    assert "hearth bench sync" in console.export_text()
