"""Who makes a user's data keys: the robot that adds them, if it may (owner, admin); the
owner, for a user a member added; never a second robot for a user someone keyed already."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from hearthsync import Peer
from hearthsync.crdt.handles import HouseholdDoc
from hearthsync.ids import DocId
from tests.test_forgetting import enrol_household
from tests.test_peer import send_all

HOUSEHOLD = DocId("household")


@pytest.fixture
async def household(tmp_path: Path) -> AsyncIterator[list[Peer]]:
    """The owner and two members, enrolled in process."""
    names = ["owner", "hall", "garden"]
    enrol_household(tmp_path, names)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Peer.open(tmp_path / n, device=n)) for n in names]


def keyed(peer: Peer) -> dict[str, str]:
    return dict(peer._handle(HOUSEHOLD, HouseholdDoc).keyed.items())


def holds_keys(peer: Peer, user: str) -> bool:
    assert peer.household is not None
    return peer.household.keyring.holds_data_keys(user)


async def settle(peer: Peer) -> None:
    """Let the owner's keying (run after the merge's transaction) and its marker land."""
    for _ in range(3):
        await asyncio.sleep(0)  # the call_soon after the merge
    await peer.flush()


async def test_the_owner_keys_a_user_a_member_added_and_says_so(
    household: list[Peer],
) -> None:
    owner, hall, _garden = household
    await hall.add_user("erin", name="Erin")
    assert not holds_keys(hall, "erin")  # a member makes no keys
    assert "erin" not in keyed(hall)
    await send_all(hall, owner)
    await settle(owner)
    assert holds_keys(owner, "erin")
    assert keyed(owner) == {"erin": owner.device_id}


async def test_the_owner_makes_no_second_key_for_a_user_another_robot_keyed(
    household: list[Peer],
) -> None:
    """An admin adds dave and makes his keys; the owner hears of dave through a member before
    any grant from the admin.  It made keys of its own, different ones, and every robot
    holding the admin's refused it from then on (found in review).  The admin's registration
    carries its marker in the same update, and the owner leaves dave alone."""
    owner, hall, _garden = household
    admin_id = "A" * 16  # the admin robot, as its marker names it

    def admin_registers(_: object) -> None:
        handle = hall._handle(HOUSEHOLD, HouseholdDoc)
        handle.users["dave"] = "Dave"
        handle.keyed["dave"] = admin_id

    await hall._docs.write(HOUSEHOLD, admin_registers)
    await send_all(hall, owner)
    await settle(owner)
    assert "dave" in owner.users()
    assert not holds_keys(owner, "dave")
    assert keyed(owner) == {"dave": admin_id}


async def test_a_user_keyed_at_an_older_epoch_gets_no_new_key_from_the_owner(
    household: list[Peer],
) -> None:
    """An admin that revokes a robot rotates the keys and grants the new epoch's scope key,
    then each user's data key.  An owner that heard of a user in between made that user a
    new-epoch key of its own: two keys for one epoch (found in review).  A user this robot
    holds any key of is not keyed again: the rotating robot's grant brings the new one."""
    import random

    owner, _hall, _garden = household
    await owner.add_user("alice", name="Alice")  # keyed by the owner, at epoch 0
    assert owner.household is not None
    ring = owner.household.keyring
    epochs = ring.rotate_for_revocation(["core"], random.Random(1).randbytes)
    del ring._data_keys[("alice", "core", epochs["core"])]  # its grant is still on the way
    owner._key_new_users()
    await settle(owner)
    assert ("alice", "core", epochs["core"]) not in ring._data_keys
