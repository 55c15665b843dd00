"""``hearth chaos``: run the harness from a terminal, with a progress bar and a summary.

The command in `hearthsync.cli` only parses its options; everything it prints and writes is
here, so that the same run is one call from Python too::

    from rich.console import Console
    from hearthsync.chaos.console import run_simulated

    report = run_simulated(Console(), schedules=50, seed=1, scenario=Scenario(peers=5))

Exit status (`exit_code`): 0 when every schedule converged with nothing lost, leaked or
raised; 1 otherwise.  ``--json FILE`` writes `Report.to_json`, one flat object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hearthsync.chaos.harness import Failure, Report, run
from hearthsync.chaos.plan import FAULT_KINDS, Scenario
from hearthsync.chaos.process import ProcessReport, run_processes
from hearthsync.chaos.sim import Outcome
from hearthsync.errors import HearthError

PROBLEMS_SHOWN = 8  #: per failing schedule; the rest are counted
PROGRESS_EVERY_S = 60.0  #: with no terminal for the progress bar, a line this often
INTERRUPTED = 130  #: the exit status of a run stopped before its end (128 + SIGINT)

#: the fault kinds of process mode, as its fault trace names them
PROCESS_FAULT_KINDS = ("cut", "kill", "delay", "throttle", "reset", "drop", "revoke")


def run_simulated(
    console: Console,
    *,
    schedules: int,
    seed: int,
    scenario: Scenario,
    jobs: int | None = None,
    only_faults: set[int] | None = None,
    trace: bool = False,
    minimise: bool = True,
    ignore_later_signals: bool = False,
) -> Report:
    """Run the simulated schedules with a progress bar, then print the summary (and, with
    ``trace``, the full trace of every failing schedule, or of the one schedule run).
    ``ignore_later_signals``: as `hearthsync.chaos.run` (``hearth chaos``, which exits once
    it has reported)."""
    traced: list[Outcome] = []
    started = last = time.monotonic()
    with _progress(console) as progress:
        task = progress.add_task("schedules", total=schedules, failed=0)
        failed = done = 0

        def advance(outcome: Outcome) -> None:
            nonlocal failed, done, last
            failed += not outcome.ok
            done += 1
            progress.update(task, advance=1, failed=failed)
            if trace and (not outcome.ok or schedules == 1):
                traced.append(outcome)
            now = time.monotonic()
            if not console.is_terminal and now - last >= PROGRESS_EVERY_S:
                # no bar to watch (a log, CI, nohup): a line now and then instead
                last = now
                rate = 60 * done / (now - started)
                console.print(f"{done}/{schedules} schedules, {failed} failed, "
                              f"{rate:.0f} a minute", highlight=False)  # fmt: skip

        report = run(
            schedules=schedules, seed=seed, scenario=scenario, jobs=jobs, minimise=minimise,
            only_faults=only_faults, on_outcome=advance, keep_traces=trace and schedules == 1,
            ignore_later_signals=ignore_later_signals,
        )  # fmt: skip
    for outcome in sorted(traced, key=lambda o: o.seed):
        console.rule(f"trace of schedule {outcome.seed}")
        for line in outcome.trace:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    print_report(console, report)
    return report


def run_in_processes(
    console: Console, *, schedules: int, seed: int, peers: int, edits: int, netns: bool = False,
    ignore_later_signals: bool = False,
) -> Report:  # fmt: skip
    """Process mode: ``schedules`` runs of real ``hearth run`` processes behind fault
    proxies (`hearthsync.chaos.process`), or with ``netns`` in network namespaces on one
    bridge, one after the other, summed into one `Report`.

    Stopped (Ctrl-C or SIGTERM, from the main thread), the run going on is cancelled: it
    closes its robots and its folder is removed, and the report of the runs that ended is
    printed and returned, marked ``interrupted``, as a simulated run's is.  Further signals
    change nothing meanwhile (found in review: a second Ctrl-C broke off the closing of the
    robots and the report); with ``ignore_later_signals`` (``hearth chaos``, which exits
    once it has reported) they are ignored for good, else the handlers are restored."""
    report = Report(requested=schedules)
    stop = _Stop()
    started = time.perf_counter()
    with stop.handling(keep=ignore_later_signals), _progress(console) as progress:
        task = progress.add_task("process runs", total=schedules, failed=0)
        failures = 0
        for run_seed in range(seed, seed + schedules):
            if stop.stopping:
                report.interrupted = True
                break
            folder = Path(tempfile.mkdtemp(prefix="hearth-chaos-processes-"))
            try:
                found = asyncio.run(
                    stop.cancelling(
                        run_processes(folder, peers=peers, seed=run_seed, edits=edits, netns=netns)
                    )
                )
                if found is None:
                    raise KeyboardInterrupt
            except HearthError as exc:  # a robot that died: this schedule failed, not the run
                add_process_error(report, run_seed, peers, edits, exc, folder, netns=netns)
                failed = True
            except KeyboardInterrupt:  # this run is void, not the ones before (found in
                # review: it exited 130 with nothing printed, and wrote no --json)
                shutil.rmtree(folder, ignore_errors=True)
                report.interrupted = True
                break
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            else:
                add_process_run(report, found, edits, netns=netns)
                failed = not found.ok
            if failed:  # its robots' folders and logs, for whoever reads the failure
                console.print(f"schedule {run_seed} failed: its robots' folders are in {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
            failures += failed
            progress.update(task, advance=1, failed=failures)
    report.elapsed_s = time.perf_counter() - started
    print_report(console, report, processes=True, netns=netns)
    return report


class _Stop:
    """Ctrl-C and SIGTERM for process mode: the first cancels the run going on, so that it
    closes its robots as a cancelled task does, and the others do nothing.

    The handlers are Python's (`signal.signal`), not the event loop's: a loop puts back the
    default handlers of the signals it handled when it closes, and a signal between that and
    the next run would have raised wherever it landed.  asyncio.run leaves SIGINT to a handler
    that is not Python's default."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stopping = False
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None

    @contextlib.contextmanager
    def handling(self, *, keep: bool) -> Iterator[None]:
        """Handle the signals while inside (only the main thread may); then put the handlers
        back, unless ``keep`` and a signal came: then they stay ignored."""
        if threading.current_thread() is not threading.main_thread():
            yield  # no handlers of ours: a signal raises KeyboardInterrupt where it lands
            return
        before = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, signal.SIG_IGN if keep and self.stopping else handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self._running is not None:
            loop, task = self._running
            loop.call_soon_threadsafe(task.cancel)

    async def cancelling(self, work: Coroutine[Any, Any, ProcessReport]) -> ProcessReport | None:
        """``work``'s report, or None if a signal stopped it (it was cancelled, and ended)."""
        if self.stopping:  # came while this run started
            work.close()
            return None
        task = asyncio.current_task()
        assert task is not None
        self._running = (asyncio.get_running_loop(), task)
        try:
            return await work
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            return None
        finally:
            self._running = None


