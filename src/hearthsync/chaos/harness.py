"""Run many seeded schedules, shrink the failing ones, and report.

    report = hearthsync.chaos.run(schedules=200, seed=1)
    assert report.ok, report.failures[0].replay

Schedule ``i`` of a run with seed ``S`` is seeded ``S + i``, so any one of them replays alone
with ``hearth chaos --seed S+i --schedules 1`` (plus the scenario's options, which the replay
command spells out).  Schedules run in worker processes, one per core by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from hearthsync.chaos.check import Findings
from hearthsync.chaos.plan import (
    DEFAULT_FAULT_RATE,
    DEFAULT_MIX,
    FAULT_KINDS,
    Plan,
    Scenario,
    make_plan,
)
from hearthsync.chaos.sim import (
    SCRATCH_PREFIX,
    Outcome,
    new_loop,
    scratch_root,
    simulate,
    sweep_scratch,
)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failing schedule: what went wrong, the fewest faults that still make it fail, and
    the command that replays exactly that."""

    seed: int
    peers: int
    problems: list[str]
    fault_trace: list[str]  #: the minimal set of faults found, described, in order
    replay: str
    #: whether ``fault_trace`` is known: not for a schedule whose worker died under it
    traced: bool = True


@dataclass
class Report:
    schedules: int = 0
    faults: int = 0
    acknowledged_writes: int = 0
    verified_writes: int = 0
    exempt_writes: int = 0  #: written by a robot that was then revoked: neither verified nor lost
    divergences: int = 0
    lost_writes: int = 0
    revocation_leaks: int = 0
    forgetting_remnants: int = 0
    errors: int = 0
    unconverged: int = 0
    #: process mode: writes seen across a cut while it held (the proxies leaked)
    isolation_leaks: int = 0
    converge_s: list[float] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    fault_counts: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    #: the schedules asked for; fewer ran if the run was interrupted (Ctrl-C, SIGTERM)
    requested: int = 0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        # a failure of any kind fails the run: a process run that only leaked across its cut
        # was listed as failed and passed (found in review)
        return (
            not (self.divergences or self.lost_writes or self.revocation_leaks or self.errors)
            and not (self.unconverged or self.forgetting_remnants or self.isolation_leaks)
            and (not self.failures)
        )

    @property
    def complete(self) -> bool:
        """Every schedule asked for ran (an interrupted run proves only what it ran)."""
        return not self.interrupted

    @property
    def failing_seeds(self) -> list[int]:
        return sorted(f.seed for f in self.failures)

    @property
    def converge_p50_s(self) -> float:
        return _percentile(self.converge_s, 50)

    @property
    def converge_p99_s(self) -> float:
        return _percentile(self.converge_s, 99)

    @property
    def schedules_per_minute(self) -> float:
        return 60 * self.schedules / self.elapsed_s if self.elapsed_s else 0.0

    def add(self, outcome: Outcome) -> None:
        found = outcome.findings
        self.schedules += 1
        self.faults += len(outcome.faults)
        for kind in outcome.fault_kinds:
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1
        self.acknowledged_writes += outcome.acknowledged
        self.verified_writes += found.verified
        self.exempt_writes += found.exempt
        self.divergences += len(found.divergences)
        self.lost_writes += len(found.lost)
        self.revocation_leaks += len(found.leaks)
        self.forgetting_remnants += len(found.remnants)
        self.errors += len(outcome.errors)
        if outcome.converge_s is None:
            self.unconverged += 1
        else:
            self.converge_s.append(outcome.converge_s)

    def to_json(self) -> dict[str, Any]:
        """The flat object ``hearth chaos --json`` writes."""
        return {
            "schedules": self.schedules,
            "schedules_requested": self.requested,
            "interrupted": self.interrupted,
            "faults": self.faults,
            "acknowledged_writes": self.acknowledged_writes,
            "verified_writes": self.verified_writes,
            "exempt_writes": self.exempt_writes,
            "divergences": self.divergences,
            "lost_writes": self.lost_writes,
            "revocation_leaks": self.revocation_leaks,
            "forgetting_remnants": self.forgetting_remnants,
            "errors": self.errors,
            "unconverged": self.unconverged,
            "isolation_leaks": self.isolation_leaks,
            "converge_p50_s": _figure(self.converge_p50_s),
            "converge_p99_s": _figure(self.converge_p99_s),
            "schedules_per_minute": round(self.schedules_per_minute, 1),
            "elapsed_s": round(self.elapsed_s, 2),
            "failing_seeds": self.failing_seeds,
            "replay": [f.replay for f in self.failures],
            **{f"faults_{kind}": self.fault_counts.get(kind, 0) for kind in FAULT_KINDS},
            # process mode's kinds too (cut, kill, delay, reset, drop)
            **{f"faults_{kind}": count for kind, count in self.fault_counts.items()},
        }


