"""Revocation across real peers on loopback: an owner restored from a backup older than its
last revocation rotates again, rather than sealing under the epoch the revoked robot holds."""

from __future__ import annotations

import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from hearthsync import Peer, enrolment
from tests.test_forgetting import enrol_household, service, until

NAMES = ["owner", "hall", "garden"]


def epoch(peer: Peer, scope: str = "core") -> int:
    assert peer.household is not None
    return peer.household.keyring.current_epoch(scope)


async def backed_up(tmp_path: Path, names: list[str]) -> tuple[dict[str, Path], Path]:
    """A household of ``names`` (the first the owner, which knows alice), and a copy of the
    owner's folder: its backup."""
    enrol_household(tmp_path, names)
    folder = {name: tmp_path / name for name in names}
    async with Peer.open(folder[names[0]], device=names[0]) as owner:
        await owner.add_user("alice", name="Alice")
    backup = tmp_path / "backup"
    shutil.copytree(folder[names[0]], backup)
    return folder, backup


async def revoke(folder: dict[str, Path], linked: list[str], victim: str, key: str) -> str:
    """The owner, linked to ``linked``, revokes ``victim`` (as the console does), then writes
    ``key`` under the new epoch and waits until every linked robot holds it; the victim's id."""
    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(Peer.open(folder["owner"], device="owner"))
        hub = await stack.enter_async_context(service(owner))
        robots = []
        for name in linked:
            robots.append(await stack.enter_async_context(Peer.open(folder[name], device=name)))
            await stack.enter_async_context(service(robots[-1], hub.port))
        assert owner.household is not None
        device = enrolment.device_named(owner.household, victim)
        enrolment.revoke(folder["owner"], owner.household, owner.identity, device,
                         now=int(owner.wall()), users=owner.users())  # fmt: skip
        owner.trust_changed()
        hub.trust_changed()
        await owner.set_preference("alice", key, "x")  # sealed under the new epoch
        await until(robots, lambda: all(r.preference("alice", key) for r in robots))
    return device


def restore(folder: Path, backup: Path) -> None:
    """The owner's disk fails; its folder comes back from the backup."""
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)


async def test_an_owner_restored_from_before_its_revocation_rotates_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, backup = await backed_up(tmp_path, NAMES)
    owner_dir, hall_dir, garden_dir = (folder[name] for name in NAMES)
    # the owner revokes the garden robot; the hall robot gets the list and the new keys
    garden = await revoke(folder, ["hall"], "garden", "tea/mug")
    hall_state = enrolment.load(hall_dir)
    assert hall_state is not None
    assert hall_state.keyring.current_epoch("core") == 1
    restore(owner_dir, backup)  # from before the revocation
    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(Peer.open(owner_dir, device="owner"))
        hall = await stack.enter_async_context(Peer.open(hall_dir, device="hall"))
        assert epoch(owner) == 0
        hub = await stack.enter_async_context(service(owner))
        await stack.enter_async_context(service(hall, hub.port))
        # the hall robot's list comes back to it; its rotation's keys cannot (members grant
        # nothing), so it rotates again, past the epoch the garden robot holds.  (Before, it
        # sealed under epoch 0, which the garden robot holds, and never opened what the hall
        # robot sealed under epoch 1: this wait timed out.)
        await until([owner], lambda: owner.preference("alice", "tea/mug") is not None)
        assert owner.household is not None
        assert owner.household.trust.is_revoked(garden)
        assert owner.household.trust.revocations is not None
        assert owner.household.trust.revocations.serial == 2
        assert epoch(owner) == 2
        assert owner.household.keyring.sealing_epoch("core", "alice") == 2
        assert "but not the keys its rotation made" in caplog.text
        # ... and the hall robot seals under it too, once granted
        await owner.set_preference("alice", "tea/cup", "blue-cup")
        await until([hall], lambda: hall.preference("alice", "tea/cup") is not None)
        assert epoch(hall) == 2
        assert hall.household is not None
        assert hall.household.keyring.sealing_epoch("core", "alice") == 2

    garden_state = enrolment.load(garden_dir)
    assert garden_state is not None
    assert garden_state.keyring.current_epoch("core") == 0  # never granted anything newer


