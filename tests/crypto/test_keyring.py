"""Keyring (SPEC §4): document keys, grants, rotation on revocation, crypto-shredding."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import pytest
from nacl.public import SealedBox

from hearthsync.crypto import keyring
from hearthsync.crypto.identity import DeviceIdentity, x25519_public_key
from hearthsync.crypto.keyring import GRANT_TAG, KeyGrant, Keyring, derive_doc_key, seal_to
from hearthsync.crypto.wire import pack, unpack_array
from hearthsync.errors import (
    CertificateError,
    CryptoError,
    DecryptionError,
    MissingKeyError,
    OverreachError,
    SignatureError,
    ValidationError,
)
from hearthsync.ids import Scope, UserId

from .conftest import NOW, SCOPES, Home, enrolled, identity


def test_doc_key_is_per_document_lineage_and_base(admin_keys: Keyring) -> None:
    alice = admin_keys.doc_key("user/alice/prefs", "g-1", "core", "alice", 0)
    assert alice == derive_doc_key(
        admin_keys.data_key("alice", "core", 0), "user/alice/prefs", "g-1"
    )
    others = {
        admin_keys.doc_key("user/alice/prefs", "g-2", "core", "alice", 0),
        admin_keys.doc_key("user/alice/profile", "g-1", "core", "alice", 0),
        admin_keys.doc_key("user/alice/prefs", "g-1", "core", "bob", 0),
        admin_keys.doc_key("user/alice/prefs", "g-1", "core", None, 0),
    }
    assert alice not in others
    assert len(others) == 4
    with pytest.raises(ValidationError, match="doc_id is not well-formed"):
        derive_doc_key(bytes(32), "a\x00b", "g")


def test_missing_keys_raise_missing_key_error(admin_keys: Keyring) -> None:
    with pytest.raises(MissingKeyError, match="scope 'core' epoch 1"):
        admin_keys.doc_key("home/spatial", "g", "core", None, 1)
    with pytest.raises(MissingKeyError, match="user 'carol'"):
        admin_keys.doc_key("user/carol/prefs", "g", "core", "carol", 0)
    with pytest.raises(MissingKeyError, match="no key held for scope 'garden'"):
        admin_keys.current_epoch("garden")


def test_our_sealed_box_is_libsodiums(home: Home) -> None:
    sealed = seal_to(home.kitchen.verify_key, b"k" * 32, b"\x05" * 32)
    assert SealedBox(home.kitchen.x25519_private_key()).decrypt(sealed) == b"k" * 32
    with pytest.raises(CryptoError, match="not a valid Ed25519"):
        x25519_public_key(bytes(32))


def test_grants_enroll_a_device_with_exactly_its_scopes(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    assert kitchen.scopes == {"core", "spatial"}
    for user in ("alice", "bob"):
        assert kitchen.doc_key(f"user/{user}/prefs", "g", "core", user, 0) == admin_keys.doc_key(
            f"user/{user}/prefs", "g", "core", user, 0
        )
    with pytest.raises(MissingKeyError):
        kitchen.data_key("alice", "health", 0)


def test_grant_opens_only_with_the_recipients_key(home: Home, admin_keys: Keyring) -> None:
    grant = admin_keys.grant(
        home.admin, home.kitchen.verify_key, scope="core", epoch=0, random_bytes=home.random_bytes
    )
    hall = Keyring()
    with pytest.raises(CryptoError, match="is for device"):
        hall.accept_grant(grant, home.hall, trust=home.trust, now=NOW)
    # re-addressed to the hall robot: the signature no longer covers it
    parsed = KeyGrant.from_wire(grant)
    readdressed = replace(parsed, recipient=home.hall.device_id)
    with pytest.raises(SignatureError):
        hall.accept_grant(readdressed.to_wire(), home.hall, trust=home.trust, now=NOW)
    # and had the admin really addressed it to the hall, the box still only opens for kitchen
    resigned = _resign(readdressed, home)
    with pytest.raises(DecryptionError, match="does not open"):
        hall.accept_grant(resigned, home.hall, trust=home.trust, now=NOW)
    assert hall.scopes == frozenset()
    kitchen = Keyring()
    assert kitchen.accept_grant(grant, home.kitchen, trust=home.trust, now=NOW).scope == "core"
    assert kitchen.scope_key("core", 0) == admin_keys.scope_key("core", 0)


def test_grant_from_a_non_admin_is_refused(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    forged = kitchen.grant(
        home.kitchen, home.hall.verify_key, scope="core", epoch=0, random_bytes=home.random_bytes
    )
    with pytest.raises(CertificateError, match="may not issue"):
        Keyring().accept_grant(forged, home.hall, trust=home.trust, now=NOW)
    stranger = identity(77)
    by_stranger = admin_keys.grant(
        stranger, home.hall.verify_key, scope="core", epoch=0, random_bytes=home.random_bytes
    )
    with pytest.raises(CertificateError, match="no certificate known"):
        Keyring().accept_grant(by_stranger, home.hall, trust=home.trust, now=NOW)


def test_a_grant_of_a_scope_beyond_its_granters_certificate_is_refused(
    home: Home, admin_keys: Keyring
) -> None:
    """An admin certified for ``core`` alone made a key for alice's ``health`` slot, with a
    key id smaller than the owner's, and granted it: the hall robot held it beside the
    owner's key and sealed alice's health with it, which that admin could then read (found
    in review).  A granter passes on keys of its own certificate's scopes only (SPEC §3)."""
    narrow = identity(5)
    home.trust.add(home.issue(home.owner, narrow, role="admin", scopes=("core",)), NOW)
    hall = enrolled(home, admin_keys, home.hall)
    honest = hall.data_key("alice", "health", 0)
    planted = next(
        key for n in range(256)
        if keyring.key_id(key := bytes([n]) * 32) < keyring.key_id(honest)
    )  # fmt: skip
    rival = Keyring()
    rival.create_scope("health", home.random_bytes)
    rival.create_data_key("alice", "health", lambda size: planted)
    grant = rival.grant(
        narrow, home.hall.verify_key, scope="health", epoch=0, user="alice",
        random_bytes=home.random_bytes,
    )  # fmt: skip
    with pytest.raises(OverreachError, match="scope 'health' beyond its own"):
        hall.accept_grant(grant, home.hall, trust=home.trust, now=NOW)
    assert hall.data_keys("alice", "health", 0) == (honest,)
    # what its certificate names it grants as any admin does
    rival.create_scope("core", home.random_bytes)
    rival.create_data_key("alice", "core", home.random_bytes)
    core = rival.grant(
        narrow, home.hall.verify_key, scope="core", epoch=0, user="alice",
        random_bytes=home.random_bytes,
    )  # fmt: skip
    hall.accept_grant(core, home.hall, trust=home.trust, now=NOW)
    assert rival.data_key("alice", "core", 0) in hall.data_keys("alice", "core", 0)


