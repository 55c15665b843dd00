"""The ``hearth`` command."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hearthsync.errors import HearthError, StoreInUseError, ValidationError

# Each command imports what it runs (the peer, the API, the chaos harness) itself, so that
# `hearth --help` and a mistyped option answer without loading them (0.6 s here).

if TYPE_CHECKING:
    from hearthsync.api.schemas import Status

app = typer.Typer(
    help="hearthsync: the shared memory of a household's robots.", no_args_is_help=True
)
bench_app = typer.Typer(help="Benchmarks against same-run baselines.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
# What people named (a household, a robot, a user) and what peers sent is printed as text,
# never read as markup: "Flat 2[/b]" raised MarkupError in 'hearth init', 'hearth status' and
# 'hearth join', and "The Smiths [home]" lost its "[home]" (found in review).  Such values go
# through `escape` in a line with markup, `_cells` in a table, or a print with markup=False;
# no emoji codes either (":fire:" in a name stays as typed, with or without markup).
console = Console(emoji=False)
errors = Console(stderr=True, emoji=False)  #: ``error: ...`` lines (docs/reference/cli.md)


def _error(message: object) -> None:
    """``error: MESSAGE`` on stderr; the message (often quoting what the user typed) as text."""
    errors.print(f"[red]error:[/red] {escape(str(message))}")


def _cells(*values: object) -> list[Text]:
    """A table row of plain text: a table reads a str cell as markup."""
    return [Text(str(value)) for value in values]


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
    try:
        asyncio.run(_status(path))
    except StoreInUseError as in_use:  # a running robot holds it: ask it instead
        _status_of_running(path, in_use)


def _status_of_running(path: Path, in_use: StoreInUseError) -> None:
    """What the running robot of ``path`` says of itself through its API, then its links."""
    from hearthsync.api.client import running_robot
    from hearthsync.api.schemas import Status

    robot = running_robot(path)
    if robot is None or (in_use.pid is not None and robot.pid != in_use.pid):
        raise in_use  # held without an API (--no-api), or by a peer that is not 'hearth run'
    _print_status(path, Status.model_validate(robot.call("GET", "/status?detail=true")))
    _print_running(path)


async def _status(path: Path) -> None:
    from hearthsync.api.schemas import Status
    from hearthsync.peer import Peer

    async with Peer.open(path) as peer:
        status = Status.of(await peer.status())
    _print_status(path, status)
    _print_running(path)


def _print_status(path: Path, status: Status) -> None:
    """``status`` is a detailed status (``?detail=true``), from the store or the API."""
    console.print(
        f"[bold]{escape(status.device)}[/bold] ({escape(status.device_id)}) at {escape(str(path))}"
    )
    _print_membership(path)
    users = ", ".join(status.users) or "-"
    console.print(f"users: {users}; file {status.file_bytes:,} bytes", markup=False)
    table = Table("document", "scope", "records", "snapshot B", "log entries", "log B")
    for doc in status.sizes or []:
        table.add_row(*_cells(doc.doc_id, doc.scope, doc.records, doc.snapshot_bytes,
                              doc.log_entries, doc.log_bytes))  # fmt: skip
    console.print(table)
    for name, count in sorted((status.vectors or {}).items()):
        console.print(f"vector index {name}: {count} embeddings", markup=False)
    for doc_id, reason in status.corrupt.items():
        console.print(f"[red]corrupt[/red] {escape(doc_id)}: {escape(reason)}")


def _print_membership(path: Path) -> None:
    """The household this robot belongs to, as its credentials say: its role and scopes."""
    from hearthsync import enrolment

    state = enrolment.load(path)
    if state is None:
        console.print("in no household (hearth init, or hearth join)")
        return
    held = state.certificate
    scopes = ", ".join(s for s in held.scopes if s != "household")
    console.print(
        f"household {state.household.name!r}: this robot is {held.role}, reads {scopes or '-'}",
        markup=False, highlight=False,
    )  # fmt: skip


def _print_running(path: Path) -> None:
    """What a running ``hearth run`` of this folder reports: its peers, their lag."""
    from hearthsync.runner import RUN_FILE

    run_file = path / RUN_FILE
    if not run_file.exists():
        console.print("not running (no 'hearth run' for this folder)")
        return
    from hearthsync.api.client import running_pid

    running = json.loads(run_file.read_text())
    if running_pid(path) is None:  # killed (SIGKILL, a power cut): run.json outlived it
        console.print(
            f"not running ({RUN_FILE} was left by pid {running.get('pid')}, gone)", markup=False
        )
        return
    console.print(
        f"running as pid {running['pid']}, listening on {running['host']}:{running['port']}",
        markup=False,
    )
    if running.get("api"):
        api = running["api"]
        console.print(
            f"HTTP API on {api['host']}:{api['port']} (bearer token in {path}/api.token)",
            markup=False,
        )
    table = Table("peer", "bytes sent", "bytes received", "lag (unacknowledged documents)")
    household = running.get("household", {})
    for device, link in sorted(running["links"].items()):
        lag = link["unacknowledged_documents"]
        name = household.get(device, {}).get("name")  # as 'not linked' names them below
        peer = f"{name} ({device})" if name else device
        waiting = f"{len(lag)}" + (f": {', '.join(lag[:3])}" if lag else "")
        table.add_row(*_cells(peer, f"{link['sent']:,}", f"{link['received']:,}", waiting))
    console.print(table)
    for device, robot in sorted(household.items()):
        if robot["linked"]:
            continue
        when = robot["last_linked"]
        since = (
            f"last linked {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}"
            if when is not None
            else "not linked since this run started"
        )
        console.print(f"not linked: {robot['name']} ({device}), {since}", markup=False)


def _now() -> int:
    return int(time.time())


def _address(text: str) -> tuple[str, int]:
    from hearthsync.discovery import parse_peer

    peer = parse_peer(text)
    return peer.host, peer.port


def _listen(text: str) -> tuple[str, int]:
    """HOST:PORT to serve on; port 0 lets the system choose."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise typer.BadParameter(f"--listen wants HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="the new peer's folder")],
    household: Annotated[str, typer.Option(help="the household's name")],
    device: Annotated[str, typer.Option(help="this robot's name")],
) -> None:
    """Start a household with this robot as its owner."""
    from hearthsync import enrolment

    enrolment.check_new_robot(path, device, household)  # a refused init makes nothing

    async def go() -> None:
        from hearthsync.peer import Peer

        async with Peer.open(path, device=device) as peer:
            now = int(peer.wall())
            state = enrolment.create(path, peer.identity, household, device, now=now)
            console.print(
                f"household [bold]{escape(household)}[/bold] ({state.household.id}) created; "
                f"{escape(device)} ({peer.device_id}) is its owner"
            )

    asyncio.run(go())