def _figure(value: float) -> float | None:
    """A figure for JSON, which has no NaN: None when there was nothing to measure."""
    return None if math.isnan(value) else round(value, 4)


def _percentile(values: Sequence[float], pct: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


def problems(outcome: Outcome) -> list[str]:
    """What the checkers found in one schedule, one line each."""
    found = outcome.findings
    lines = [f"lost: {x}" for x in found.lost]
    lines += [f"divergence: {x}" for x in found.divergences]
    lines += [f"revocation leak: {x}" for x in found.leaks]
    lines += [f"forgetting remnant: {x}" for x in found.remnants]
    lines += [f"error: {x}" for x in outcome.errors]
    if outcome.converge_s is None:
        lines.append("did not converge within the settle limit after the heal")
    return lines


def run_schedule(seed: int, scenario: Scenario, only_faults: set[int] | None = None) -> Outcome:
    """Run one schedule in this process (a fresh event loop)."""
    plan = make_plan(seed, scenario)
    if only_faults is not None:
        plan = plan.only_faults(only_faults)
    return _simulate(plan)


def _simulate(plan: Plan) -> Outcome:
    """A schedule that crashes is a failed schedule carrying the error, not the end of the
    run: a Rust panic inside pycrdt reaches Python as a ``BaseException`` (and would not even
    pickle back from a worker process)."""
    try:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(simulate(plan))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        return Outcome(
            seed=plan.seed, peers=plan.peers, faults=[], fault_kinds=[], ops=len(plan.ops),
            acknowledged=0, findings=Findings(0, [], [], []),
            errors=[f"the schedule crashed: {type(exc).__name__}: {exc}"], converge_s=None,
            trace=[], trace_digest="", messages=0, messages_lost=0, elapsed_s=0.0,
        )  # fmt: skip


def shrink(plan: Plan, outcome: Outcome) -> tuple[Plan, Outcome]:
    """Drop faults one at a time while the schedule still fails: a smaller trace to read.

    Greedy (one pass, in order), so the result is minimal in the sense that removing any
    single remaining fault makes the failure go away, not necessarily the smallest set.
    """
    current, failing = plan, outcome
    for fault in plan.faults:
        candidate = current.without_faults({fault.index})
        result = _simulate(candidate)
        if not result.ok:
            current, failing = candidate, result
    return current, failing


def replay_command(seed: int, scenario: Scenario, faults: Sequence[int] | None = None) -> str:
    """What replays schedule ``seed`` of ``scenario`` exactly (with only the faults numbered
    ``faults``, if given): a ``hearth chaos`` command, or, for a scenario with settings the
    command has no option for (latency, commit delay, skew, settle limit), the Python call."""
    if _python_only(scenario):
        only = "" if faults is None else f", only_faults={set(faults)!r}"
        return f"hearthsync.chaos.run_schedule({seed}, hearthsync.chaos.{scenario!r}{only})"
    args = ["hearth", "chaos", "--seed", str(seed), "--schedules", "1"]
    if scenario.scopes is not None:
        args += ["--scopes", ";".join(",".join(robot) for robot in scenario.scopes)]
    elif scenario.peers is not None:
        args += ["--peers", str(scenario.peers)]
    args += ["--edits", str(scenario.edits), "--duration", repr(scenario.duration)]
    if tuple(scenario.faults) != FAULT_KINDS:
        args += ["--faults", ",".join(scenario.faults) or "none"]
    if scenario.fault_rate != DEFAULT_FAULT_RATE:
        args += ["--fault-rate", repr(scenario.fault_rate)]
    if dict(scenario.mix) != dict(DEFAULT_MIX):
        args += ["--mix", ",".join(f"{k}={w!r}" for k, w in scenario.mix.items())]
    if faults is not None:
        args += ["--only-faults", ",".join(str(i) for i in faults) or "none"]
    if scenario.admin is not None:
        args += ["--admin" if scenario.admin else "--no-admin"]
    if scenario.bug:
        args += ["--bug", scenario.bug]
    return shlex.join([*args, "--trace"])


def _python_only(scenario: Scenario) -> bool:
    default = Scenario()
    return any(
        getattr(scenario, name) != getattr(default, name)
        for name in ("latency", "commit_delay", "max_skew", "settle_limit")
    )


def _failure(
    outcome: Outcome, scenario: Scenario, minimise: bool, only_faults: set[int] | None = None
) -> Failure:
    """A failing schedule, shrunk if ``minimise``; run with ``only_faults``, its trace and
    replay keep to those (found in review: the replay left them out, the trace listed all)."""
    plan = make_plan(outcome.seed, scenario)
    if only_faults is not None:
        plan = plan.only_faults(only_faults)
    found = outcome
    if minimise and plan.faults:
        plan, found = shrink(plan, outcome)
    kept = [f.index for f in plan.faults]
    return Failure(
        seed=outcome.seed,
        peers=outcome.peers,
        problems=problems(found),
        fault_trace=[f.describe() for f in plan.faults],
        replay=replay_command(
            outcome.seed, scenario, kept if minimise or only_faults is not None else None
        ),
    )


def _start_method() -> str:
    """``fork`` (fast, and works from any script) when this process has no other thread to
    copy half-way; else ``spawn``, which needs the caller's ``if __name__ == "__main__"``."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def die_with_parent(parent: int) -> None:
    """A worker's initializer: end with the process that hands out the schedules.  Killed
    (SIGKILL, or a SIGTERM it does not handle), that process left its workers running on,
    found orphaned and busy after a 10,000-schedule run was stopped to start another."""
    # a worker ended by SIGTERM removes its scratch folders first: ended outright, each left
    # its robots' stores in /dev/shm, memory, until the next reboot (found after CI runs of
    # the workers test).  Not by raising SystemExit for the schedule's own cleanup: the
    # handler can run inside a __del__ or a weakref callback, which swallow the exception,
    # and the worker ran on, orphaned
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Ctrl-C reaches every process of the terminal's group: the run that hands out the
    # schedules stops handing them out and reports; a worker ends its schedule first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # held back from its start: see _held_back
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


_T = TypeVar("_T")


def _held_back(signum: int, work: Callable[[], _T]) -> _T:
    """Do ``work`` with ``signum`` held back (blocked, pending) in this thread, and so in
    every process it starts; a signal that came meanwhile is taken once it is done.

    A worker ignores Ctrl-C only once its initializer runs, and a spawned worker first
    imports hearthsync, a second or more on a loaded machine: a Ctrl-C in between printed
    its traceback and broke the pool (found by CI).  Started blocked, it takes none until
    the initializer has set it ignored, which also discards one pending.

    A function, not a context manager: a signal handled just before the block can be raised
    at the next call or function entry, and with ``with`` some of those lie outside any
    ``try`` (in `contextlib`'s ``__enter__`` and ``__exit__``), where the block stayed in
    place (found in review).  Here every one after the block is inside the ``try``."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process group to signal
        return work()
    # the mask as it is, read without changing it (a Ctrl-C taken here changes nothing)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
        return work()
    finally:
        # inline, retried until it returns: entering a function is such a moment, and the
        # signal stayed blocked for good one run in five under a storm of Ctrl-Cs
        raised: BaseException | None = None
        while True:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
            except BaseException as exc:  # KeyboardInterrupt, or what a handler raises
                raised = exc
                continue
            break
        if raised is not None:
            raise raised  # once the mask is restored


def _exit_on_sigterm(signum: int, frame: object) -> None:
    for folder in scratch_root().glob(f"{SCRATCH_PREFIX}{os.getpid()}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(128 + signum)


_PR_SET_PDEATHSIG = 1  #: prctl(2): the signal this process gets when its parent ends
WORKER_STOP_S = 10.0  #: how long an interrupted run waits for a worker it stopped to end


def _worker(seed: int, scenario: Scenario, only: set[int] | None, keep: bool) -> Outcome:
    outcome = run_schedule(seed, scenario, only)
    if outcome.ok and not keep:  # the trace of a good schedule is not needed back: it is long
        outcome = replace(outcome, trace=[])
    return outcome


def run(
    *,
    schedules: int = 100,
    seed: int = 0,
    scenario: Scenario | None = None,
    jobs: int | None = None,
    minimise: bool = True,
    only_faults: set[int] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    keep_traces: bool = False,
    ignore_later_signals: bool = False,
) -> Report:
    """Run ``schedules`` simulated schedules seeded ``seed``, ``seed + 1``, …; return the
    report.  ``jobs`` worker processes (default: one per core); failures are shrunk to a
    minimal fault trace unless ``minimise`` is false.  ``on_outcome`` is called with each
    schedule's `Outcome` as it ends (a progress bar), in the order they end; a good schedule's
    trace is dropped unless ``keep_traces``.

    Interrupted (`KeyboardInterrupt`: Ctrl-C, or SIGTERM where the caller maps it so, as
    ``hearth chaos`` does), the run stops the schedules running (they count for nothing) and
    returns the report of those that ended before, marked ``interrupted``; failures not yet
    shrunk then stay as they failed.  An hour of a long run is not thrown away for want of
    its last minutes.  A worker that dies (the OOM killer, a crash in native code) breaks
    the pool: the run stops the same way, and each schedule the workers held then fails,
    with its replay.  ``ignore_later_signals`` (a command that reports and exits, as
    ``hearth chaos``): once interrupted, Ctrl-C and SIGTERM are ignored for good, so that
    more of them (a key held down) cannot cut the report short; called from the main thread
    only."""
    if schedules < 1 or (jobs is not None and jobs < 1):  # as ``hearth chaos`` refuses them
        what, value = ("schedules", schedules) if schedules < 1 else ("jobs", jobs)
        raise ValueError(f"{what} must be at least 1, not {value}")
    scenario = scenario or Scenario()
    jobs = jobs or os.cpu_count() or 1
    sweep_scratch()  # what killed runs left behind
    report = Report(requested=schedules)
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    seeds = range(seed, seed + schedules)

    def take(outcome: Outcome) -> None:
        report.add(outcome)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        if jobs == 1 or schedules == 1:
            for s in seeds:
                take(_worker(s, scenario, only_faults, keep_traces))
        else:
            _in_workers(
                seeds,
                jobs,
                take,
                (scenario, only_faults, keep_traces),
                ignore_later_signals=ignore_later_signals,
            )
    except KeyboardInterrupt:
        if ignore_later_signals:
            _ignore_signals()
        report.interrupted = True
    except WorkerDied as died:  # the schedules that ended are reported all the same
        report.interrupted = True
        report.errors += len(died.seeds)
        report.failures += [
            Failure(
                s,
                make_plan(s, scenario).peers,
                [f"error: {died}"],
                [],
                replay_command(s, scenario),
                traced=False,
            )
            for s in died.seeds
        ]
    report.elapsed_s = time.perf_counter() - started
    shrinking = minimise and only_faults is None and not report.interrupted
    for outcome in sorted(outcomes, key=lambda o: o.seed):
        if outcome.ok:
            continue
        try:
            failure = _failure(outcome, scenario, shrinking, only_faults)
        except KeyboardInterrupt:  # shrinking reruns schedules: it can take a while
            if ignore_later_signals:
                _ignore_signals()
            report.interrupted, shrinking = True, False
            failure = _failure(outcome, scenario, shrinking, only_faults)
        report.failures.append(failure)
    return report


class WorkerDied(Exception):
    """A worker process died (killed by the OOM killer, or a crash in native code) while
    it held ``seeds``: the pool is broken, and the run stops with what ended."""

    def __init__(self, seeds: list[int]) -> None:
        super().__init__(
            "a worker process died while the workers held this schedule (killed, out of "
            "memory maybe, or by a crash in native code): replay it alone to tell"
        )
        self.seeds = seeds


def _ignore_signals() -> None:
    """Ctrl-C and SIGTERM are ignored from now on (`run`'s ``ignore_later_signals``)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _in_workers(
    seeds: range,
    jobs: int,
    take: Callable[[Outcome], None],
    args: tuple[Scenario, set[int] | None, bool],
    *,
    ignore_later_signals: bool = False,
) -> None:
    """Run ``seeds`` in ``jobs`` worker processes, handing each `Outcome` to ``take`` as it
    ends.  On Ctrl-C (or a SIGTERM its caller maps to one), the schedules not started are
    cancelled and the workers stopped (SIGTERM: each removes its scratch folders and exits;
    SIGKILL for one still running `WORKER_STOP_S` later); then `KeyboardInterrupt` is raised,
    as the caller's handler would have.  ``ignore_later_signals``: from then on Ctrl-C and
    SIGTERM are ignored (see `run`).

    Ctrl-C is noted, not raised, while the pool runs: a `KeyboardInterrupt` raised inside
    the pool's own waits could land between a lock's acquire and the ``try`` that releases
    it, and the pool's shutdown then waited on that lock for good (found by CI: a run hung
    in `ProcessPoolExecutor.shutdown`, its manager thread in `Future.cancel`)."""
    context = multiprocessing.get_context(_start_method())
    others = set(multiprocessing.active_children())  # the caller's own: never stopped here
    with _signals_noted(ignore_after=ignore_later_signals) as noted:
        pool = ProcessPoolExecutor(
            max_workers=min(jobs, len(seeds)), mp_context=context,
            initializer=die_with_parent, initargs=(os.getpid(),),
        )  # fmt: skip
        finished = False
        try:
            # each future puts itself here as it ends: waiting on a queue costs nothing per
            # schedule pending, where `concurrent.futures.wait` looked at every one of them
            # at each look for a Ctrl-C (16 ms a look with 10,000 pending; found in review)
            ended: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
            # the workers start as the pool is handed its work, with Ctrl-C held back
            # until their initializer ignores it (see `_held_back`)
            futures = _held_back(
                signal.SIGINT, lambda: [pool.submit(_worker, s, *args) for s in seeds]
            )
            for future in futures:
                future.add_done_callback(ended.put)
            left = len(futures)
            while left and not noted:
                next_one = _next_ended(ended, _SIGNAL_POLL_S)
                if next_one is not None:
                    left -= 1
                    if _broke(next_one):
                        raise WorkerDied(_held(seeds, futures, jobs))
                    take(next_one.result())
            finished = not noted
        finally:
            if not finished:  # interrupted, or `take` raised: the schedules running are void
                _stop(set(multiprocessing.active_children()) - others)
            pool.shutdown(wait=True, cancel_futures=True)


_SIGNAL_POLL_S = 0.1  #: how often a run in workers looks for a Ctrl-C it noted


def _broke(future: Future[Outcome]) -> bool:
    return (
        future.done() and not future.cancelled()
        and isinstance(future.exception(), BrokenProcessPool)
    )  # fmt: skip


def _held(seeds: range, futures: list[Future[Outcome]], jobs: int) -> list[int]:
    """The seeds the workers held when the pool broke: the pool hands schedules out in the
    order submitted, ``jobs`` running and one queued, so the first ``jobs + 1`` of those
    that failed with it (found in review: a worker killed ended the run with a traceback)."""
    broken = [seed for seed, future in zip(seeds, futures, strict=True) if _broke(future)]
    return broken[: jobs + 1]


def _next_ended(
    ended: queue.SimpleQueue[Future[Outcome]], timeout: float
) -> Future[Outcome] | None:
    """The next schedule's future to end, or None if none did within ``timeout``."""
    try:
        return ended.get(timeout=timeout)
    except queue.Empty:
        return None


def _stop(workers: set[multiprocessing.process.BaseProcess]) -> None:
    """End ``workers``: SIGTERM (each removes its scratch folders), then SIGKILL for any
    still running `WORKER_STOP_S` later (busy in native code, which holds off a Python
    signal handler), so that the pool's shutdown, which joins them without a timeout, ends.
    Waited on by their sentinels, not by pid: the pool's own thread may reap them first."""
    for worker in workers:
        worker.terminate()
    running = {worker.sentinel: worker for worker in workers}
    deadline = time.monotonic() + WORKER_STOP_S
    while running and (left := deadline - time.monotonic()) > 0:
        for sentinel in multiprocessing.connection.wait(list(running), timeout=left):
            running.pop(sentinel)  # type: ignore[arg-type]
    for worker in running.values():  # not ended, so not reaped: the pid is still the worker's
        worker.kill()


@contextlib.contextmanager
def _signals_noted(*, ignore_after: bool = False) -> Iterator[list[int]]:
    """Within the block, Ctrl-C (and any signal whose handler raises `KeyboardInterrupt`,
    as ``hearth chaos`` maps SIGTERM) is only noted in the list yielded; on the way out the
    block ends with `KeyboardInterrupt` if one was noted, once the caller's handlers are back
    (``ignore_after``: replaced by `signal.SIG_IGN` instead, for good).

    The handler appends to a list and nothing more: it runs in the main thread between any
    two bytecodes, locks held or not.  Off the main thread no handler can be set, and none
    is needed: Python raises `KeyboardInterrupt` only in the main thread.  Handlers are
    swapped inside the ``try`` and put back by a loop that a signal cannot break off: a
    SIGTERM between the swaps of SIGINT and SIGTERM, or a Ctrl-C between putting them back,
    left one noting for good, and later signals were lost (found in review)."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    owner = os.getpid()

    def note(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a forked worker, stopped before its initializer ran
            _exit_on_sigterm(signum, frame)
        noted.append(signum)

    swapped: list[tuple[int, Any]] = []
    try:
        for which in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(which)
            if handler is signal.default_int_handler:
                swapped.append((which, handler))  # before the swap: undone if it raises
                signal.signal(which, note)
        yield noted
    finally:
        raised: BaseException | None = None
        while True:  # as `_held_back`: retried until every handler is back
            try:
                for signum, handler in swapped:
                    signal.signal(signum, signal.SIG_IGN if noted and ignore_after else handler)
            except BaseException as exc:  # a Ctrl-C taken by a handler just put back
                raised = exc
                continue
            break
        if raised is not None:
            raise raised
        if noted:
            raise KeyboardInterrupt  # what each of those handlers would have raised
