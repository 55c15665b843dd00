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


async def test_an_owner_restored_from_before_its_revocation_rotates_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    enrol_household(tmp_path, NAMES)
    owner_dir, hall_dir, garden_dir = (tmp_path / name for name in NAMES)
    async with Peer.open(owner_dir, device="owner") as owner:
        await owner.add_user("alice", name="Alice")
    backup = tmp_path / "backup"
    shutil.copytree(owner_dir, backup)

    # the owner revokes the garden robot; the hall robot gets the list and the new keys
    async with AsyncExitStack() as stack:
        owner = await stack.enter_async_context(Peer.open(owner_dir, device="owner"))
        hall = await stack.enter_async_context(Peer.open(hall_dir, device="hall"))
        hub = await stack.enter_async_context(service(owner))
        await stack.enter_async_context(service(hall, hub.port))
        assert owner.household is not None
        garden = enrolment.device_named(owner.household, "garden")
        epochs = enrolment.revoke(owner_dir, owner.household, owner.identity, garden,
                                  now=int(owner.wall()), users=owner.users())  # fmt: skip
        assert epochs["core"] == 1
        owner.trust_changed()
        hub.trust_changed()
        await owner.set_preference("alice", "tea/mug", "green-mug")  # sealed under epoch 1
        await until([hall], lambda: hall.preference("alice", "tea/mug") is not None)
        assert epoch(hall) == 1

    # the owner's disk fails; it is restored from the backup, from before the revocation
    shutil.rmtree(owner_dir)
    shutil.copytree(backup, owner_dir)
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
        assert "rotating again" in caplog.text
        # ... and the hall robot seals under it too, once granted
        await owner.set_preference("alice", "tea/cup", "blue-cup")
        await until([hall], lambda: hall.preference("alice", "tea/cup") is not None)
        assert epoch(hall) == 2
        assert hall.household is not None
        assert hall.household.keyring.sealing_epoch("core", "alice") == 2

    garden_state = enrolment.load(garden_dir)
    assert garden_state is not None
    assert garden_state.keyring.current_epoch("core") == 0  # never granted anything newer