def add_process_error(
    report: Report, seed: int, peers: int, edits: int, error: Exception, folder: Path,
    *, netns: bool = False,
) -> None:  # fmt: skip
    """Count a process-mode run that ended in an error (a robot died) as a failed schedule."""
    report.schedules += 1
    report.errors += 1
    report.failures.append(
        Failure(seed, peers, [f"error: {error}"], [], _process_replay(seed, peers, edits, netns))
    )


def _process_replay(seed: int, peers: int, edits: int, netns: bool) -> str:
    return (
        f"hearth chaos --processes{' --netns' if netns else ''} --seed {seed} --schedules 1 "
        f"--peers {peers} --edits {edits}"
    )


def add_process_run(
    report: Report, found: ProcessReport, edits: int, *, netns: bool = False
) -> None:
    """Count one process-mode run into ``report`` (its failure replays with its seed)."""
    report.schedules += 1
    report.faults += found.faults
    report.acknowledged_writes += found.acknowledged_writes
    report.verified_writes += found.verified_writes
    report.exempt_writes += found.exempt_writes
    report.divergences += found.divergences
    report.lost_writes += len(found.lost_writes)
    report.isolation_leaks += len(found.leaked_writes)
    report.revocation_leaks += len(found.revocation_leaks)
    report.forgetting_remnants += len(found.forgetting_remnants)
    report.converge_s.append(found.converge_s)
    for line in found.fault_trace:
        kind = line.split()[1] if len(line.split()) > 1 else "?"
        if kind in PROCESS_FAULT_KINDS:
            report.fault_counts[kind] = report.fault_counts.get(kind, 0) + 1
    if not found.ok:
        problems = [f"lost: {robot} acknowledged {key}" for robot, key in found.lost_writes]
        problems += [f"leaked across the cut: {robot} {key}" for robot, key in found.leaked_writes]
        problems += [f"revocation leak: {leak}" for leak in found.revocation_leaks]
        problems += [f"forgetting remnant: {line}" for line in found.forgetting_remnants]
        if found.divergences:
            problems.append(f"divergence: {found.divergences} robots' digests differ")
        replay = _process_replay(found.seed, found.peers, edits, netns)
        report.failures.append(
            Failure(found.seed, found.peers, problems, list(found.fault_trace), replay)
        )