@app.command()
def invite(
    path: Annotated[Path, typer.Argument(help="an owner or admin peer's folder")],
    scopes: Annotated[
        str, typer.Option(help="comma-separated scopes to grant")
    ] = "core,history,spatial",
    ttl: Annotated[
        str, typer.Option(help="how long the code works: 90s, 10m, 1h (at most 30d)")
    ] = "10m",
    address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT the new robot dials (default: where 'hearth run' listens)"),
    ] = None,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="the new robot is an admin: it invites members, and makes and grants the "
            "data keys of the people it adds (the owner only)",
        ),
    ] = False,
) -> None:
    """Print a one-time code (and its QR code) that enrols a new robot."""
    import io

    import segno

    from hearthsync import enrolment
    from hearthsync.runner import RUN_FILE

    ttl_s = _seconds(ttl, param_hint="--ttl", most=enrolment.MAX_INVITE_TTL_S)
    state = enrolment.load(path, _now())
    if state is None:
        raise typer.BadParameter(f"{path} belongs to no household", param_hint="PATH")
    from hearthsync.api.client import running_pid

    if address is not None:
        host, port = _address(address)
    elif (path / RUN_FILE).exists() and running_pid(path) is not None:
        running = json.loads((path / RUN_FILE).read_text())
        host, port = running["host"], int(running["port"])
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - listening everywhere: not dialable
            # where it is found on the LAN: the address mDNS advertises (`hearth run
            # --listen 0.0.0.0:7420`, as the README starts a robot, refused every invite)
            from hearthsync.discovery.service import default_addresses

            host = default_addresses()[0]
            console.print(
                f"the new robot will dial {host}:{port} (--address to choose another)",
                markup=False,
            )
    else:  # no run, or one killed without a goodbye: its address would answer nobody
        raise typer.BadParameter("give --address HOST:PORT, or start 'hearth run' first")
    made = enrolment.add_invite(
        path,
        state,
        host,
        port,
        scopes=tuple(s for s in scopes.split(",") if s),
        ttl_s=ttl_s,
        now=_now(),
        role="admin" if admin else "member",
    )
    qr = io.StringIO()
    segno.make(made.code, error="m").terminal(out=qr, compact=True)
    console.print(qr.getvalue(), markup=False, highlight=False)
    console.print(f"invite code (works once, for {escape(ttl)}): [bold]{escape(made.code)}[/bold]")
    print(f"CODE {made.code}", flush=True)


