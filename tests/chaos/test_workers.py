"""The harness's worker processes end with the process that runs the schedules."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hearthsync.chaos.sim import SCRATCH_PREFIX, scratch_root, sweep_scratch

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from hearthsync.chaos import run
    from hearthsync.chaos.plan import Scenario

    def first(outcome):
        if not getattr(first, "done", False):
            first.done = True
            pids = [p.pid for p in multiprocessing.active_children() if p.pid != os.getpid()]
            print("WORKERS", *pids, flush=True)

    if __name__ == "__main__":
        run(schedules=400, seed=1, jobs=2, scenario=Scenario(peers=3, edits=5),
            on_outcome=first, minimise=False)
    """
)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on pidfds (Linux)")
def test_killing_the_runner_ends_its_workers(tmp_path: object) -> None:
    """Found by stopping a 10,000-schedule run with SIGTERM to start another: its two workers
    ran on, orphaned, taking the cores from the new run.  And they end cleanly: each removes
    the scratch folder of the schedule it was running (found after CI runs of this test, which
    left them in /dev/shm, memory, until the next reboot)."""
    with subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    ) as runner:
        try:
            _kill_and_wait_for_workers(runner)
        finally:
            runner.kill()


def _kill_and_wait_for_workers(runner: subprocess.Popen[str]) -> None:
    assert runner.stdout is not None
    ready, _, _ = select.select([runner.stdout], [], [], 120)
    assert ready, "no schedule ended within 120 s"
    line = runner.stdout.readline().split()
    assert line[0] == "WORKERS", line
    workers = [int(pid) for pid in line[1:]]
    assert workers, "the harness started no worker process"
    fds = [os.pidfd_open(pid) for pid in workers]
    try:
        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=30)
        pending = list(fds)
        while pending:  # a pidfd turns readable when its process ends
            done, _, _ = select.select(pending, [], [], 30)
            assert done, f"workers {workers} still run 30 s after the runner was killed"
            pending = [fd for fd in pending if fd not in done]
    finally:
        for fd in fds:
            os.close(fd)
    left = [p.name for pid in workers for p in scratch_root().glob(f"{SCRATCH_PREFIX}{pid}-*")]
    assert not left, f"the workers left their scratch folders: {left}"


def test_a_sweep_removes_the_scratch_folders_of_processes_gone_and_no_other(
    tmp_path: Path,
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead, alive = int(gone.stdout), os.getpid()
    for name in (f"{dead}-abc", f"{dead}-def", f"{alive}-abc", "processes-abc", "old_name"):
        (tmp_path / f"{SCRATCH_PREFIX}{name}" / "r0").mkdir(parents=True)
    assert sweep_scratch(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{SCRATCH_PREFIX}{alive}-abc", f"{SCRATCH_PREFIX}old_name",
        f"{SCRATCH_PREFIX}processes-abc",
    ]  # fmt: skip
