"""Partition/merge chaos testing for a household, like ``trio.testing`` for sync.

    from hearthsync import chaos

    report = chaos.run(schedules=200, seed=7, scenario=chaos.Scenario(peers=5, edits=50))
    print(report.to_json())
    for failure in report.failures:
        print(failure.seed, failure.problems, failure.fault_trace, failure.replay)

Each schedule is a deterministic simulation (`hearthsync.chaos.sim`): real `Peer` stores and
real protocol sessions on a simulated network and clock, one seeded generator, faults
(partitions, drops, duplicates, reordering, delays, crashes, clock skew, revocations) under a
workload of writes (`hearthsync.chaos.workload`: preferences, profiles, calibration, moves,
events, health, new users, forgetting), then a heal; the checkers (`hearthsync.chaos.check`)
prove convergence, that no acknowledged write was lost, no leak past a revocation and nothing
left of a forgotten user.  `hearthsync.chaos.process` runs a scenario against real
``hearth run`` processes behind fault proxies, or in network namespaces on one bridge where
mDNS is cut too (`hearthsync.chaos.netns`).  ``hearth chaos`` is the command line
(`hearthsync.chaos.console`).  How-to: ``docs/how-to/chaos.md``.
"""

from hearthsync.chaos.check import Findings, Write, digest, document_states, verify
from hearthsync.chaos.harness import Failure, Report, replay_command, run, run_schedule, shrink
from hearthsync.chaos.plan import BUGS, FAULT_KINDS, OP_KINDS, Fault, Op, Plan, Scenario, make_plan
from hearthsync.chaos.sim import Outcome, Simulation, simulate
from hearthsync.chaos.workload import TinyEmbedder

__all__ = [
    "BUGS",
    "FAULT_KINDS",
    "OP_KINDS",
    "Failure",
    "Fault",
    "Findings",
    "Op",
    "Outcome",
    "Plan",
    "Report",
    "Scenario",
    "Simulation",
    "TinyEmbedder",
    "Write",
    "digest",
    "document_states",
    "make_plan",
    "replay_command",
    "run",
    "run_schedule",
    "shrink",
    "simulate",
    "verify",
]
