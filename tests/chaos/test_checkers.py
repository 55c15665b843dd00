"""The checkers catch what a review found them passing: one deliberately broken build per gap
(`hearthsync.chaos.bugs`), each reported with a seed whose replay fails the same way.

Before the checkers were made stricter, each of these builds passed every schedule:

* ``drop-merged-values``: a write counted as present when its slot held the same stamp; the
  value was never compared;
* ``forget-an-extra-user``: the users whose data need not survive were those the robots said
  were forgotten, not those the workload asked to forget;
* ``refuse-every-preference``: a write failing with `NotFoundError` was "not acknowledged";
* ``keep-forgotten-rows``: remnants and losses were checked in memory only, never in the store;
* ``never-scrub-after-forgetting``: remnants were what memory shows (documents, the user's
  entry, keys): a purge that never vacuumed the file left nothing there to see;
* ``keep-forgotten-embeddings``: the store was checked only through what a restarted robot
  loads, and a forgotten user's embedding rows (their events' words) are loaded by none;
* ``purge-a-revoked-robots-writes``: every write of a revoked robot was excused, those the
  household already held too;
* ``seal-under-the-oldest-epoch``: the leak check looked only at writes whose reported key
  epoch was the revocation's, so a rotation that never took effect made it check nothing.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hearthsync import Peer, chaos, enrolment
from hearthsync.chaos import Scenario, run_schedule
from hearthsync.chaos.check import Replica, Write, _leaks
from hearthsync.chaos.harness import problems
from hearthsync.chaos.workload import Writer
from hearthsync.ids import DocId, Scope, UserId
from tests.test_forgetting import enrol_household

FORGETTING = {"pref": 2, "event": 2, "user": 1, "forget": 1}
#: bug -> (scenario, a seed it fails at, a problem line that must be reported)
CASES = {
    "drop-merged-values": (
        Scenario(peers=3, edits=10, duration=6.0, mix={"profile": 1, "calibration": 1}),
        1,
        "with another value",
    ),
    "forget-an-extra-user": (
        Scenario(
            peers=3, edits=15, duration=8.0, mix={"pref": 3, "event": 1, "user": 1, "forget": 1}
        ),
        1,
        "user bob forgotten on",
    ),
    "refuse-every-preference": (
        Scenario(peers=3, edits=10, duration=6.0, mix={"pref": 1}),
        1,
        "UnexplainedRefusal",
    ),
    "keep-forgotten-rows": (
        Scenario(peers=3, edits=15, duration=8.0, faults=("drop",), fault_rate=0.2, mix=FORGETTING),
        1,
        "forgetting remnant: after a restart:",
    ),
    "never-scrub-after-forgetting": (
        Scenario(peers=3, edits=15, duration=8.0, faults=("drop",), fault_rate=0.2, mix=FORGETTING),
        1,
        "has not finished purging",
    ),
    "keep-forgotten-embeddings": (
        Scenario(peers=3, edits=15, duration=8.0, faults=("drop",), fault_rate=0.2, mix=FORGETTING),
        3,
        "yet holds embeddings",
    ),
    "purge-a-revoked-robots-writes": (
        Scenario(
            peers=4,
            edits=15,
            duration=8.0,
            faults=("revoke", "drop", "crash"),
            fault_rate=0.3,
            mix={"pref": 3, "move": 1, "calibration": 1},
        ),
        1,
        "lost: ",
    ),
    "seal-under-the-oldest-epoch": (
        Scenario(
            peers=4,
            edits=15,
            duration=8.0,
            faults=("revoke", "partition"),
            fault_rate=0.5,
            mix={"pref": 3, "move": 1, "event": 1},
        ),
        0,
        "sealed under epoch",
    ),
}


@pytest.mark.parametrize("bug", sorted(CASES))
def test_a_broken_build_is_reported_with_a_seed_that_replays_it(bug: str) -> None:
    scenario, seed, expected = CASES[bug]
    broken = replace(scenario, bug=bug)
    report = chaos.run(schedules=1, seed=seed, scenario=broken, jobs=1, minimise=False)
    assert not report.ok
    assert report.failing_seeds == [seed]
    failure = report.failures[0]
    assert any(expected in line for line in failure.problems), failure.problems[:5]
    assert f"--seed {seed}" in failure.replay
    assert f"--bug {bug}" in failure.replay
    again = run_schedule(seed, broken)  # the seed replays it: the same problems
    assert problems(again) == failure.problems


@pytest.mark.parametrize("bug", sorted(CASES))
def test_the_same_schedule_passes_without_the_bug(bug: str) -> None:
    scenario, seed, _ = CASES[bug]
    outcome = run_schedule(seed, scenario)
    assert problems(outcome) == []
    assert outcome.findings.verified > 0


def test_a_value_written_at_its_default_is_read_as_held() -> None:
    """A stored record leaves out the fields at their default: a calibration set back to
    0.5 holds no ``verbosity`` entry, which is 0.5, not another value (seeds 7038, 7059 and
    7182 of five robots failed on it); another value is still one."""
    from hearthsync.chaos.check import Write, _differs
    from hearthsync.ids import DocId

    write = Write(
        1, "calibration", DocId("user/bob/calibration"), "core", "calibration", "x", "s", 0,
        expect={"verbosity": 0.5}, merged="verbosity",
    )  # fmt: skip
    assert _differs({"stamps": {"verbosity": "s"}}, write) is None
    assert _differs({"verbosity": 0.9}, write) == (
        "holds {'verbosity': 0.9} instead of {'verbosity': 0.5}"
    )


def test_a_purge_a_crash_cut_short_is_no_error() -> None:
    """A robot crashed while a forget's purge ran in the background: the purge's next read of
    the closed store must end it quietly (it is finished at the next open), not be logged as
    a failure (seed 490819 of a 1,000-schedule run)."""
    outcome = run_schedule(490819, Scenario(edits=50, duration=30.0))
    assert problems(outcome) == []


@pytest.mark.parametrize("sealed", ["held back", "under the old epoch"])
async def test_a_write_held_back_for_want_of_the_newest_key_is_no_leak_and_one_sealed_old_is(
    tmp_path: Path, sealed: str
) -> None:
    """Two revocations: the hall holds the second's scope key, alice's key of the first's
    epoch only.  It seals nothing of alice's then (the workload records epoch -1), which the
    checker took for a write sealed under an epoch before the first revocation's (seed
    8000096, found in review).  A write sealed under the old epoch while the writer held a
    newer key of the scope stays a leak: the writer's newest epoch is the scope's, not the
    user's, so a keyring sealing under alice's newest key alone is caught (found in review)."""
    enrol_household(tmp_path, ["owner", "hall", "garden"])
    async with (
        Peer.open(tmp_path / "hall", device="hall") as hall,
        Peer.open(tmp_path / "garden", device="garden") as garden,
    ):
        state = hall.household
        assert state is not None
        ring = state.keyring
        ring.create_data_key("alice", "core", random.Random(1).randbytes)
        ring.rotate_for_revocation(["core"], random.Random(2).randbytes, serial=1)
        ring.rotate_for_revocation(["core"], random.Random(3).randbytes, users=(), serial=2)
        del ring._data_keys[(UserId("alice"), Scope("core"), 2)]  # not granted yet
        ring._changed()
        writer = Writer(1, hall, ring)
        epoch = writer._epoch("core", "alice")
        assert (epoch, writer.held_epoch) == (-1, 2)
        if sealed == "under the old epoch":
            epoch = 1  # a keyring that seals under alice's newest key, ignoring the scope's
        write = Write(
            1, "pref", DocId("user/alice/prefs"), "core", "prefs", "tea", "t", epoch,
            started_at=10.0, held_epoch=writer.held_epoch,
        )  # fmt: skip
        revoked = Replica(2, garden, frozenset({"core"}))
        leaks = _leaks([write], revoked, {"core": 2}, {1: 5.0})
        assert leaks == ([] if sealed == "held back" else [
            f"{write.describe()} made at t=10.000, after r1 processed the revocation, "
            "sealed under epoch 1 < 2"
        ])  # fmt: skip


async def test_a_revoked_robot_holding_only_a_new_data_key_is_a_leak(tmp_path: Path) -> None:
    """Found in review: the key check looked at the newest scope key only, and a rotation's
    grants send every data key of the new epoch before its scope key: a revoked robot whose
    batch of grants was cut off after alice's new data key (with which it reads everything
    of alice's sealed under it) passed."""
    enrol_household(tmp_path, ["owner", "hall", "garden"])
    async with (
        Peer.open(tmp_path / "owner", device="owner") as owner,
        Peer.open(tmp_path / "garden", device="garden") as garden,
    ):
        await owner.add_user("alice", name="Alice")
        mine, theirs = owner.household, garden.household
        assert mine is not None
        assert theirs is not None
        epochs = enrolment.revoke(tmp_path / "owner", mine, owner.identity, garden.device_id,
                                  now=int(owner.wall()), users=owner.users())  # fmt: skip
        assert mine.trust.revocations is not None
        theirs.trust.accept_revocations(mine.trust.revocations, int(garden.wall()))
        grants = mine.keyring.grants_for(
            owner.identity, garden.identity.verify_key, ["core"], random.Random(1).randbytes
        )
        for data in grants:  # a broken build grants to the revoked robot; cut off midway
            grant = theirs.keyring.accept_grant(
                data, garden.identity, trust=theirs.trust, now=int(garden.wall())
            )
            if grant.kind == "data" and grant.epoch == epochs["core"]:
                break
        assert theirs.keyring.current_epoch("core") < epochs["core"]  # the scope key's
        revoked = Replica(2, garden, frozenset({"core"}))
        leaks = _leaks([], revoked, epochs, None)
        assert f"r2 holds a key of core epoch {epochs['core']}" in leaks