@app.command()
def join(
    path: Annotated[Path, typer.Argument(help="the new peer's folder")],
    code: Annotated[str, typer.Argument(help="the invite code")],
    device: Annotated[str, typer.Option(help="this robot's name")],
    peer: Annotated[str | None, typer.Option("--peer", help="HOST:PORT, if not the code's")] = None,
) -> None:
    """Enrol this robot in a household with an invite code.

    A failed join keeps only the key it sent (PATH/join.pending): retry with the same code.
    """
    from hearthsync import enrolment

    # refused before anything is made: a bad --device or --peer left a key and join.pending
    # in the folder, or removed the empty folder the user had made (found in review)
    enrolment.check_new_robot(path, device)
    address = _address(peer) if peer is not None else None

    async def go() -> tuple[enrolment.HouseholdState, str]:
        from hearthsync.peer import Peer

        async with Peer.open(path, device=device) as opened:
            state = await enrolment.join(
                path, opened.identity, code, device, now=int(opened.wall()), address=address
            )
            return state, opened.device_id

    # a mistyped code is refused before anything is made; a join that failed (the inviter
    # unreachable, its answer lost) leaves no half-made peer, only the key it sent, which a
    # retry with the same code sends again, and whatever was in the folder before
    with enrolment.pending_join(path, code):
        state, device_id = asyncio.run(go())
    # said once the join is done: a failure to say it (stdout on a full disk) undid the join
    # (found in review), and the code was spent on it
    console.print(
        f"{device} (device id {device_id}) joined household "
        f"{state.household.name} ({state.household.id})",
        markup=False,
    )


@app.command()
def revoke(
    path: Annotated[Path, typer.Argument(help="the household owner's folder")],
    device: Annotated[str, typer.Argument(help="the robot to revoke: its name or device id")],
) -> None:
    """Revoke a robot: it is refused from now on and can decrypt nothing written afterwards.

    While 'hearth run' is running for PATH, use its console's 'revoke DEVICE' instead, so the
    running peer gossips the list and grants the new keys at once.
    """
    from hearthsync import enrolment
    from hearthsync.api.client import running_pid

    _require_peer(path)
    if running_pid(path) is not None:
        raise typer.BadParameter(
            f"'hearth run' is running for {path}: type 'revoke {device}' at its console "
            "(hearth run --console), or stop it first",
            param_hint="PATH",
        )

    async def go() -> None:
        from hearthsync.peer import Peer

        async with Peer.open(path) as peer:
            state = peer.household
            if state is None:
                raise typer.BadParameter(f"{path} belongs to no household", param_hint="PATH")
            named = enrolment.device_named(state, device)
            epochs = enrolment.revoke(
                path, state, peer.identity, named, now=int(peer.wall()), users=peer.users()
            )
        scopes = ", ".join(f"{s} (epoch {e})" for s, e in sorted(epochs.items()))
        console.print(f"revoked {device} ({named}); new keys for {scopes}", markup=False)

    asyncio.run(go())


