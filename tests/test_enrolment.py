"""The credentials file: saved by a running robot at every grant, written by other processes."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from hearthsync import Peer, enrolment
from hearthsync.crypto import pairing
from hearthsync.crypto.certificate import Certificate, Revocations
from hearthsync.crypto.identity import KEY_FILE, DeviceIdentity
from hearthsync.crypto.pairing import PairingError, join_request, open_join_response
from hearthsync.errors import OverreachError, StoreError, ValidationError
from hearthsync.transport.service import JOIN_PATH, SyncService
from tests.crypto.conftest import identity
from tests.test_forgetting import enrol_household

TIMEOUT_S = 10.0


def test_a_save_keeps_what_another_writer_put_in_the_file_and_reads_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot saves its credentials at every key grant it accepts.  It reads the file again
    only if someone else wrote it since (``hearth invite`` beside ``hearth run``), and then
    keeps what they wrote."""
    enrol_household(tmp_path, ["owner"])
    folder, now = tmp_path / "owner", int(time.time())
    running = enrolment.load(folder, now)
    assert running is not None
    reads: list[Path] = []
    load = enrolment.load
    monkeypatch.setattr(enrolment, "load", lambda f, n=None: reads.append(f) or load(f, n))
    enrolment.save(folder, running, now)  # a grant: the file was written by another state
    assert len(reads) == 1
    enrolment.save(folder, running, now)  # another grant: nobody wrote it since
    assert len(reads) == 1
    other = load(folder, now)  # `hearth invite`, in another process
    assert other is not None
    enrolment.add_invite(folder, other, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now)
    enrolment.save(folder, running, now)
    assert len(reads) == 3  # add_invite's own read, then this save's
    kept = load(folder, now)
    assert kept is not None
    assert len(kept.invites) == 1


def made_admin(
    owner: DeviceIdentity,
    state: enrolment.HouseholdState,
    admin: DeviceIdentity,
    now: int,
    *,
    ttl_s: int,
) -> Certificate:
    """The certificate of ``admin``, made an admin reading ``core`` by the owner."""
    return Certificate.issue(
        owner, household_id=state.household.id, device_pk=bytes(admin.verify_key),
        device_name="admin", role="admin", scopes=("core",), issued_at=now,
        expires_at=now + ttl_s,
    )  # fmt: skip


def _kitchen_enrolled(tmp_path: Path, now: int) -> tuple[Path, DeviceIdentity, DeviceIdentity]:
    """An owner, and a kitchen robot it enrolled with core, spatial and history."""
    owner_dir, kitchen_dir = tmp_path / "owner", tmp_path / "kitchen"
    owner_dir.mkdir()
    kitchen_dir.mkdir()
    owner = DeviceIdentity.load_or_create(owner_dir)
    kitchen = DeviceIdentity.load_or_create(kitchen_dir)
    state = enrolment.create(owner_dir, owner, "Home", "owner", now=now)
    invite = enrolment.add_invite(
        owner_dir, state, "127.0.0.1", 9, scopes=("core", "spatial", "history"), ttl_s=600,
        now=now,
    )  # fmt: skip
    answer = enrolment.enrol(
        owner_dir, owner, join_request(invite.secret, kitchen, "kitchen"), now=now
    )
    enrolment.adopt(kitchen_dir, kitchen, open_join_response(answer, invite.secret, kitchen), now)
    return owner_dir, owner, kitchen


def _request_for(secret: bytes, public_key: bytes, name: str) -> bytes:
    """A join request carrying someone else's public key (public: every handshake shows it)."""
    mac = pairing._mac(secret, public_key + name.encode(), pairing._REQUEST_PERSON)
    return pairing.pack([1, public_key, name, mac])


