"""Envelopes (SPEC §4): seal/open, every bit flip refused, revocation and forgetting hold."""

from __future__ import annotations

import pytest

from hearthsync.crypto.certificate import Revocations
from hearthsync.crypto.envelope import (
    KIND_SNAPSHOT,
    MAX_ENVELOPE_BYTES,
    Envelope,
    Header,
    open_envelope,
    seal,
    verify_envelope,
)
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import (
    CertificateError,
    CryptoError,
    DecryptionError,
    MissingKeyError,
    SignatureError,
    ValidationError,
)
from hearthsync.ids import Scope

from .conftest import NOW, Home, enrolled

DOC, LINEAGE = "user/alice/prefs", "g-0011223344556677"


def write(
    author: DeviceIdentity, keys: Keyring, update: bytes, counter: int, nonce: bytes
) -> Envelope:
    """What a peer does to send a local write: current epoch, derived key, seal."""
    epoch = keys.current_epoch("core")
    header = Header(DOC, LINEAGE, "core", epoch, author.device_id, counter)
    return seal(author, header, update, keys.doc_key(DOC, LINEAGE, "core", "alice", epoch), nonce)


def read(home: Home, keys: Keyring, wire: bytes, now: int = NOW) -> bytes:
    """What a peer does on receipt, in SPEC §4 order: structure, certificate, signature, key."""
    envelope = Envelope.from_wire(wire)
    header = envelope.header
    author_key = home.trust.author_key(header.author, header.scope, now)
    key = keys.doc_key(header.doc_id, header.lineage, header.scope, "alice", header.epoch)
    return open_envelope(envelope, key, author_key)


def test_seal_then_open_round_trips(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    envelope = write(home.kitchen, kitchen, b"yrs update", 1, b"\x01" * 24)
    assert Envelope.from_wire(envelope.to_wire()) == envelope
    assert read(home, admin_keys, envelope.to_wire()) == b"yrs update"
    assert b"yrs update" not in envelope.to_wire()


def test_every_flipped_bit_is_refused(home: Home, admin_keys: Keyring) -> None:
    wire = write(home.kitchen, admin_keys, b"tiny", 3, b"\x02" * 24).to_wire()
    key = admin_keys.doc_key(DOC, LINEAGE, "core", "alice", 0)
    kinds: set[type[Exception]] = set()
    for bit in range(len(wire) * 8):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CryptoError) as caught:
            open_envelope(Envelope.from_wire(bytes(flipped)), key, home.kitchen.verify_key)
        kinds.add(type(caught.value))
    assert kinds == {CryptoError, SignatureError}  # structure or signature; nothing decrypts


def test_a_valid_signature_over_a_wrong_key_fails_decryption(
    home: Home, admin_keys: Keyring
) -> None:
    envelope = write(home.kitchen, admin_keys, b"x", 1, b"\x03" * 24)
    other = admin_keys.doc_key(DOC, "g-other", "core", "alice", 0)
    with pytest.raises(DecryptionError, match="does not decrypt"):
        open_envelope(envelope, other, home.kitchen.verify_key)


def test_signature_is_checked_before_decryption_and_binds_the_author(
    home: Home, admin_keys: Keyring
) -> None:
    envelope = write(home.kitchen, admin_keys, b"x", 1, b"\x04" * 24)
    with pytest.raises(SignatureError, match="author"):
        open_envelope(envelope, bytes(32), home.hall.verify_key)  # wrong key never decrypts
    verify_envelope(envelope, home.kitchen.verify_key)  # the relay's check needs no key
    with pytest.raises(ValidationError, match="author"):
        seal(home.hall, envelope.header, b"x", bytes(32), bytes(24))


def test_author_outside_the_scope_is_refused(home: Home, admin_keys: Keyring) -> None:
    header = Header("user/alice/health", LINEAGE, "health", 0, home.kitchen.device_id, 1)
    envelope = seal(home.kitchen, header, b"x", bytes(32), bytes(24))
    with pytest.raises(CertificateError, match="not granted scope 'health'"):
        read(home, admin_keys, envelope.to_wire())


def test_revoked_device_cannot_read_what_is_written_after(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    hall = enrolled(home, admin_keys, home.hall)
    before = write(home.kitchen, kitchen, b"before", 1, b"\x05" * 24).to_wire()
    assert read(home, hall, before) == b"before"

    # the owner revokes the hall robot; the new epoch of every scope it held is granted to
    # the rest (the keys are made on the admin's keyring here: who makes them is not the point)
    revocations = Revocations.issue(
        home.owner, household_id=home.household.id, serial=1, revoked=[home.hall.device_id]
    )
    assert home.trust.accept_revocations(revocations, NOW)
    held = home.trust.scopes_of(home.hall.device_id)
    assert admin_keys.rotate_for_revocation(held, home.random_bytes)[Scope("core")] == 1
    for grant in admin_keys.grants_for(
        home.admin, home.kitchen.verify_key, ["core"], home.random_bytes
    ):
        kitchen.accept_grant(grant, home.kitchen, trust=home.trust, now=NOW)

    after = write(home.kitchen, kitchen, b"after", 2, b"\x06" * 24)
    assert after.header.epoch == 1
    assert read(home, admin_keys, after.to_wire()) == b"after"
    with pytest.raises(MissingKeyError, match="epoch 1"):
        hall.doc_key(DOC, LINEAGE, "core", "alice", 1)
    old_key = hall.doc_key(DOC, LINEAGE, "core", "alice", 0)  # even its best guess fails
    with pytest.raises(DecryptionError):
        open_envelope(after, old_key, home.kitchen.verify_key)
    # and its own writes are refused everywhere from now on
    forged = write(home.hall, hall, b"late", 9, b"\x07" * 24).to_wire()
    with pytest.raises(CertificateError, match="revoked"):
        read(home, kitchen, forged)


def test_forgotten_user_envelopes_become_undecryptable(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    stored = write(home.kitchen, kitchen, b"alice likes oat milk", 1, b"\x08" * 24).to_wire()
    assert read(home, admin_keys, stored) == b"alice likes oat milk"
    for keyring in (kitchen, admin_keys):
        keyring.forget_user("alice")
        with pytest.raises(MissingKeyError, match="forgotten"):
            read(home, keyring, stored)


def test_header_and_envelope_limits() -> None:
    with pytest.raises(ValidationError, match="kind"):
        Header(DOC, LINEAGE, "core", 0, "A" * 16, 1, kind=2)
    for doc_id in ("d" * 257, "user/alice prefs", "user/älice"):  # ids: visible ASCII (SPEC §1)
        with pytest.raises(ValidationError, match="doc_id"):
            Header(doc_id, LINEAGE, "core", 0, "A" * 16, 1)
    with pytest.raises(ValidationError, match="author"):
        Header(DOC, LINEAGE, "core", 0, "not-an-id", 1)
    snapshot = Header(DOC, LINEAGE, "core", 0, "A" * 16, 1, KIND_SNAPSHOT)
    with pytest.raises(ValidationError, match="ciphertext"):
        Envelope(snapshot, bytes(24), b"short", bytes(64))
    with pytest.raises(CryptoError, match="over the limit"):
        Envelope.from_wire(bytes(MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(CryptoError, match="header"):
        Envelope.from_wire(b"\x94\x01\xc4\x00\xc4\x00\xc4\x00")
