"""The ``hearth`` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hearthsync.errors import HearthError
from hearthsync.peer import Peer

app = typer.Typer(
    help="hearthsync: the shared memory of a household's robots.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks against same-run baselines.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


@app.command()
def demo() -> None:
    """Write a few days of a household into a temporary robot, reopen it, show what it knows."""
    from hearthsync.demo import run_demo

    asyncio.run(run_demo(console=console))


@app.command()
def status(path: Annotated[Path, typer.Argument(help="the peer's folder")]) -> None:
    """Documents, sizes and counts of the peer stored in PATH."""
    if not (path / "hearth.db").exists():
        raise typer.BadParameter(f"no hearthsync peer in {path}", param_hint="PATH")
    asyncio.run(_status(path))


async def _status(path: Path) -> None:
    async with Peer.open(path) as peer:
        status = await peer.status()
    console.print(f"[bold]{status.device}[/bold] ({status.device_id}) at {status.path}")
    console.print(f"users: {', '.join(status.users) or '-'}; file {status.file_bytes:,} bytes")
    table = Table("document", "scope", "records", "snapshot B", "log entries", "log B")
    for doc in status.documents:
        table.add_row(
            doc.doc_id,
            doc.scope,
            str(doc.records),
            str(doc.snapshot_bytes),
            str(doc.log_entries),
            str(doc.log_bytes),
        )
    console.print(table)
    for name, count in sorted(status.vectors.items()):
        console.print(f"vector index {name}: {count} embeddings")
    for doc_id, reason in status.corrupt.items():
        console.print(f"[red]corrupt[/red] {doc_id}: {reason}")


@bench_app.command("local")
def bench_local(
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    quick: Annotated[bool, typer.Option(help="smaller sizes, for a smoke run")] = False,
) -> None:
    """One robot: durable writes, reopen, vector recall, compaction."""
    from hearthsync.bench.local import run_local

    figures = asyncio.run(run_local(console=console, quick=quick))
    if json_file:
        json_file.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {json_file}")


def main() -> None:
    try:
        app()
    except HearthError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from None