def test_an_invite_does_not_certify_a_device_enrolled_already(tmp_path: Path) -> None:
    """Whoever holds any invite code could send the kitchen's public key, or the owner's, in a
    join request: certifying it again rewrote that device's role and scopes for the whole
    household (the owner's root among them, and no credentials file loaded again)."""
    now = int(time.time())
    owner_dir, owner, kitchen = _kitchen_enrolled(tmp_path, now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    before = state.trust.certificate_of(kitchen.device_id)
    for victim in (kitchen, owner):
        state = enrolment.load(owner_dir, now)
        assert state is not None
        guest = enrolment.add_invite(
            owner_dir, state, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now
        )
        request = _request_for(guest.secret, bytes(victim.verify_key), "guest")
        with pytest.raises(PairingError, match="enrolled already"):
            enrolment.enrol(owner_dir, owner, request, now=now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    assert state.trust.certificate_of(kitchen.device_id) == before


def test_the_owner_invites_an_admin_who_invites_members_and_no_admin(tmp_path: Path) -> None:
    now = int(time.time())
    owner_dir, hall_dir = tmp_path / "owner", tmp_path / "hall"
    owner_dir.mkdir()
    hall_dir.mkdir()
    owner = DeviceIdentity.load_or_create(owner_dir)
    hall = DeviceIdentity.load_or_create(hall_dir)
    state = enrolment.create(owner_dir, owner, "Home", "owner", now=now)
    with pytest.raises(ValidationError, match="invited as member or admin, not 'owner'"):
        enrolment.add_invite(
            owner_dir, state, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now, role="owner"
        )
    invite = enrolment.add_invite(
        owner_dir, state, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now, role="admin"
    )
    answer = enrolment.enrol(owner_dir, owner, join_request(invite.secret, hall, "hall"), now=now)
    admin = enrolment.adopt(hall_dir, hall, open_join_response(answer, invite.secret, hall), now)
    assert (admin.certificate.role, admin.is_admin) == ("admin", True)
    credentials = (hall_dir / enrolment.CREDENTIALS_FILE).read_bytes()
    with pytest.raises(ValidationError, match="only the household owner can invite an admin"):
        enrolment.add_invite(
            hall_dir, admin, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now, role="admin"
        )
    assert (hall_dir / enrolment.CREDENTIALS_FILE).read_bytes() == credentials
    # found in review: an admin given core certified robots reading health, whose keys the
    # owner then granted them (its certificates would not verify now: SPEC §3)
    with pytest.raises(ValidationError, match="does not read health, so it cannot invite"):
        enrolment.add_invite(
            hall_dir, admin, "127.0.0.1", 9, scopes=("core", "health"), ttl_s=600, now=now
        )
    assert (hall_dir / enrolment.CREDENTIALS_FILE).read_bytes() == credentials
    member = enrolment.add_invite(
        hall_dir, admin, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now
    )
    assert [i.role for i in admin.invites] == ["member"]
    assert member.secret == admin.invites[0].secret


def test_an_invite_works_for_at_most_30_days(tmp_path: Path) -> None:
    """Found in review: a huge ``ttl_s`` raised OverflowError writing the credentials file."""
    now = int(time.time())
    owner = DeviceIdentity.load_or_create(tmp_path)
    state = enrolment.create(tmp_path, owner, "Home", "owner", now=now)
    credentials = (tmp_path / enrolment.CREDENTIALS_FILE).read_bytes()
    for ttl_s in (0, enrolment.MAX_INVITE_TTL_S + 1, 10**30):
        with pytest.raises(ValidationError, match="an invite works for 1 s to 30 days"):
            enrolment.add_invite(
                tmp_path, state, "127.0.0.1", 9, scopes=("core",), ttl_s=ttl_s, now=now
            )
    assert (tmp_path / enrolment.CREDENTIALS_FILE).read_bytes() == credentials
    enrolment.add_invite(
        tmp_path, state, "127.0.0.1", 9, scopes=("core",), ttl_s=enrolment.MAX_INVITE_TTL_S,
        now=now,
    )  # fmt: skip


def test_revoking_a_device_starts_a_new_epoch_of_every_scope(tmp_path: Path) -> None:
    """Not only of the scopes of the certificate held for it now: an older certificate may have
    granted more, and the device keeps the keys it was given then."""
    now = int(time.time())
    owner_dir, owner, kitchen = _kitchen_enrolled(tmp_path, now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    epochs = enrolment.revoke(owner_dir, state, owner, kitchen.device_id, now=now)
    assert set(epochs) == set(state.keyring.scopes)
    assert set(epochs) >= {"core", "health", "history", "household", "spatial"}
    assert set(epochs.values()) == {1}


@pytest.mark.parametrize("role", ["admin", "member"])
def test_only_the_owner_revokes_and_a_refusal_changes_nothing(tmp_path: Path, role: str) -> None:
    """Lists from one signer form one chain.  When an admin revoked too, two lists made apart
    (in a partition) had one serial; each side ignored the other's list and granted its new
    keys to the robot the other side had revoked."""
    now = int(time.time())
    _owner_dir, owner, kitchen = _kitchen_enrolled(tmp_path, now)
    kitchen_dir = tmp_path / "kitchen"
    state = enrolment.load(kitchen_dir, now)
    assert state is not None
    if role == "admin":  # the owner made the kitchen an admin
        held = state.certificate
        promoted = Certificate.issue(
            owner, household_id=held.household_id, device_pk=held.device_pk,
            device_name=held.device_name, role="admin", scopes=held.scopes,
            issued_at=now, expires_at=now + 3600,
        )  # fmt: skip
        state.trust.add(promoted, now)
        state = dataclasses.replace(state, certificate=promoted)
        enrolment.save(kitchen_dir, state, now)
    credentials = (kitchen_dir / enrolment.CREDENTIALS_FILE).read_bytes()
    epochs = {s: state.keyring.current_epoch(s) for s in state.keyring.scopes}
    with pytest.raises(
        ValidationError, match=f"only the household owner can revoke; this robot is {role}"
    ):
        enrolment.revoke(kitchen_dir, state, kitchen, owner.device_id, now=now)
    assert state.trust.revocations is None
    assert {s: state.keyring.current_epoch(s) for s in state.keyring.scopes} == epochs
    assert (kitchen_dir / enrolment.CREDENTIALS_FILE).read_bytes() == credentials
    assert state.is_admin == (role == "admin")


def test_a_robot_to_revoke_is_named_by_its_name_or_its_device_id(tmp_path: Path) -> None:
    now = int(time.time())
    owner_dir, _owner, kitchen = _kitchen_enrolled(tmp_path, now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    name = state.trust.certificate_of(kitchen.device_id).device_name
    assert enrolment.device_named(state, name) == kitchen.device_id
    grouped = "-".join(kitchen.device_id[i : i + 4] for i in range(0, 16, 4))
    assert enrolment.device_named(state, grouped) == kitchen.device_id  # as status shows it
    with pytest.raises(ValidationError, match=rf"no robot named 'garden'.*known: .*{name}"):
        enrolment.device_named(state, "garden")


async def test_joining_an_inviter_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "robot"
    folder.mkdir()
    identity = DeviceIdentity.load_or_create(folder)
    code = "HS1-AAAAAAAAAAAAAAAAAAAAAAAAAA-127.0.0.1:9"
    with pytest.raises(PairingError, match=r"could not reach the inviter at 127\.0\.0\.1:9"):
        await enrolment.join(folder, identity, code, "robot", now=int(time.time()))


async def test_a_robot_whose_answer_was_lost_joins_again_with_the_same_code(
    tmp_path: Path,
) -> None:
    """Found in review: the inviter spends the code and certifies the robot before it
    answers, so a robot whose answer was lost (the link dropped) was refused for good, with
    "enrolled already" or "no open invite matches".  The same code and key now get the same
    enrolment again; the code stays spent for every other key."""
    owner_dir, kitchen_dir, guest_dir = tmp_path / "owner", tmp_path / "kitchen", tmp_path / "guest"
    for folder in (kitchen_dir, guest_dir):
        folder.mkdir()
    kitchen = DeviceIdentity.load_or_create(kitchen_dir)
    guest = DeviceIdentity.load_or_create(guest_dir)
    answered = asyncio.Event()
    async with Peer.open(owner_dir, device="owner") as owner:
        state = enrolment.create(owner_dir, owner.identity, "Home", "owner", now=int(time.time()))

        async def join(request: bytes) -> bytes:  # as `hearth run` answers: off the event loop
            try:
                return await asyncio.to_thread(
                    enrolment.enrol, owner_dir, owner.identity, request, now=int(time.time())
                )
            finally:
                answered.set()

        async with SyncService(owner, state.credentials(owner.identity), join=join) as service:
            invite = enrolment.add_invite(
                owner_dir, state, "127.0.0.1", service.port, scopes=("core",), ttl_s=600,
                now=int(time.time()),
            )  # fmt: skip
            async with connect(f"ws://127.0.0.1:{service.port}{JOIN_PATH}", proxy=None) as ws:
                await ws.send(join_request(invite.secret, kitchen, "kitchen"))
                ws.transport.abort()  # the link drops: the answer is lost
            await asyncio.wait_for(answered.wait(), TIMEOUT_S)
            spent = (owner_dir / enrolment.CREDENTIALS_FILE).read_bytes()
            inviter = enrolment.load(owner_dir)
            assert inviter is not None
            assert inviter.trust.knows(kitchen.device_id)  # certified, and never told

            joined = await enrolment.join(
                kitchen_dir, kitchen, invite.code, "kitchen", now=int(time.time())
            )
            assert joined.certificate == inviter.trust.certificate_of(kitchen.device_id)
            assert joined.keyring.scopes == {"core", "household"}
            with pytest.raises(PairingError, match="no open invite matches"):
                await enrolment.join(guest_dir, guest, invite.code, "guest", now=int(time.time()))
            assert enrolment.load(guest_dir) is None
            # answering again wrote nothing: the code is spent, the kitchen certified once
            assert (owner_dir / enrolment.CREDENTIALS_FILE).read_bytes() == spent


def test_a_failed_join_keeps_only_its_key_and_sends_it_again_with_the_same_code(
    tmp_path: Path,
) -> None:
    """What ``hearth join`` leaves after a failure (the process test is in test_household):
    the key it sent, pending, owner-only, for that code only; nothing else of a peer."""
    hall = tmp_path / "hall"
    code = pairing.Invite(bytes(range(16)), "127.0.0.1", 9).code
    sent = _a_join_that_fails(hall, code)
    pending = hall / enrolment.PENDING_JOIN_FILE
    assert [p.name for p in hall.iterdir()] == [enrolment.PENDING_JOIN_FILE]
    assert pending.stat().st_mode & 0o777 == 0o600
    assert bytes(range(16)) not in pending.read_bytes()  # a digest of the code, not the code
    with enrolment.pending_join(hall, code):
        assert not pending.exists()
        assert DeviceIdentity.load_or_create(hall).device_id == sent.device_id
    assert not pending.exists()  # joined: nothing pending

    garden = tmp_path / "garden"
    sent = _a_join_that_fails(garden, code)
    another = pairing.Invite(bytes(16), "127.0.0.1", 9).code
    with enrolment.pending_join(garden, another):
        # that key may be certified already: an invite certifies only keys nobody knows
        assert list(garden.iterdir()) == []
        assert DeviceIdentity.load_or_create(garden).device_id != sent.device_id

    mine = tmp_path / "mine"  # a folder the join did not make keeps what it held, and only
    mine.mkdir()  # the key of what the join made there (found in review: its key, store and
    (mine / "notes").write_text("mine")  # lock file were left beside the user's files)
    sent = _a_join_that_fails(mine, code)
    assert sorted(p.name for p in mine.iterdir()) == [enrolment.PENDING_JOIN_FILE, "notes"]
    assert (mine / "notes").read_text() == "mine"
    with enrolment.pending_join(mine, code):
        assert DeviceIdentity.load_or_create(mine).device_id == sent.device_id

    shared = tmp_path / "shared"
    _a_join_that_fails(shared, code)
    (shared / enrolment.PENDING_JOIN_FILE).chmod(0o644)
    joining = enrolment.pending_join(shared, code)
    with pytest.raises(StoreError, match="readable by others"), joining:
        pass


def test_a_join_whose_enrolment_was_saved_is_kept_whatever_fails_after_it(
    tmp_path: Path,
) -> None:
    """Found in review: ``hearth join`` said it had joined inside `pending_join`, so a failure
    to say it (a household name rich read as bad markup, stdout on a full disk) undid a join
    the inviter had certified: its credentials and store wiped, join.pending kept, and every
    retry refused, the code spent on it."""
    now = int(time.time())
    owner_dir, hall = tmp_path / "owner", tmp_path / "hall"
    owner_dir.mkdir()
    owner = DeviceIdentity.load_or_create(owner_dir)
    state = enrolment.create(owner_dir, owner, "Flat 2[/b]", "owner", now=now)
    invite = enrolment.add_invite(
        owner_dir, state, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now
    )
    joined: list[DeviceIdentity] = []

    def attempt() -> None:  # as `hearth join` does, but its last word cannot be written
        with enrolment.pending_join(hall, invite.code):
            hall.mkdir(mode=0o700)
            joined.append(robot := DeviceIdentity.load_or_create(hall))
            answer = enrolment.enrol(
                owner_dir, owner, join_request(invite.secret, robot, "hall"), now=now
            )
            enrolment.adopt(hall, robot, open_join_response(answer, invite.secret, robot), now)
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        attempt()
    kept = enrolment.load(hall, now)
    assert kept is not None
    assert kept.certificate.device_id == joined[0].device_id
    assert DeviceIdentity.load_or_create(hall).device_id == joined[0].device_id
    assert not (hall / enrolment.PENDING_JOIN_FILE).exists()


async def test_a_refused_join_never_removes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """Found in review: an empty folder counted as made by the join, so a join refused
    before it made anything (a bad --device) removed the folder the user had made."""
    code = pairing.Invite(bytes(range(16)), "127.0.0.1", 9).code
    empty = tmp_path / "empty"
    empty.mkdir()

    async def open_as(device: str) -> None:
        async with Peer.open(empty, device=device):  # refused before it makes anything
            pass

    refused = enrolment.pending_join(empty, code)
    with pytest.raises(ValidationError, match="device must be"), refused:
        await open_as("Bad Name")
    assert empty.is_dir()
    assert list(empty.iterdir()) == []
    _a_join_that_fails(empty, code)  # and one that made a key keeps it there, pending
    assert [p.name for p in empty.iterdir()] == [enrolment.PENDING_JOIN_FILE]
    absent = tmp_path / "absent"  # a folder it made, and left with nothing to keep, goes

    def refused_after_making_the_folder() -> None:
        with enrolment.pending_join(absent, code):
            absent.mkdir()
            raise PairingError("the inviter refused")

    with pytest.raises(PairingError):
        refused_after_making_the_folder()
    assert not absent.exists()


def _a_join_that_fails(folder: Path, code: str) -> DeviceIdentity:
    """What ``hearth join`` makes in ``folder`` before the inviter's answer never comes."""
    made: list[DeviceIdentity] = []

    def attempt() -> None:
        with enrolment.pending_join(folder, code):
            folder.mkdir(mode=0o700, exist_ok=True)
            made.append(DeviceIdentity.load_or_create(folder))
            (folder / "hearth.db").write_bytes(b"a half-made store")
            (folder / "vectors").mkdir(exist_ok=True)
            raise PairingError("could not reach the inviter")

    with pytest.raises(PairingError, match="could not reach"):
        attempt()
    return made[0]


def test_a_spent_code_answers_again_only_its_own_unrevoked_device_until_it_expires(
    tmp_path: Path,
) -> None:
    """The same request again gets the same certificate and changes nothing; another key, a
    revoked device, or the code once expired are refused, as before."""
    now = int(time.time())
    owner_dir, owner, kitchen = _kitchen_enrolled(tmp_path, now)
    hall_dir = tmp_path / "hall"
    hall_dir.mkdir()
    hall = DeviceIdentity.load_or_create(hall_dir)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    invite = enrolment.add_invite(
        owner_dir, state, "127.0.0.1", 9, scopes=("core",), ttl_s=600, now=now
    )
    request = join_request(invite.secret, hall, "hall")
    enrolment.enrol(owner_dir, owner, request, now=now)  # the answer is lost
    path = owner_dir / enrolment.CREDENTIALS_FILE
    spent = path.read_bytes()

    again = enrolment.enrol(owner_dir, owner, request, now=now + 60)
    adopted = enrolment.adopt(hall_dir, hall, open_join_response(again, invite.secret, hall), now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    assert adopted.certificate == state.trust.certificate_of(hall.device_id)
    assert path.read_bytes() == spent
    for other in (kitchen, owner):  # their keys are public
        stolen = _request_for(invite.secret, bytes(other.verify_key), "hall")
        with pytest.raises(PairingError, match="no open invite matches"):
            enrolment.enrol(owner_dir, owner, stolen, now=now)
    with pytest.raises(PairingError, match="no open invite matches"):
        enrolment.enrol(owner_dir, owner, request, now=now + 600)
    assert path.read_bytes() == spent

    enrolment.revoke(owner_dir, state, owner, hall.device_id, now=now)
    revoked = path.read_bytes()
    with pytest.raises(PairingError, match=f"device {hall.device_id} is revoked"):
        enrolment.enrol(owner_dir, owner, request, now=now + 60)
    assert path.read_bytes() == revoked


async def test_joining_an_inviter_that_never_answers_gives_up_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: an inviter that accepts the connection and never answers (hung, or
    not a hearthsync peer at all) kept ``hearth join`` waiting for ever."""
    monkeypatch.setattr(enrolment, "JOIN_ANSWER_TIMEOUT_S", 0.2)
    folder = tmp_path / "robot"
    folder.mkdir()
    identity = DeviceIdentity.load_or_create(folder)
    heard, done = asyncio.Event(), asyncio.Event()

    async def silent(websocket: ServerConnection) -> None:
        await websocket.recv()
        heard.set()
        await done.wait()

    async with serve(silent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        code = pairing.Invite(bytes(16), "127.0.0.1", port).code
        try:
            async with asyncio.timeout(TIMEOUT_S):
                with pytest.raises(
                    PairingError,
                    match=rf"inviter at 127\.0\.0\.1:{port} did not answer within 0\.2 s",
                ):
                    await enrolment.join(folder, identity, code, "robot", now=int(time.time()))
        finally:
            done.set()
        assert heard.is_set()  # it was reached, and asked
    assert enrolment.load(folder) is None


def test_an_owner_holding_a_list_an_admin_signed_signs_it_again(tmp_path: Path) -> None:
    """A list an admin signed before only the owner revoked is ignored by robots that do not
    hold it: the owner, holding one, signs the next list itself, revoking the same robots."""
    now = int(time.time())
    owner_dir, owner, kitchen = _kitchen_enrolled(tmp_path, now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    (tmp_path / "admin").mkdir()
    admin = DeviceIdentity.load_or_create(tmp_path / "admin")
    promoted = made_admin(owner, state, admin, now, ttl_s=60)
    state.trust.add(promoted, now)
    legacy = Revocations.issue(
        admin, household_id=state.household.id, serial=1, revoked=[kitchen.device_id]
    )
    state.trust.restore_revocations(legacy)  # read back from credentials written before
    enrolment.save(owner_dir, state, now)
    # read back again: a list coming in is ignored for an admin's signature, but the robot's
    # own was dropped with it, and the robot it revoked trusted again (found in review)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    assert state.trust.revocations == legacy
    assert state.trust.is_revoked(kitchen.device_id)
    assert enrolment.catch_up(owner_dir, state, owner, now=now) == {
        scope: 2 for scope in state.keyring.scopes
    }
    signed = state.trust.revocations
    assert signed is not None
    assert signed.serial == 2
    assert signed.issuer_pk == bytes(owner.verify_key)
    assert signed.revoked == (kitchen.device_id,)
    assert enrolment.catch_up(owner_dir, state, owner, now=now) == {}  # once


def test_conflicting_revocation_lists_are_kept_with_the_credentials(tmp_path: Path) -> None:
    """A list the owner signed apart revokes its robots at once: lost at a restart, its robot
    was trusted again until the robot met one holding it as its own list (found in review)."""
    now = int(time.time())
    _owner_dir, owner, _kitchen = _kitchen_enrolled(tmp_path, now)
    kitchen_dir = tmp_path / "kitchen"
    state = enrolment.load(kitchen_dir, now)
    assert state is not None
    household = state.household.id
    first = Revocations.issue(owner, household_id=household, serial=2, revoked=["A" * 16])
    apart = Revocations.issue(owner, household_id=household, serial=2, revoked=["B" * 16])
    assert state.trust.accept_revocations(first, now)
    assert state.trust.accept_revocations(apart, now)
    assert state.trust.conflicting == (apart,)
    enrolment.save(kitchen_dir, state, now)
    again = enrolment.load(kitchen_dir, now)
    assert again is not None
    assert again.trust.revocations == first
    assert again.trust.conflicting == (apart,)
    assert again.trust.is_revoked("B" * 16)
    merged = Revocations.issue(
        owner, household_id=household, serial=3, revoked=["A" * 16, "B" * 16]
    )
    assert again.trust.accept_revocations(merged, now)
    enrolment.save(kitchen_dir, again, now)
    merged_back = enrolment.load(kitchen_dir, now)
    assert merged_back is not None
    assert merged_back.trust.conflicting == ()
    assert len(enrolment._fields(kitchen_dir / enrolment.CREDENTIALS_FILE)) == 7  # as before


def test_a_certificate_an_admin_gave_beyond_its_scopes_is_warned_of_at_every_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before robots checked a certificate's scopes against its issuer's (SPEC §3), an admin
    could certify a robot beyond its own.  Such a certificate, read back from credentials,
    never verifies again and that robot syncs with none: said, not left to be found."""
    now = int(time.time())
    owner_dir, owner, _ = _kitchen_enrolled(tmp_path, now)
    caplog.set_level(logging.WARNING, logger="hearthsync.enrolment")
    state = enrolment.load(owner_dir, now)
    assert state is not None
    assert caplog.records == []  # a good household: nothing to say
    admin, member = identity(7), identity(8)
    state.trust.add(made_admin(owner, state, admin, now, ttl_s=600), now)
    over = Certificate.issue(
        admin, household_id=state.household.id, device_pk=bytes(member.verify_key),
        device_name="den", role="member", scopes=("core", "health"), issued_at=now,
        expires_at=now + 600,
    )  # fmt: skip
    with pytest.raises(OverreachError, match="scopes health beyond its own"):
        state.trust.add(over, now)
    state.trust.restore(over)  # as credentials written before the check held it
    enrolment.save(owner_dir, state, now)
    again = enrolment.load(owner_dir, now)
    assert again is not None
    warned = [r.getMessage() for r in caplog.records if r.name == "hearthsync.enrolment"]
    assert len(warned) == 1, warned
    assert over.device_id in warned[0]
    assert "scopes health beyond its own" in warned[0]
    assert "no robot of the household trusts it" in warned[0]
    with pytest.raises(OverreachError):  # and it is still refused
        again.trust.verify(again.trust.certificate_of(over.device_id), now)


def test_what_an_overreaching_issuer_certified_is_warned_of_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: an admin made by an admin (before robots refused that) certified a
    member within its scopes; the member's certificate never verifies either, and was restored
    silently, as if merely expired."""
    now = int(time.time())
    owner_dir, owner, _ = _kitchen_enrolled(tmp_path, now)
    state = enrolment.load(owner_dir, now)
    assert state is not None
    first, second, member = identity(7), identity(8), identity(9)
    hid = state.household.id

    def issue(by: DeviceIdentity, to: DeviceIdentity, name: str, role: str) -> Certificate:
        return Certificate.issue(
            by, household_id=hid, device_pk=bytes(to.verify_key), device_name=name, role=role,
            scopes=("core",), issued_at=now, expires_at=now + 600,
        )  # fmt: skip

    state.trust.add(issue(owner, first, "a1", "admin"), now)
    made_by_an_admin = issue(first, second, "a2", "admin")
    state.trust.restore(made_by_an_admin)  # as credentials written before the check held it
    den = issue(second, member, "den", "member")
    with pytest.raises(OverreachError, match="an admin, which certifies members only"):
        state.trust.add(den, now)
    state.trust.restore(den)
    enrolment.save(owner_dir, state, now)
    caplog.set_level(logging.WARNING, logger="hearthsync.enrolment")
    assert enrolment.load(owner_dir, now) is not None
    warned = [r.getMessage() for r in caplog.records if r.name == "hearthsync.enrolment"]
    assert sorted(w.split(":")[0] for w in warned) == sorted(
        f"certificate of {c.device_id}" for c in (made_by_an_admin, den)
    )


def test_a_save_removes_what_a_save_killed_before_its_rename_left(tmp_path: Path) -> None:
    """Found in review: a robot killed between writing ``.household.key.<pid>.tmp`` and its
    rename left that file, with every key of its time, for good: a user forgotten since kept
    their data keys in it.  A later save removes those of processes that are gone, never
    one a live process is writing."""
    owner = DeviceIdentity.load_or_create(tmp_path)
    state = enrolment.create(tmp_path, owner, "Home", "owner", now=int(time.time()))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".{enrolment.CREDENTIALS_FILE}.{int(gone.stdout)}.tmp"
    live = tmp_path / f".{enrolment.CREDENTIALS_FILE}.{os.getppid()}.tmp"
    stale_key = tmp_path / f".{KEY_FILE}.{int(gone.stdout)}.tmp"  # a device key's creation's
    for left in (stale, live):
        left.write_bytes((tmp_path / enrolment.CREDENTIALS_FILE).read_bytes())
    os.link(tmp_path / KEY_FILE, stale_key)  # killed between its link and its unlink

    enrolment.save(tmp_path, state)

    assert not stale.exists()
    assert not stale_key.exists()
    assert (tmp_path / KEY_FILE).exists()
    assert live.exists()


def test_a_save_is_durable_with_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the credentials were fsynced, then renamed into place, but the folder
    was not fsynced after the rename: a power cut could bring back the file before it (a
    spent invite unspent, a new key epoch gone)."""
    owner = DeviceIdentity.load_or_create(tmp_path)
    state = enrolment.create(tmp_path, owner, "Home", "owner", now=int(time.time()))
    synced: list[tuple[bool, bool]] = []  # (a folder, the new file in place by then)
    real = os.fsync

    def fsync(fd: int) -> None:
        placed = not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), placed))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    enrolment.save(tmp_path, state)
    assert synced[0] == (False, False)  # the new file, before its rename
    assert (True, True) in synced  # the folder, after it