async def test_a_restored_owner_merges_the_lists_it_signed_apart(tmp_path: Path) -> None:
    """Found in review: the restored owner first met the attic robot, which held only the
    first of two lists (garden revoked), and rotated on it: its own list 2 revoked the garden
    robot alone, while the household's list 2 revoked the shed robot too.  Each side ignored
    the other's list of that serial; the hall robot refused the owner's second key of epoch 2
    and closed every session (401), and the owner never revoked the shed robot.  Now the
    owner merges what it hears of lists it signed apart: list 3, both robots, epoch 3."""
    folder, backup = await backed_up(tmp_path, ["owner", "hall", "attic", "garden", "shed"])
    revoked = {
        "garden": await revoke(folder, ["hall", "attic"], "garden", "tea/one"),  # list 1
        "shed": await revoke(folder, ["hall"], "shed", "tea/two"),  # list 2: the attic is away
    }
    restore(folder["owner"], backup)

    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(Peer.open(folder["owner"], device="owner"))
        attic = await stack.enter_async_context(Peer.open(folder["attic"], device="attic"))
        hub = await stack.enter_async_context(service(owner))
        await stack.enter_async_context(service(attic, hub.port))
        # the attic robot's list 1 comes back first: the owner rotates on it (list 2, which
        # the household used already), and what the attic robot writes reaches it then
        await attic.set_preference("alice", "tea/attic", "x")
        await until([owner], lambda: owner.preference("alice", "tea/attic") is not None)
        trust = owner.household.trust if owner.household else None
        assert trust is not None
        assert trust.revocations is not None
        assert trust.revocations.serial == 2
        assert not trust.is_revoked(revoked["shed"])

        hall = await stack.enter_async_context(Peer.open(folder["hall"], device="hall"))
        await stack.enter_async_context(service(hall, hub.port))
        # the hall robot's list 2 conflicts with the owner's: merged, at serial 3
        await hall.set_preference("alice", "tea/hall", "x")
        await until([owner], lambda: owner.preference("alice", "tea/hall") is not None)
        assert trust.revocations.serial == 3
        assert set(trust.revocations.revoked) == {revoked["garden"], revoked["shed"]}
        assert trust.conflicting == ()
        assert epoch(owner) == 3
        await owner.set_preference("alice", "tea/three", "x")
        await until([hall, attic], lambda: all(
            r.preference("alice", "tea/three") is not None for r in (hall, attic)
        ))  # fmt: skip
        for robot in (hall, attic):
            assert robot.household is not None
            assert robot.household.trust.revocations == trust.revocations
            assert robot.household.keyring.sealing_epoch("core", "alice") == 3

    for victim in ("garden", "shed"):
        state = enrolment.load(folder[victim])
        assert state is not None
        assert state.keyring.current_epoch("core") == 0  # never linked since: nothing newer


