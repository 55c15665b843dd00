"""The credentials file: saved by a running robot at every grant, written by other processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hearthsync import enrolment
from hearthsync.crypto import pairing
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.pairing import PairingError, join_request, open_join_response
from tests.test_forgetting import enrol_household


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


async def test_joining_an_inviter_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "robot"
    folder.mkdir()
    identity = DeviceIdentity.load_or_create(folder)
    code = "HS1-AAAAAAAAAAAAAAAAAAAAAAAAAA-127.0.0.1:9"
    with pytest.raises(PairingError, match=r"could not reach the inviter at 127\.0\.0\.1:9"):
        await enrolment.join(folder, identity, code, "robot", now=int(time.time()))