# ------------------------------------------------------- blind spots a review found (stop 29)


def _caught(outcome: chaos.Outcome, marker: str) -> list[str]:
    return [line for line in problems(outcome) if marker in line]


def test_a_view_reading_stale_records_over_converged_documents_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checkers compared documents only: a robot whose typed view kept a record a
    remote update had changed (a cache not cleared) read another value than the others over
    identical documents, and every checker passed."""
    from hearthsync.crdt import handles

    def stale(self: handles.SlotMap[Any], event: Any) -> None:
        incoming = self._replica.incoming
        if not incoming:
            return
        keys = None if incoming > handles.BULK_BYTES else handles.event_field(event, "keys")
        if keys is None:
            self._slots = None
            self._cache.clear()
            self._dirty.clear()
            self._undecodable.clear()
            return
        for slot in keys:  # the cached record is kept: the bug
            self._undecodable.discard(slot)
            if self._slots is not None:
                self._dirty.add(slot)

    monkeypatch.setattr(handles.SlotMap, "_on_change", stale)
    scenario = Scenario(peers=4, edits=15, duration=8.0, faults=("drop", "partition"),
                        fault_rate=0.3, mix={"pref": 1})  # fmt: skip
    assert _caught(run_schedule(0, scenario), "stale")


def test_members_taking_a_revoked_robots_writes_after_all_knew_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revoked robot's write no member held at its revocation counted as not required,
    and nothing checked that the members refused it: a build that enforced the list only
    where keys are granted (sessions took the revoked robot's envelopes) passed."""
    import sys

    from hearthsync.crypto import certificate

    real = certificate.TrustStore._verify
    granting = {"send_grants", "_grant_slot_again", "grants_for", "_take_pending_grants",
                "_on_grant"}  # fmt: skip

    def ignores_the_list(self: Any, cert: Any, now: int, *, depth: int) -> Any:
        frame = sys._getframe(1)
        while frame is not None:  # where keys are granted, the list still holds
            if frame.f_code.co_name in granting:
                return real(self, cert, now, depth=depth)
            frame = frame.f_back  # type: ignore[assignment]
        revoked, self._revoked = self._revoked, frozenset()
        try:
            return real(self, cert, now, depth=depth)
        finally:
            self._revoked = revoked

    scenario = Scenario(peers=4, edits=20, duration=10.0, faults=("revoke",), fault_rate=0.3,
                        mix={"pref": 2, "move": 1, "event": 1})  # fmt: skip
    assert not _caught(run_schedule(0, scenario), "after every member knew")
    monkeypatch.setattr(certificate.TrustStore, "_verify", ignores_the_list)
    assert _caught(run_schedule(0, scenario), "after every member knew")


def test_a_profile_fact_dropped_by_a_later_fact_of_the_same_robot_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fact's write counted as held when its entry had no stamp but its field's stamp was
    newer: a merge that kept only the facts of each robot's latest patch lost the others on
    every robot, and every checker passed."""
    import hearthsync.peer as peer_module

    real = peer_module.trim_removals

    def latest_only(entries: Any, stamps: Any, others: Any, name: str) -> Any:
        entries, stamps = real(entries, stamps, others, name)
        newest = max(stamps.values(), default="")
        keep = {k for k, at in stamps.items() if at == newest}
        return ({k: v for k, v in entries.items() if k in keep},
                {k: at for k, at in stamps.items() if k in keep})  # fmt: skip

    monkeypatch.setattr(peer_module, "trim_removals", latest_only)
    scenario = Scenario(peers=3, edits=14, duration=6.0, faults=("drop",), fault_rate=0.2,
                        mix={"profile": 1})  # fmt: skip
    assert _caught(run_schedule(0, scenario), "profile by")