def exit_code(report: Report) -> int:
    """1 on any failure; else 130 (as for SIGINT) if interrupted; else 0."""
    if not report.ok:
        return 1
    return INTERRUPTED if report.interrupted else 0


def write_json(path: Path, report: Report) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- printing


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


def print_report(
    console: Console, report: Report, *, processes: bool = False, netns: bool = False
) -> None:
    """The summary table, then every failure with its problems and replay command."""
    mode = " (processes on a LAN of namespaces)" if netns else " (processes)" if processes else ""
    table = Table(title="hearth chaos" + mode, show_header=False)
    table.add_column()
    table.add_column()
    for name, value in _rows(report, processes):
        table.add_row(name, value)
    console.print(table)
    for failure in report.failures:
        console.rule(f"[red]schedule {failure.seed} failed ({failure.peers} robots)")
        for problem in failure.problems[:PROBLEMS_SHOWN]:
            console.print(f"  {problem}", markup=False, highlight=False)
        if len(failure.problems) > PROBLEMS_SHOWN:
            console.print(f"  ... and {len(failure.problems) - PROBLEMS_SHOWN} more")
        if not failure.traced:  # "no fault needed" said of it was wrong (found in review)
            console.print("  fault trace not known: its worker died; the replay runs it again")
        else:
            console.print("  minimal fault trace:" if failure.fault_trace else "  no fault needed")
        for line in failure.fault_trace:
            console.print(f"    {line}", markup=False, highlight=False)
        console.print(f"  replay: [bold]{failure.replay}[/bold]", highlight=False, soft_wrap=True)
    verdict = "[green]ok[/green]" if report.ok else "[red]FAILED[/red]"
    if report.interrupted:
        console.print(
            f"[yellow]interrupted[/yellow] after {report.schedules} of {report.requested} "
            "schedules: what ran is reported above, and proves nothing of the rest"
        )
    console.print(f"{verdict}: {report.schedules} schedules, seeds {_seeds(report)}")


def _rows(report: Report, processes: bool) -> list[tuple[str, str]]:
    kinds = PROCESS_FAULT_KINDS if processes else FAULT_KINDS
    by_kind = ", ".join(f"{k} {report.fault_counts.get(k, 0)}" for k in kinds)
    rows = [
        ("schedules run", f"{report.schedules}"),
        ("faults injected", f"{report.faults} ({by_kind})"),
        ("writes acknowledged", f"{report.acknowledged_writes}"),
        ("writes verified everywhere", f"{report.verified_writes}"),
    ]
    whose = "of the forgotten user" if processes else "of revoked robots, forgotten users"
    rows.append(("writes not required", f"{report.exempt_writes} ({whose})"))
    rows += [
        ("divergences", _bad(report.divergences)),
        ("lost writes", _bad(report.lost_writes)),
    ]
    if processes:
        rows += [
            ("writes seen across a cut", _bad(report.isolation_leaks)),
            ("revocation leaks", _bad(report.revocation_leaks)),
            ("forgotten users' remnants", _bad(report.forgetting_remnants)),
            ("errors", _bad(report.errors)),
        ]
    else:
        rows += [
            ("revocation leaks", _bad(report.revocation_leaks)),
            ("forgotten users' remnants", _bad(report.forgetting_remnants)),
            ("errors", _bad(report.errors)),
            ("did not converge", _bad(report.unconverged)),
        ]
    unit = "s" if processes else "s simulated"
    converged = (
        f"{report.converge_p50_s:.3f} / {report.converge_p99_s:.3f} {unit}"
        if report.converge_s
        else "not measured (no schedule got as far)"  # it printed "nan / nan" (found in review)
    )
    rows += [
        ("time to converge p50 / p99", converged),
        ("elapsed", f"{report.elapsed_s:.1f} s ({report.schedules_per_minute:.0f} per minute)"),
    ]  # fmt: skip
    return rows


def _bad(count: int) -> str:
    return f"[red]{count}[/red]" if count else "0"


def _seeds(report: Report) -> str:
    failing = report.failing_seeds
    return f"failing {_compact(failing)}" if failing else "all passed"


def _compact(seeds: Sequence[int]) -> str:
    shown = ", ".join(str(s) for s in seeds[:20])
    return shown + (f" and {len(seeds) - 20} more" if len(seeds) > 20 else "")