def test_a_second_data_key_for_a_slot_is_held_beside_the_first(
    home: Home, admin_keys: Keyring
) -> None:
    """The owner and an admin each keyed carol, unaware of each other: both keys are held,
    any opens, and every robot holding both seals with the same one."""
    kitchen = enrolled(home, admin_keys, home.kitchen)
    admin_keys.create_data_key("carol", "core", lambda n: b"\x08" * n)
    first = admin_keys.data_key("carol", "core", 0)
    rival = Keyring()
    rival.merge_from(admin_keys)  # the scope keys and alice's and bob's: one household
    rival._data_keys.pop((UserId("carol"), Scope("core"), 0))
    rival.create_data_key("carol", "core", lambda n: b"\x09" * n)
    second = rival.data_key("carol", "core", 0)
    assert first != second

    def grant(ring: Keyring, to: DeviceIdentity) -> bytes:
        return ring.grant(
            home.admin, to.verify_key, scope="core", epoch=0, user="carol",
            random_bytes=home.random_bytes,
        )  # fmt: skip

    before = kitchen.key_count()
    for ring in (admin_keys, rival):
        kitchen.accept_grant(grant(ring, home.kitchen), home.kitchen, trust=home.trust, now=NOW)
    assert kitchen.key_count() == before + 2
    assert set(kitchen.data_keys("carol", "core", 0)) == {first, second}
    smallest = min((first, second), key=keyring.key_id)
    assert kitchen.data_key("carol", "core", 0) == smallest
    # the other order of arrival picks the same key
    other = enrolled(home, admin_keys, home.hall)
    for ring in (rival, admin_keys):
        other.accept_grant(grant(ring, home.hall), home.hall, trust=home.trust, now=NOW)
    assert other.data_key("carol", "core", 0) == smallest
    doc = ("user/carol/prefs", "g", "core", "carol", 0)
    assert kitchen.doc_key(*doc) == other.doc_key(*doc)
    opening = {derive_doc_key(k, "user/carol/prefs", "g") for k in (first, second)}
    assert set(kitchen.doc_keys(*doc)) == opening
    # the same grant again teaches nothing; both keys are granted onwards, and kept on disk
    kitchen.accept_grant(grant(rival, home.kitchen), home.kitchen, trust=home.trust, now=NOW)
    assert kitchen.key_count() == before + 2
    onwards = kitchen.grants_for(home.kitchen, home.hall.verify_key, ["core"], home.random_bytes)
    assert len(onwards) == len(set(onwards))
    restored = keyring.import_secret_keys(keyring.export_secret_keys(kitchen))
    assert restored.data_keys("carol", "core", 0) == kitchen.data_keys("carol", "core", 0)
    assert restored.key_count() == kitchen.key_count()
    merged = Keyring()
    assert merged.merge_from(kitchen) == kitchen.key_count()
    assert merged.merge_from(kitchen) == 0  # held already