@app.command()
def forget(
    path: Annotated[Path, typer.Argument(help="the peer's folder")],
    user: Annotated[str, typer.Argument(help="the id of the user to forget")],
) -> None:
    """Forget a user: their documents, events, embeddings and data keys, on every robot.

    Leaves a signed tombstone in the household, which the other robots honour when they next
    sync; this robot's files hold nothing of the user once it returns.  A running robot (its
    'hearth run') is asked through its HTTP API.
    """
    _require_peer(path)

    async def offline() -> dict[str, Any]:
        from hearthsync.peer import Peer

        async with Peer.open(path) as peer:
            tombstone = await peer.forget(user)
        return {"user": user, "device_id": tombstone.device, "at": tombstone.at}

    done = _online_or_offline(path, "POST", "/forget", {"user": user}, offline)
    console.print(f"forgot {user}: tombstone signed by {done['device_id']}", markup=False)


@app.command()
def context(
    path: Annotated[Path, typer.Argument(help="the peer's folder")],
    user: Annotated[str, typer.Argument(help="whose context")],
    task: Annotated[str, typer.Option(help="what the robot is doing (the policy's task name)")],
    query: Annotated[str | None, typer.Option(help="recall events similar to this")] = None,
    location: Annotated[str | None, typer.Option(help="where (a region id)")] = None,
    present: Annotated[
        list[str] | None, typer.Option("--present", help="someone else present (repeatable)")
    ] = None,
    window: Annotated[str, typer.Option(help="recent events: this far back (7d, 12h)")] = "7d",
    max_tokens: Annotated[int | None, typer.Option(help="the prompt's budget")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON, not tables")] = False,
) -> None:
    """What the robot knows about USER before doing TASK: a table, or --json.

    The same context the reasoning layer gets from get_context: preferences resolved for now
    (with what was set aside and why), events, places, routines, and what the task's policy
    withholds.  A running robot is asked through its HTTP API.
    """
    _require_peer(path)
    body = {
        "user": user,
        "task": task,
        "query": query,
        "location": location,
        "present": present or [],
        "history_window": window,
        "max_tokens": max_tokens,
    }

    async def offline() -> dict[str, Any]:
        from hearthsync.peer import Peer

        async with Peer.open(path) as peer:
            found = await peer.get_context(
                user, task=task, query=query, location=location, present=present or [],
                history_window=window, max_tokens=max_tokens,
            )  # fmt: skip
        return {"context": found.to_dict(), "prompt": found.to_prompt()}

    reply = _online_or_offline(path, "POST", "/context", body, offline)
    if json_:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
        return
    from hearthsync.context.table import print_context

    print_context(console, reply)
    console.print("[bold]prompt[/bold]")
    console.print(reply["prompt"], markup=False, highlight=False)


@app.command()
def maintain(
    path: Annotated[Path, typer.Argument(help="the peer's folder")],
    lookback: Annotated[str, typer.Option(help="count feedback this far back")] = "90d",
) -> None:
    """The slow loop: fold confirmations, promote consistent corrections to stable, decay old
    confidence, flag drift.  A running robot is asked through its HTTP API."""
    _require_peer(path)

    async def offline() -> dict[str, Any]:
        from hearthsync.peer import Peer

        async with Peer.open(path) as peer:
            report = await peer.maintain(lookback=lookback)
        return {"changes": [change.line() for change in report.changes]}

    done = _online_or_offline(path, "POST", "/maintain", {"lookback": lookback}, offline)
    for line in done["changes"]:
        console.print(line, markup=False, highlight=False)
    console.print(f"{len(done['changes'])} changes")


def _require_peer(path: Path) -> None:
    if not (path / "hearth.db").exists():
        raise typer.BadParameter(f"no hearthsync peer in {path}", param_hint="PATH")


def _online_or_offline(
    path: Path,
    method: str,
    route: str,
    body: dict[str, Any],
    offline: Callable[[], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Ask the running robot of ``path`` through its API, else do it on the store (two
    processes must never hold one store: each would keep its own memory of it)."""
    from hearthsync.api.client import running_pid, running_robot

    try:
        robot = running_robot(path)
        if robot is not None:
            answer: dict[str, Any] = robot.call(method, route, body)
            return answer
        if running_pid(path) is not None:
            raise typer.BadParameter(
                f"'hearth run' is running for {path} without its HTTP API (--no-api): "
                "stop it, or run it with the API",
                param_hint="PATH",
            )
        return asyncio.run(offline())
    except HearthError as exc:
        _error(exc)
        raise typer.Exit(1) from None


@app.command()
def run(
    path: Annotated[Path, typer.Argument(help="the peer's folder")],
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve on (port 0: any)")
    ] = "0.0.0.0:7420",
    peer: Annotated[
        list[str] | None, typer.Option("--peer", help="HOST:PORT to dial (repeatable)")
    ] = None,
    mdns: Annotated[bool, typer.Option("--mdns/--no-mdns", help="find peers by mDNS")] = True,
    service_type: Annotated[str | None, typer.Option(help="mDNS service type (tests)")] = None,
    console_: Annotated[bool, typer.Option("--console", help="read commands on stdin")] = False,
    api: Annotated[
        str, typer.Option(help="HOST:PORT of the local HTTP API (loopback only; port 0: any)")
    ] = "127.0.0.1:7421",
    no_api: Annotated[bool, typer.Option("--no-api", help="do not serve the HTTP API")] = False,
) -> None:
    """Run this robot's peer until SIGINT/SIGTERM, syncing with its household."""
    _require_peer(path)
    from hearthsync.discovery import parse_peer
    from hearthsync.runner import run as run_peer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    static = [parse_peer(text) for text in peer or []]
    try:
        asyncio.run(run_peer(path, listen=_listen(listen), peers=static, mdns=mdns,
                             service_type=service_type, console=console_,
                             api=None if no_api else _listen(api)))  # fmt: skip
    except ValidationError as exc:
        hint = "--api" if exc.field == "api" else "PATH"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            # found by a user of the household tutorial: the hall's --listen was the port the
            # kitchen's HTTP API took by default, and this was a traceback
            why = (
                "the address is in use (by another robot's sync, or its HTTP API, which takes "
                "127.0.0.1:7421 unless given --api); choose another --listen port"
            )
        elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            why = f"{exc.strerror or exc} (not an address of this machine?)"
        else:
            raise
        _error(f"cannot listen on {listen} for sync: {why}")
        raise SystemExit(1) from None


def _seconds(text: str, *, param_hint: str, most: int) -> int:
    """A duration as a person types it (``90s``, ``10m``, ``1h``, ``2d``, or seconds), in
    seconds; refused unless longer than zero (an invite that has already expired is no use)
    and at most ``most`` seconds (a whole number of days)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (ValueError, IndexError):
        raise typer.BadParameter(
            f"not a duration: {text!r:.40} (try 90s, 10m, 1h)", param_hint=param_hint
        ) from None
    if seconds <= 0:
        raise typer.BadParameter(
            f"must be longer than zero, got {text!r} (try 90s, 10m, 1h)", param_hint=param_hint
        )
    if seconds > most:  # found in review: a huge one overflowed writing the invite, a traceback
        raise typer.BadParameter(
            f"must be at most {most // 86400}d ({most} seconds), got {text!r:.40}",
            param_hint=param_hint,
        )
    return seconds


@bench_app.command("local")
def bench_local(
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    quick: Annotated[bool, typer.Option(help="smaller sizes, for a smoke run")] = False,
) -> None:
    """One robot: durable writes, reopen, vector recall, compaction."""
    from hearthsync.bench.local import run_local

    figures = asyncio.run(run_local(console=console, quick=quick))
    _write_figures(json_file, figures)


@bench_app.command("sync")
def bench_sync(
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    quick: Annotated[bool, typer.Option(help="smaller sizes, for a smoke run")] = False,
) -> None:
    """Household sync on loopback, against pycrdt-websocket measured in the same run."""
    try:
        from hearthsync.bench.sync import run_sync
    except ModuleNotFoundError as missing:  # the baseline is no dependency of a robot
        if not (missing.name or "").startswith("pycrdt.websocket"):
            raise
        _error(
            "hearth bench sync measures pycrdt-websocket in the same run: "
            "pip install 'hearthsync[bench]'"
        )
        raise typer.Exit(1) from None

    figures = asyncio.run(run_sync(console=console, quick=quick))
    _write_figures(json_file, figures)


@bench_app.command("context")
def bench_context(
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    quick: Annotated[bool, typer.Option(help="smaller sizes, for a smoke run")] = False,
) -> None:
    """get_context on a year of a household: in process, over the HTTP API, prompt size."""
    from hearthsync.bench.context import run_context

    figures = asyncio.run(run_context(console=console, quick=quick))
    _write_figures(json_file, figures)


def _write_figures(json_file: Path | None, figures: dict[str, float]) -> None:
    """``--json FILE``: the figures as one flat JSON object."""
    if json_file:
        json_file.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {json_file}", markup=False)


@app.command()
def chaos(
    peers: Annotated[
        int | None, typer.Option(help="robots per schedule (default: 3 to 7, drawn per seed)")
    ] = None,
    schedules: Annotated[int, typer.Option(help="how many schedules (seeds) to run")] = 100,
    seed: Annotated[int, typer.Option(help="the first seed; schedule i runs seed + i")] = 0,
    duration: Annotated[
        float, typer.Option(help="simulated seconds of writes and faults before the heal")
    ] = 30.0,
    edits: Annotated[
        int | None,
        typer.Option(help="writes per robot, default 50 (--processes: in all, default 12)"),
    ] = None,
    faults: Annotated[
        str | None, typer.Option(help="comma-separated fault kinds to draw from (default: all)")
    ] = None,
    fault_rate: Annotated[
        float | None, typer.Option(help="faults started per simulated second, default 0.25")
    ] = None,
    scopes: Annotated[
        str | None,
        typer.Option(help="your household: each robot's scopes after the owner's, ';' between"),
    ] = None,
    mix: Annotated[
        str | None, typer.Option(help="weights of the writes, e.g. pref=3,event=1,move=1")
    ] = None,
    admin: Annotated[
        bool | None,
        typer.Option(
            "--admin/--no-admin",
            help="robot 1 is an admin, which makes and grants keys as the owner does "
            "(default: drawn per seed, half the schedules of 3 robots or more)",
        ),
    ] = None,
    processes: Annotated[
        bool, typer.Option("--processes", help="real 'hearth run' processes behind proxies")
    ] = False,
    netns: Annotated[
        bool,
        typer.Option(
            "--netns",
            help="with --processes: robots in network namespaces on a bridge, found by mDNS "
            "(Linux, root)",
        ),
    ] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    jobs: Annotated[
        int | None, typer.Option(help="worker processes (default: one per core)")
    ] = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="print the full trace of failing schedules")
    ] = False,
    only_faults: Annotated[
        str | None, typer.Option(help="replay: keep only these fault numbers ('none': no fault)")
    ] = None,
    minimise: Annotated[
        bool, typer.Option("--minimise/--no-minimise", help="shrink failing fault traces")
    ] = True,
    bug: Annotated[
        str | None, typer.Option(help="a deliberately broken build (tests the harness itself)")
    ] = None,
) -> None:
    """Partition/merge chaos: seeded schedules of faults and writes, then proof that every
    robot converged and nothing acknowledged was lost.  Exit status 1 on any failure."""
    from hearthsync.chaos import Scenario
    from hearthsync.chaos.console import exit_code, run_in_processes, run_simulated, write_json
    from hearthsync.chaos.plan import DEFAULT_FAULT_RATE, DEFAULT_MIX, FAULT_KINDS

    if netns and not processes:
        raise typer.BadParameter("--netns needs --processes", param_hint="--netns")
    if schedules < 1:
        raise typer.BadParameter(f"must be at least 1, not {schedules}", param_hint="--schedules")
    if jobs is not None and jobs < 1:
        raise typer.BadParameter(f"must be at least 1, not {jobs}", param_hint="--jobs")
    if json_file is not None:  # found before the run, not after it (the figures were lost)
        _check_writable(json_file)
    if processes:
        # process mode runs its own scenario: options of the simulation would be ignored
        ignored = {
            "--duration": duration != 30.0, "--faults": faults is not None,
            "--fault-rate": fault_rate is not None, "--scopes": scopes is not None,
            "--mix": mix is not None, "--bug": bug is not None, "--trace": trace,
            "--admin/--no-admin": admin is not None,
            "--only-faults": only_faults is not None, "--jobs": jobs is not None,
        }  # fmt: skip
        given = [name for name, set_ in ignored.items() if set_]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: not for --processes (simulation only)")
        if peers is not None and not 2 <= peers <= 16:
            raise typer.BadParameter(f"must be 2 to 16, not {peers}", param_hint="--peers")
        if edits is not None and edits < 6:
            raise typer.BadParameter(f"must be at least 6, not {edits}", param_hint="--edits")
    if netns:
        from hearthsync.chaos.netns import unavailable

        reason = unavailable()
        if reason is not None:
            raise typer.BadParameter(f"no network namespaces here: {reason}", param_hint="--netns")
    # SIGTERM stops a run as Ctrl-C does: process mode closes its robots and proxies (found
    # in review: it left a robot running and the run's folder behind), and a simulation
    # reports what ran
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if processes:
        report = run_in_processes(
            console, schedules=schedules, seed=seed, peers=peers or 3, edits=edits or 12,
            netns=netns, ignore_later_signals=True,
        )  # fmt: skip
    else:
        try:
            scenario = Scenario(
                peers=peers, edits=50 if edits is None else edits, duration=duration,
                faults=FAULT_KINDS if faults is None else _kinds(faults),
                fault_rate=DEFAULT_FAULT_RATE if fault_rate is None else fault_rate, bug=bug,
                scopes=None if scopes is None else tuple(_kinds(r) for r in scopes.split(";")),
                mix=DEFAULT_MIX if mix is None else _weights(mix), admin=admin,
            )  # fmt: skip
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        only = None if only_faults is None else _fault_numbers(only_faults)
        report = run_simulated(
            console, schedules=schedules, seed=seed, scenario=scenario, jobs=jobs,
            only_faults=only, trace=trace, minimise=minimise, ignore_later_signals=True,
        )  # fmt: skip
    if json_file:
        write_json(json_file, report)
        console.print(f"wrote {json_file}", markup=False)
    raise typer.Exit(exit_code(report))


def _check_writable(path: Path) -> None:
    """Refuse ``--json PATH`` before a run if it could not be written after it."""
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise typer.BadParameter(f"cannot write {path}", param_hint="--json")
    if path.exists() and not os.access(path, os.W_OK):
        raise typer.BadParameter(f"cannot write {path}", param_hint="--json")


def _kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list; 'none' is the empty one."""
    return () if text.strip() == "none" else tuple(k.strip() for k in text.split(",") if k)


def _fault_numbers(text: str) -> set[int]:
    """``--only-faults``: comma-separated fault numbers (0, 1, ...), or 'none'."""
    bad = typer.BadParameter(
        f"wants fault numbers such as 0,3,7 (or 'none'), got {text!r:.80}",
        param_hint="--only-faults",
    )
    try:
        numbers = {int(n) for n in _kinds(text)}
    except ValueError:
        raise bad from None
    if any(n < 0 for n in numbers):
        raise bad
    return numbers


def _weights(text: str) -> dict[str, float]:
    """``kind=weight,...``"""
    try:
        return {k.strip(): float(w) for k, _, w in (i.partition("=") for i in _kinds(text))}
    except ValueError:
        raise typer.BadParameter(f"--mix wants kind=weight,..., got {text!r}") from None


def main() -> None:
    try:
        app()
    except HearthError as exc:
        _error(exc)
        raise SystemExit(1) from None
    except OSError as exc:  # a file where a folder should be, a disk that is full: no traceback
        _error(exc)
        raise SystemExit(1) from None
