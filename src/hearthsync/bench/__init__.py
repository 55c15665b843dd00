"""Benchmarks (``hearth bench SUITE``): every figure beside a baseline measured in the same run."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

Targets = dict[str, tuple[str, float]]


def print_figures(
    console: Console, title: str, figures: dict[str, float], targets: Targets
) -> None:
    """One table: each figure, its target if it has one, and whether this run met it."""
    table = Table("figure", "value", "target", "met", title=title)
    for key, value in sorted(figures.items()):
        target = targets.get(key)
        met = ""
        if target:
            op, bound = target
            ok = value >= bound if op == ">=" else value <= bound
            met = "[green]yes[/green]" if ok else "[red]no[/red]"
        table.add_row(key, f"{value:,.3f}", f"{target[0]} {target[1]}" if target else "", met)
    console.print(table)