def test_an_older_version_reading_the_keyring_keeps_the_sealing_key() -> None:
    """One key per slot, it keeps a slot's last entry: the sealing key is written last."""
    ring = Keyring()
    ring.create_scope("core", lambda n: b"\x01" * n)
    for n in (2, 3, 4):
        other = Keyring()
        other.create_scope("core", lambda size: b"\x01" * size)
        other.create_data_key("carol", "core", lambda size, n=n: bytes([n]) * size)
        ring.merge_from(other)
    fields = unpack_array(
        keyring.export_secret_keys(ring), what="k", length=4, max_bytes=65536, error=CryptoError
    )
    last = {(u, s, e): k for u, s, e, k in fields[2]}
    assert last[("carol", "core", 0)] == ring.data_key("carol", "core", 0)
    assert len(ring.data_keys("carol", "core", 0)) == 3


def test_a_second_scope_key_for_an_epoch_is_not_held(
    home: Home, admin_keys: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    """Scope keys are made once (epoch 0, by the owner) and by the owner's revocations: two
    for one epoch are two lists of one serial (a restored owner).  A robot holding both
    granted one side's keys to the robot the other side revoked (found in review).  The
    second is not held, and not an error: refusing closed the session before the grants of
    the epoch the owner merges the two lists into."""
    kitchen = enrolled(home, admin_keys, home.kitchen)
    rival = Keyring()
    rival.create_scope("core", lambda n: b"\x09" * n)
    grant = rival.grant(
        home.admin, home.kitchen.verify_key, scope="core", epoch=0, random_bytes=home.random_bytes
    )
    with caplog.at_level(logging.WARNING):
        kitchen.accept_grant(grant, home.kitchen, trust=home.trust, now=NOW)
    assert "two revocations of one serial" in caplog.text
    assert kitchen.scope_keys("core", 0) == (admin_keys.scope_key("core", 0),)  # the first


def test_a_slot_holds_a_bounded_number_of_keys(home: Home, admin_keys: Keyring) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    for n in range(keyring.MAX_KEYS_PER_SLOT + 2):
        rival = Keyring()
        rival.create_scope("core", lambda size: b"\x01" * size)
        rival.create_data_key("alice", "core", lambda size, n=n: bytes([n + 10]) * size)
        grant = rival.grant(
            home.admin, home.kitchen.verify_key, scope="core", epoch=0, user="alice",
            random_bytes=home.random_bytes,
        )  # fmt: skip
        kitchen.accept_grant(grant, home.kitchen, trust=home.trust, now=NOW)
    assert len(kitchen.data_keys("alice", "core", 0)) == keyring.MAX_KEYS_PER_SLOT


def test_rotation_keys_the_listed_users_this_robot_holds_no_key_of(admin_keys: Keyring) -> None:
    """A user keyed by another robot only, not granted here yet, still gets a key of the new
    epoch: their writes went on under the epoch the revoked robot holds."""
    rng = random.Random(5).randbytes
    admin_keys.rotate_for_revocation(["core"], rng, users=["alice", "erin", "Not An Id"])
    assert admin_keys.data_key("erin", "core", 1)
    assert admin_keys.data_key("alice", "core", 1) != admin_keys.data_key("alice", "core", 0)
    with pytest.raises(MissingKeyError):
        admin_keys.data_key("erin", "core", 0)  # no key of the epoch before: not held here
    admin_keys.forget_user("carol")
    admin_keys.rotate_for_revocation(["core"], rng, users=["carol"])
    with pytest.raises(MissingKeyError, match="forgotten"):
        admin_keys.data_key("carol", "core", 2)


def test_rotation_makes_a_new_epoch_of_every_scope_the_device_held(
    home: Home, admin_keys: Keyring
) -> None:
    held = home.trust.scopes_of(home.hall.device_id)  # core, health
    assert admin_keys.rotate_for_revocation(held, home.random_bytes) == {"core": 1, "health": 1}
    assert admin_keys.current_epoch("core") == 1
    assert admin_keys.current_epoch("spatial") == 0
    assert admin_keys.data_key("bob", "health", 1) != admin_keys.data_key("bob", "health", 0)
    assert admin_keys.scope_key("core", 0)  # old epochs stay: history still reads
    with pytest.raises(MissingKeyError):  # all or nothing
        admin_keys.rotate_for_revocation(["spatial", "garden"], home.random_bytes)
    assert admin_keys.current_epoch("spatial") == 0


def test_forget_user_drops_every_data_key_and_refuses_them_again(
    home: Home, admin_keys: Keyring
) -> None:
    kitchen = enrolled(home, admin_keys, home.kitchen)
    regrant = admin_keys.grant(
        home.admin,
        home.kitchen.verify_key,
        scope="core",
        epoch=0,
        user="alice",
        random_bytes=home.random_bytes,
    )
    assert kitchen.forget_user("alice") == 2  # core and spatial, epoch 0
    with pytest.raises(MissingKeyError, match="forgotten"):
        kitchen.doc_key("user/alice/prefs", "g", "core", "alice", 0)
    before = kitchen.key_count()  # a late grant (from an admin yet to hear of it) is dropped
    kitchen.accept_grant(regrant, home.kitchen, trust=home.trust, now=NOW)
    assert kitchen.key_count() == before
    with pytest.raises(MissingKeyError, match="forgotten"):
        kitchen.doc_key("user/alice/prefs", "g", "core", "alice", 0)
    with pytest.raises(ValidationError, match="forgotten"):
        kitchen.create_data_key("alice", "core", home.random_bytes)
    assert kitchen.doc_key("user/bob/prefs", "g", "core", "bob", 0)


def test_no_key_bytes_in_repr_str_or_errors(home: Home, admin_keys: Keyring) -> None:
    secrets = [admin_keys.scope_key(s, 0) for s in SCOPES]
    secrets += [admin_keys.data_key(u, s, 0) for u in ("alice", "bob") for s in SCOPES]
    secrets += [home.household.secret, bytes(home.owner.signing_key)]
    texts = [repr(admin_keys), str(admin_keys), repr(home.household), str(home.household)]
    texts += [repr(home.owner), repr(home.trust), repr(home.certs["owner"])]
    for call in (
        lambda: admin_keys.doc_key("d", "g", "core", None, 9),
        lambda: admin_keys.rotate_for_revocation(["garden"], home.random_bytes),
        lambda: KeyGrant.from_wire(b"\x99" + b"\x00" * 9),
    ):
        with pytest.raises((CryptoError, MissingKeyError)) as caught:
            call()
        texts.append(str(caught.value))
    assert "core@0" in repr(admin_keys)
    for text in texts:
        for secret in secrets:
            for form in (secret.hex(), repr(secret)[2:-1], secret.hex()[:16]):
                assert form not in text, text


def _resign(grant: KeyGrant, home: Home) -> bytes:
    signature = home.admin.signing_key.sign(GRANT_TAG + grant.signed_part()).signature
    return replace(grant, signature=signature).to_wire()


def _no_unsealing(*_: object) -> bytes:
    raise AssertionError("unsealed again")


def test_a_grant_made_again_is_the_same_grant_until_its_user_is_forgotten(
    home: Home, admin_keys: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def alice_core() -> bytes:
        return admin_keys.grant(
            home.admin, home.kitchen.verify_key, scope="core", epoch=0, user="alice",
            random_bytes=home.random_bytes,
        )  # fmt: skip

    first = alice_core()
    assert alice_core() == first  # not sealed and signed again
    other = admin_keys.grant(
        home.admin, home.hall.verify_key, scope="core", epoch=0, user="alice",
        random_bytes=home.random_bytes,
    )  # fmt: skip
    assert other != first  # another recipient, another grant
    kitchen = enrolled(home, admin_keys, home.kitchen)
    assert kitchen.accept_grant(first, home.kitchen, trust=home.trust, now=NOW).user == "alice"
    # offered again (every session opening does): checked, not unsealed again
    monkeypatch.setattr(keyring, "unseal", _no_unsealing)
    assert kitchen.accept_grant(first, home.kitchen, trust=home.trust, now=NOW).user == "alice"
    with pytest.raises(CertificateError):  # still checked: a stranger's copy is refused
        kitchen.accept_grant(first, home.kitchen, trust=home.trust, now=0)
    admin_keys.forget_user("alice")
    with pytest.raises(MissingKeyError, match="forgotten"):
        alice_core()


def test_nothing_is_sealed_under_a_key_older_than_the_newest_epoch_of_any_key_held() -> None:
    """A rotation grants a new epoch's data keys before its scope key (`grants_for`), and any
    grant may be lost: holding bob's key of epoch 1, and alice's and the scope key of epoch
    0 only, a robot sealed alice's documents and the household's under epoch 0, which the
    robot revoked holds (found in review; SPEC §4).  It seals neither until granted them."""
    ring = Keyring()
    rnd = random.Random(3).randbytes
    ring.create_scope("core", rnd)
    for user in ("alice", "bob"):
        ring.create_data_key(user, "core", rnd)
    assert ring.sealing_epoch("core", "alice") == ring.sealing_epoch("core", None) == 0
    source = Keyring()
    source.merge_from(ring)
    source.rotate_for_revocation(["core"], rnd, serial=1)
    bob = (UserId("bob"), Scope("core"), 1)
    assert keyring._hold(ring._data_keys, bob, source.data_key("bob", "core", 1))
    ring._changed()  # as a grant taken does
    assert ring.newest_held("core") == 1
    assert ring.current_epoch("core") == 0  # the scope key of epoch 1 is not held
    assert ring.sealing_epoch("core", "bob") == 1
    for user in ("alice", None):
        with pytest.raises(MissingKeyError, match="epoch 1"):
            ring.sealing_epoch("core", user)
    assert ring.newest_of_slot("core", "alice") == 0  # held, and opens what it sealed


def _with_shredded(ring: Keyring, shredded: list[list[object]]) -> bytes:
    """``ring`` exported, with ``shredded`` as its fifth field (the epochs forgetting shred)."""
    fields = unpack_array(
        keyring.export_secret_keys(ring), what="keyring", length=4, max_length=5,
        max_bytes=1 << 22, error=CryptoError, max_array=100_000,
    )  # fmt: skip
    return pack([*fields[:4], shredded])


@pytest.mark.parametrize(
    "shredded",
    [
        [["core", 2**63]],  # a floor no rotation reaches: core never sealed again
        [["core", -7]],  # below "none held" (-1)
        [["no such scope!", 1]],  # not a scope name
        [[5, 1], ["core", 0]],  # not a string: the next save could not sort the field
        [["core", True]],  # a bool taken for 1
        [["core", "3"]],  # a string taken for 3
    ],
)
def test_the_epochs_forgetting_shredded_are_checked_when_read(
    admin_keys: Keyring, shredded: list[list[object]]
) -> None:
    """Found in review: the fifth keyring field was taken as it came."""
    with pytest.raises(CryptoError, match="malformed entry"):
        keyring.import_secret_keys(_with_shredded(admin_keys, shredded))


def test_forgetting_keeps_the_newest_epoch_it_shredded_with_the_keys(admin_keys: Keyring) -> None:
    """A scope named twice keeps the highest (as forgetting and merging do); a keyring with
    nothing shredded is written with four fields, which a version before them reads."""
    again = keyring.import_secret_keys(_with_shredded(admin_keys, [["core", 3], ["core", 1]]))
    assert again.newest_held("core") == 3
    four = unpack_array(keyring.export_secret_keys(admin_keys), what="k", length=4,
                        max_bytes=1 << 22, error=CryptoError, max_array=100_000)  # fmt: skip
    assert len(four) == 4
    admin_keys.forget_user("alice")
    again = keyring.import_secret_keys(keyring.export_secret_keys(admin_keys))
    assert again._shredded == dict.fromkeys(SCOPES, 0)


_KEY = b"\x07" * 32


@pytest.mark.parametrize(
    ("field", "entry"),
    [
        (1, [5, 0, _KEY]),  # a scope not a string: every save after failed to sort the keys
        (1, ["no such scope!", 0, _KEY]),
        (1, ["core", -3, _KEY]),  # an epoch below none
        (1, ["core", 2**64 - 1, _KEY]),  # no epoch after it: the scope never rotates again
        (1, ["core", 1.9, _KEY]),  # a float taken for 1
        (1, ["core", "7", _KEY]),  # a string taken for 7
        (1, ["core", True, _KEY]),  # a bool taken for 1
        (2, [b"alice", "core", 0, _KEY]),  # a user not a string
        (2, ["alice", "core", -1, _KEY]),
        (3, 5),  # a forgotten user not a string: every save after failed to sort them
        (3, "Not A User"),
    ],
)
def test_every_keyring_entry_is_checked_when_read(
    admin_keys: Keyring, field: int, entry: object
) -> None:
    """Found in review: the keys and forgotten users were taken as they came, and a damaged
    entry made every later `repr` and save of the keyring raise TypeError, or left an epoch
    no rotation could pass; the floors of forgetting were checked already."""
    fields = unpack_array(keyring.export_secret_keys(admin_keys), what="k", length=4,
                          max_bytes=1 << 22, error=CryptoError, max_array=100_000)  # fmt: skip
    fields[field].append(entry)
    with pytest.raises(CryptoError, match="malformed entry"):
        keyring.import_secret_keys(pack(fields))