async def test_a_restored_owner_revoking_a_robot_again_is_told_apart_and_merges(
    tmp_path: Path,
) -> None:
    """Found in review: an owner restored from before its revocation of the garden robot,
    which it shows as trusted, revokes it again.  It signed the household's very list
    (Ed25519 signatures are deterministic) with a different key of epoch 1: no robot saw a
    conflict, the hall robot kept its own key of the epoch, could not open what the owner
    sealed, and reconnected (409) for good.  Lists carry a nonce now: the two lists of serial
    1 conflict, and the owner merges them into list 2 and epoch 2."""
    folder, backup = await backed_up(tmp_path, NAMES)
    owner_dir, hall_dir, garden_dir = (folder[name] for name in NAMES)
    garden = await revoke(folder, ["hall"], "garden", "tea/one")  # list 1, epoch 1
    household_state = enrolment.load(owner_dir)
    assert household_state is not None
    household_list = household_state.trust.revocations
    restore(owner_dir, backup)
    async with Peer.open(owner_dir, device="owner") as owner:  # offline, it revokes again
        assert owner.household is not None
        enrolment.revoke(owner_dir, owner.household, owner.identity, garden,
                         now=int(owner.wall()), users=owner.users())  # fmt: skip
        again = owner.household.trust.revocations
        assert again is not None
        assert household_list is not None
        assert (again.serial, again.revoked) == (household_list.serial, household_list.revoked)
        assert again != household_list  # told apart by their nonces

    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(Peer.open(owner_dir, device="owner"))
        hall = await stack.enter_async_context(Peer.open(hall_dir, device="hall"))
        hub = await stack.enter_async_context(service(owner))
        await stack.enter_async_context(service(hall, hub.port))
        await owner.add_user("bob", name="Bob")  # the household document: a scope key's
        await hall.set_preference("alice", "tea/hall", "x")
        await until([hall], lambda: "bob" in hall.users())
        await until([owner], lambda: owner.preference("alice", "tea/hall") is not None)
        assert owner.household is not None
        assert hall.household is not None
        merged = owner.household.trust.revocations
        assert merged is not None
        assert merged.serial == 2
        assert merged.revoked == (garden,)
        assert owner.household.trust.conflicting == ()
        assert hall.household.trust.revocations == merged
        assert epoch(owner) == epoch(hall) == 2
    garden_state = enrolment.load(garden_dir)
    assert garden_state is not None
    assert garden_state.keyring.newest_held("core") == 0


async def test_the_owner_keys_users_it_is_asked_for_up_to_a_bound_of_unlisted_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A member asks the owner for the keys of a user no robot keyed in the current epoch
    (one only a revoked admin had added): the owner keys them (`Peer.keys_wanted`).  Found
    in review: any member could ask for any id on session after session, each keyed in
    every scope, granted everywhere and rotated at every revocation, until the owner's
    credentials were too large to load.  Past `MAX_UNLISTED_KEYED` users the household does
    not list, it keys no more; one listed since makes room."""
    from hearthsync.peer import MAX_UNLISTED_KEYED

    enrol_household(tmp_path, ["owner", "hall"])
    async with (
        Peer.open(tmp_path / "owner", device="owner") as owner,
        Peer.open(tmp_path / "hall", device="hall") as hall,
    ):
        assert owner.household is not None
        assert hall.household is not None
        ring = owner.household.keyring
        before = ring.keyed_users()
        hall.keys_wanted("ghost0")  # a member keys no one
        assert hall.household.keyring.keyed_users() == before
        for i in range(MAX_UNLISTED_KEYED + 4):
            owner.keys_wanted(f"ghost{i}")
        keyed = ring.keyed_users() - before
        assert keyed == {f"ghost{i}" for i in range(MAX_UNLISTED_KEYED)}
        assert {s for (u, s, _) in ring._data_keys if u == "ghost0"} == set(ring.scopes)
        assert "users keyed so are not on the household's list" in caplog.text
        reloaded = enrolment.load(tmp_path / "owner")  # saved with the credentials
        assert reloaded is not None
        assert "ghost0" in reloaded.keyring.keyed_users()
        await owner.add_user("ghost0", name="Carol")  # listed now: room for one more
        owner.keys_wanted("late")
        owner.keys_wanted("later")
        assert ring.keyed_users() - before - keyed == {"late"}
        # one never listed can be forgotten, its keys shredded: room again (found in review:
        # `forget` knew only listed users, and the bound never freed up)
        await owner.forget("ghost1")
        assert "ghost1" not in ring.keyed_users()
        owner.keys_wanted("later")
        assert "later" in ring.keyed_users()
