"""Scope keys, per-user data keys, their epochs, and key grants between devices (SPEC §4).

Two kinds of 32-byte key, both per epoch:

- a **scope key** per (scope, epoch) encrypts the household's own documents (``home/*``);
- a **data key** per (user, scope, epoch) encrypts a user's documents, so that forgetting the
  user is deleting a handful of keys (crypto-shredding) rather than chasing every copy of every
  envelope on every robot and the relay.

Revoking a device starts a new epoch of every scope it held (`Keyring.rotate_for_revocation`):
what is written afterwards uses keys it never received.  Old epochs stay, so history still reads.

A user's data-key slot (user, scope, epoch) may hold **several keys**: the owner, keying a
person a member added, and an admin adding the same person before they hear of each other
make two keys for one slot, and neither can know.  Every robot keeps every key granted for a
slot (at most `MAX_KEYS_PER_SLOT`), opens an envelope with whichever of them it was sealed
under, and seals with the one of smallest key id (`key_id`), so robots that hold the same keys
pick the same one.  Before, the second key was refused for good, and the household split in
two.  A scope key's slot holds one: only the owner's revocations make one after epoch 0, so two
mean a restored owner revoked under a serial it had used (`_install`).  A key of an epoch the
revocation list held does not account for is not held (`accounted_for`).
docs/explanation/sync.md, "Several keys for one slot", says why each rule.

Keys travel as **key grants**: sealed to the recipient's X25519 key (its certified Ed25519 key,
converted) and signed by an owner/admin device, so a grant can neither be read in transit nor
forged by anyone who merely knows the recipient's public key.  The sealed box is built here from
libsodium's primitives with an injected ephemeral key (STYLE §1: no hidden randomness); it is
byte-compatible with ``crypto_box_seal`` and opens with ``nacl.public.SealedBox``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Self, TypeVar

import nacl.bindings
import nacl.exceptions
from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.public import PrivateKey, SealedBox
from nacl.signing import VerifyKey

from hearthsync.crypto.certificate import TrustStore
from hearthsync.crypto.identity import DeviceIdentity, device_id_of, x25519_public_key
from hearthsync.crypto.signatures import verifies
from hearthsync.crypto.wire import (
    B32_ID_RE,
    ID_RE,
    NAME_RE,
    check_bytes,
    check_canonical,
    check_text,
    check_uint,
    pack,
    unpack_array,
)
from hearthsync.errors import (
    CryptoError,
    DecryptionError,
    MissingKeyError,
    OverreachError,
    SignatureError,
    ValidationError,
)
from hearthsync.ids import Scope, UserId

KEY_BYTES = 32
#: ``crypto_box_seal`` of a 32-byte key: ephemeral public key 32 + MAC 16 + key 32
SEALED_BYTES = 80
MAX_GRANT_BYTES = 512
GRANT_TAG = b"hearth-grant-v1"
_DOC_PERSON = b"hearth-doc-v1"
_KID_PERSON = b"hearth-kid-v1"
#: keys held for one slot at most: one per owner or admin robot that made one unaware of the
#: others, in practice one or two; more are dropped (logged), not held
MAX_KEYS_PER_SLOT = 8

log = logging.getLogger(__name__)

RandomBytes = Callable[[int], bytes]
K = TypeVar("K")


def derive_doc_key(base_key: bytes, doc_id: str, lineage: str) -> bytes:
    """``BLAKE2b-32(doc_id • 0x00 • lineage; key=base_key, person=b"hearth-doc-v1")`` (SPEC §4).

    Derived per (document, lineage): a re-seeded lineage gets a fresh key, and no two documents
    ever share a (key, nonce) pair even if a nonce generator repeats across documents.
    """
    check_bytes(base_key, field="base_key", size=KEY_BYTES)
    # ids are visible ASCII (SPEC §1), so the 0x00 separator is unambiguous
    check_text(doc_id, field="doc_id", pattern=ID_RE)
    check_text(lineage, field="lineage", pattern=ID_RE)
    data = doc_id.encode() + b"\x00" + lineage.encode()
    return blake2b(
        data, digest_size=KEY_BYTES, key=base_key, person=_DOC_PERSON, encoder=RawEncoder
    )


def key_id(key: bytes) -> bytes:
    """``BLAKE2b-8(key, person=b"hearth-kid-v1")``: which of a slot's keys seals (the smallest),
    and the order the others are tried in.  Says nothing of the key (SPEC §4)."""
    return blake2b(key, digest_size=8, person=_KID_PERSON, encoder=RawEncoder)


def seal_to(recipient_pk: bytes | VerifyKey, message: bytes, ephemeral_seed: bytes) -> bytes:
    """libsodium ``crypto_box_seal`` with a caller-chosen ephemeral X25519 secret.

    ``epk • crypto_box(message, nonce=BLAKE2b-24(epk • rpk), rpk, esk)``: the construction of
    libsodium's sealed box, spelled out so that the ephemeral key is an argument.
    """
    rpk = bytes(x25519_public_key(recipient_pk))
    ephemeral = PrivateKey(check_bytes(ephemeral_seed, field="ephemeral_seed", size=32))
    epk = bytes(ephemeral.public_key)
    nonce = blake2b(epk + rpk, digest_size=24, encoder=RawEncoder)
    return epk + nacl.bindings.crypto_box(message, nonce, rpk, bytes(ephemeral))


def unseal(identity: DeviceIdentity, sealed: bytes) -> bytes:
    """Open a sealed box addressed to ``identity``; `DecryptionError` if it is not for us."""
    try:
        return SealedBox(identity.x25519_private_key()).decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionError("sealed key does not open with this device's key") from None


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """``[1, kind, scope, user, epoch, recipient, granter_pk, sealed, signature]`` (SPEC §4).

    ``user`` is ``""`` for a scope key.  Nothing here is secret: the key is inside ``sealed``.
    """

    kind: str
    scope: str
    user: str
    epoch: int
    recipient: str
    granter_pk: bytes
    sealed: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("scope", "data"):
            raise ValidationError("kind must be 'scope' or 'data'", field="kind")
        check_text(self.scope, field="scope", pattern=NAME_RE)
        if self.kind == "data":
            check_text(self.user, field="user", pattern=NAME_RE)
        elif self.user != "":
            raise ValidationError("user must be empty in a scope key grant", field="user")
        check_uint(self.epoch, field="epoch")
        check_text(self.recipient, field="recipient", pattern=B32_ID_RE)
        check_bytes(self.granter_pk, field="granter_pk", size=32)
        check_bytes(self.sealed, field="sealed", size=SEALED_BYTES)
        check_bytes(self.signature, field="signature", size=64)

    @property
    def granter_id(self) -> str:
        return device_id_of(self.granter_pk)

    def signed_part(self) -> bytes:
        return pack([1, *self._fields()])

    def to_wire(self) -> bytes:
        return pack([1, *self._fields(), self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        what = "key grant"
        value = unpack_array(
            data, what=what, length=9, max_bytes=MAX_GRANT_BYTES, error=CryptoError
        )
        try:
            grant = cls(*value[1:])
        except ValidationError as exc:
            raise CryptoError(f"{what}: {exc}") from None
        check_canonical(data, grant.to_wire(), what=what, error=CryptoError)
        return grant

    def check_signature(self) -> None:
        if not verifies(self.granter_pk, GRANT_TAG + self.signed_part(), self.signature):
            raise SignatureError("key grant: signature does not verify")

    def _fields(self) -> list[object]:
        return [
            self.kind,
            self.scope,
            self.user,
            self.epoch,
            self.recipient,
            self.granter_pk,
            self.sealed,
        ]


class Keyring:
    """The keys this device holds.  ``repr`` lists scopes and epochs, never a key byte."""

    def __init__(self) -> None:
        #: the keys of each slot, smallest key id first: the first seals, any opens
        self._scope_keys: dict[tuple[Scope, int], tuple[bytes, ...]] = {}
        self._data_keys: dict[tuple[UserId, Scope, int], tuple[bytes, ...]] = {}
        self._forgotten: set[UserId] = set()
        # derived per-document keys and newest epochs, asked for on every envelope; both
        # emptied whenever the keys change (`_changed`), so forgetting leaves nothing behind
        self._derived: dict[tuple[bytes, str, str], bytes] = {}
        self._newest: dict[str, int] = {}
        #: per scope, the newest epoch of the data keys forgetting shredded: still counted
        #: as held by `newest_held`, so forgetting a user cannot bring sealing back to an
        #: epoch before a revocation (found in review)
        self._shredded: dict[Scope, int] = {}
        #: grants made, by (granter, recipient, key): the same grant is sent again rather than
        #: sealed and signed again (about 0.2 ms each; every session opening offers every
        #: key); emptied when a user is forgotten
        self._grants: dict[tuple[bytes, bytes, bytes], bytes] = {}
        #: the sealed keys of grants accepted: the same grant offered again (at every session
        #: opening) is checked, not unsealed and installed again
        self._accepted: set[bytes] = set()

    def _changed(self) -> None:
        self._derived.clear()
        self._newest.clear()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{scope}@{','.join(str(e) for e in sorted(self._epochs(scope)))}"
            for scope in sorted(self.scopes)
        )
        return (
            f"Keyring(scopes=[{shown}], data keys={len(self._data_keys)}, "
            f"forgotten users={len(self._forgotten)})"
        )

    __str__ = __repr__

    def merge_from(self, other: Keyring) -> int:
        """Hold every key of ``other`` that this keyring lacks (never a forgotten user's, nor
        a second scope key of an epoch: `_install`); return how many were added."""
        added = 0
        self._changed()
        for index, keys in other._scope_keys.items():
            if index not in self._scope_keys:
                added += sum(_hold(self._scope_keys, index, key) for key in keys)
        for data_index, keys in other._data_keys.items():
            if data_index[0] not in self._forgotten:
                added += sum(_hold(self._data_keys, data_index, key) for key in keys)
        for scope, epoch in other._shredded.items():
            self._shredded[scope] = max(self._shredded.get(scope, -1), epoch)
        return added

    def key_count(self) -> int:
        """How many keys this device holds (to tell whether a grant taught it anything)."""
        return sum(map(len, self._scope_keys.values())) + sum(map(len, self._data_keys.values()))

    @property
    def scopes(self) -> frozenset[Scope]:
        return frozenset(s for s, _ in self._scope_keys) | {s for _, s, _ in self._data_keys}

    def current_epoch(self, scope: str) -> int:
        """The newest epoch this device holds the scope key of (any key of ``scope``, if it
        holds no scope key of it): the epoch new users' keys are made in.

        The scope key's, not a data key's: a rotation's grants send every data key of an
        epoch before its scope key (`grants_for`), so the owner, which keys every user it
        holds no key of in this epoch whenever it is granted keys, does not key them in the
        middle of the batch that brings theirs (it made a second key of every user at every
        admin's rotation; found in review)."""
        newest = self._newest.get(scope)
        if newest is None:
            epochs = {e for (s, e) in self._scope_keys if s == scope} or self._epochs(scope)
            if not epochs:
                raise MissingKeyError(f"no key held for scope {scope!r}")
            newest = self._newest[scope] = max(epochs)
        return newest

    def sealing_epoch(self, scope: str, user: str | None) -> int:
        """The epoch whose key for ``user``'s documents of ``scope`` (household documents:
        ``user`` None, the scope key) sealing uses: the newest epoch of the scope this device
        holds any key of (`newest_held`: a scope key, or any user's data key).

        Not an older key of the slot: that epoch began with a revocation, and the revoked
        robot holds the keys before it.  `MissingKeyError` then, until the slot's key of the
        newest epoch is granted (the document is asked for with `KEY_REQUEST`, SPEC §6.5).
        Sealing under the older key, as robots did, left what they wrote after a revocation
        readable by the robot revoked, and, for a user the owner never keyed since (one a
        revoked admin added), never readable by the owner (the chaos harness, seed 7002366).
        Compared with the newest epoch of *any* key, not of the scope key alone: a robot
        that missed the new scope key with the user's went on sealing under the old epoch,
        and never asked (found in review)."""
        index = f"{scope}\x00{user or ''}"
        newest = self._newest.get(index)
        if newest is None:
            newest = self.newest_of_slot(scope, user)
            if 0 <= newest < self.newest_held(scope):
                newest = -2  # held, but of an epoch before the scope's newest
            self._newest[index] = newest
        if newest == -1:
            raise MissingKeyError(f"no key held for scope {scope!r}, user {user!r}")
        if newest == -2:
            raise MissingKeyError(
                f"no key held for scope {scope!r}, user {user!r} in epoch "
                f"{self.newest_held(scope)}, the scope's newest here (not granted yet)"
            )
        return newest

    def newest_of_slot(self, scope: str, user: str | None) -> int:
        """The newest epoch of ``user``'s data keys of ``scope`` (None: of the scope key)
        held, whether or not it seals (-1: none)."""
        index = f"slot\x00{scope}\x00{user if user is not None else ''}"
        newest = self._newest.get(index)
        if newest is None:
            if user is None:
                epochs = [e for (s, e) in self._scope_keys if s == scope]
            else:
                epochs = [e for (u, s, e) in self._data_keys if u == user and s == scope]
            newest = self._newest[index] = max(epochs, default=-1)
        return newest

    def keyed_users(self) -> frozenset[UserId]:
        """The users this device holds any data key of."""
        return frozenset(user for user, _, _ in self._data_keys)

    def newest_held(self, scope: str) -> int:
        """The newest epoch of ``scope`` this device holds any key of, a scope key or any
        user's data key (-1 if none): what a revoked robot can read of (`current_epoch`
        looks at scope keys, and a user's data key of a new epoch alone opens their
        documents)."""
        return max(self._epochs(scope) | {self._shredded.get(Scope(scope), -1)})

    def _epochs(self, scope: str) -> set[int]:
        epochs = {e for (s, e) in self._scope_keys if s == scope}
        return epochs | {e for (_, s, e) in self._data_keys if s == scope}

    def scope_key(self, scope: str, epoch: int) -> bytes:
        """The scope key that seals (of several for the slot, the smallest key id)."""
        return self.scope_keys(scope, epoch)[0]

    def scope_keys(self, scope: str, epoch: int) -> tuple[bytes, ...]:
        """Every scope key held for (``scope``, ``epoch``), the sealing one first."""
        keys = self._scope_keys.get((Scope(scope), epoch))
        if keys is None:
            raise MissingKeyError(f"no key held for scope {scope!r} epoch {epoch}")
        return keys

    def data_key(self, user: str, scope: str, epoch: int) -> bytes:
        """``user``'s data key that seals (of several for the slot, the smallest key id)."""
        return self.data_keys(user, scope, epoch)[0]

    def data_keys(self, user: str, scope: str, epoch: int) -> tuple[bytes, ...]:
        """Every data key held for (``user``, ``scope``, ``epoch``), the sealing one first."""
        keys = self._data_keys.get((UserId(user), Scope(scope), epoch))
        if keys is None:
            gone = " (user forgotten)" if user in self._forgotten else ""
            raise MissingKeyError(
                f"no data key held for user {user!r}, scope {scope!r}, epoch {epoch}{gone}"
            )
        return keys

    def doc_key(
        self, doc_id: str, lineage: str, scope: str, subject: str | None, epoch: int
    ) -> bytes:
        """The key that seals one document (SPEC §4): from the subject's data key, or the
        scope key for household documents (``subject`` None).  `MissingKeyError` if the base
        is absent."""
        return self.doc_keys(doc_id, lineage, scope, subject, epoch)[0]

    def doc_keys(
        self, doc_id: str, lineage: str, scope: str, subject: str | None, epoch: int
    ) -> list[bytes]:
        """Every key that may have sealed an envelope of the document: the sealing one
        (`doc_key`) first, then the slot's others (an envelope from a robot that holds
        other keys of the slot than this one)."""
        if subject is None:
            bases = self.scope_keys(scope, epoch)
        else:
            bases = self.data_keys(subject, scope, epoch)
        keys = []
        for base in bases:
            index = (base, doc_id, lineage)
            key = self._derived.get(index)
            if key is None:
                key = self._derived[index] = derive_doc_key(base, doc_id, lineage)
            keys.append(key)
        return keys

    def create_scope(self, scope: str, random_bytes: RandomBytes) -> int:
        """Make epoch 0 of a new scope (done once, by the owner, when the household starts)."""
        check_text(scope, field="scope", pattern=NAME_RE)
        if scope in self.scopes:
            raise ValidationError(f"scope {scope!r} already has keys", field="scope")
        self._changed()
        self._scope_keys[(Scope(scope), 0)] = (_new_key(random_bytes),)
        return 0

    def create_data_key(self, user: str, scope: str, random_bytes: RandomBytes) -> int:
        """Make ``user``'s data key for the current epoch of ``scope``; return that epoch.

        Refused where this device holds one for that epoch already: a robot makes at most
        one key per slot, so a slot holds at most one per owner or admin robot."""
        check_text(user, field="user", pattern=NAME_RE)
        if user in self._forgotten:
            raise ValidationError(f"user {user!r} was forgotten", field="user")
        epoch = self.current_epoch(scope)
        if (user, scope, epoch) in self._data_keys:
            raise ValidationError(f"user {user!r} already has a {scope!r} key", field="user")
        self._changed()
        self._data_keys[(UserId(user), Scope(scope), epoch)] = (_new_key(random_bytes),)
        return epoch

    def rotate_for_revocation(
        self,
        revoked_device_scopes: Iterable[str],
        random_bytes: RandomBytes,
        users: Iterable[str] = (),
        serial: int = 0,
    ) -> dict[Scope, int]:
        """Start a new epoch of every scope a revoked device held; return the new epochs.

        The scope key and the data key of every (non-forgotten) user of the scope get fresh
        keys at ``current_epoch + 1``, or at ``serial`` (the serial of the revocation list
        that revokes the device) if that is later; grant them to the remaining devices
        (`grants_for`).  A robot that revoked without the household's newest keys (members
        pass lists on, never keys) made an epoch another robot had made already, whose key
        the robot it revoked held (found in review): the list's serial is new, so is the
        epoch.  The users are those this device holds keys of and ``users`` (the household's
        list): a user keyed by another robot only, not yet granted here, still gets a new
        key, or their writes would go on under the epoch the revoked device holds.  All or
        nothing: a scope this device holds no key for raises `MissingKeyError` before any
        change.
        """
        scopes = sorted({Scope(s) for s in revoked_device_scopes})
        epochs = {s: max(self.current_epoch(s) + 1, serial) for s in scopes}
        listed = {UserId(u) for u in users if NAME_RE.fullmatch(u)} - self._forgotten
        new_scope_keys: dict[tuple[Scope, int], tuple[bytes, ...]] = {}
        new_data_keys: dict[tuple[UserId, Scope, int], tuple[bytes, ...]] = {}
        for scope in scopes:
            new_scope_keys[(scope, epochs[scope])] = (_new_key(random_bytes),)
            for user in sorted({u for (u, s, _) in self._data_keys if s == scope} | listed):
                new_data_keys[(user, scope, epochs[scope])] = (_new_key(random_bytes),)
        self._changed()
        self._scope_keys.update(new_scope_keys)
        self._data_keys.update(new_data_keys)
        return epochs

    def holds_data_keys(self, user: str) -> bool:
        """Whether any data key of ``user`` is held, of any scope and epoch."""
        return any(held == user for held, _, _ in self._data_keys)

    def is_forgotten(self, user: str) -> bool:
        return user in self._forgotten

    def forget_user(self, user: str) -> int:
        """Drop every data key of ``user`` and refuse them from now on; return how many.

        This is what makes forgetting structural (DESIGN: Forgetting): envelopes still held by
        the relay or a lost robot stay undecryptable once no enrolled device keeps these keys.
        """
        doomed = [k for k in self._data_keys if k[0] == user]
        self._changed()
        for key in doomed:
            del self._data_keys[key]
            _, scope, epoch = key
            self._shredded[scope] = max(self._shredded.get(scope, -1), epoch)
        self._forgotten.add(UserId(user))
        self._grants.clear()
        self._accepted.clear()
        return len(doomed)

    def grant(
        self,
        granter: DeviceIdentity,
        recipient_pk: bytes | VerifyKey,
        *,
        scope: str,
        epoch: int,
        user: str | None = None,
        random_bytes: RandomBytes,
    ) -> bytes:
        """A signed key grant of one held key, sealed to ``recipient_pk`` (SPEC §4)."""
        key = self.scope_key(scope, epoch) if user is None else self.data_key(user, scope, epoch)
        return self._grant(granter, recipient_pk, scope, epoch, user, key, random_bytes)

    def _grant(
        self, granter: DeviceIdentity, recipient_pk: bytes | VerifyKey, scope: str,
        epoch: int, user: str | None, key: bytes, random_bytes: RandomBytes,
    ) -> bytes:  # fmt: skip
        kind = "scope" if user is None else "data"
        made = (bytes(granter.verify_key), bytes(recipient_pk), key)
        if made in self._grants:
            return self._grants[made]
        unsigned = KeyGrant(
            kind=kind,
            scope=scope,
            user=user or "",
            epoch=epoch,
            recipient=device_id_of(bytes(recipient_pk)),
            granter_pk=bytes(granter.verify_key),
            sealed=seal_to(recipient_pk, key, random_bytes(32)),
            signature=bytes(64),
        )
        signature = granter.signing_key.sign(GRANT_TAG + unsigned.signed_part()).signature
        grant = replace(unsigned, signature=signature).to_wire()
        self._grants[made] = grant
        return grant

    def grants_for(
        self,
        granter: DeviceIdentity,
        recipient_pk: bytes | VerifyKey,
        scopes: Iterable[str],
        random_bytes: RandomBytes,
    ) -> list[bytes]:
        """Grants of every key (all epochs, scope and data keys, every key of a slot) of
        ``scopes`` that we hold: what a newly enrolled device, or one left after a
        revocation, needs."""
        wanted = set(scopes)
        return self._grants_of(granter, recipient_pk, random_bytes,
                            lambda user, scope: scope in wanted)  # fmt: skip

    def grants_of_slot(
        self,
        granter: DeviceIdentity,
        recipient_pk: bytes | VerifyKey,
        scope: str,
        user: str | None,
        random_bytes: RandomBytes,
    ) -> list[bytes]:
        """Grants of every key we hold of one slot, every epoch: ``user``'s data keys of
        ``scope``, or (``user`` None) the scope's own keys.  What a device asks for when it
        holds documents it cannot seal (a grant lost on the way, SPEC §6.5)."""
        return self._grants_of(granter, recipient_pk, random_bytes,
                            lambda u, s: s == scope and u == user)  # fmt: skip

    def _grants_of(
        self,
        granter: DeviceIdentity,
        recipient_pk: bytes | VerifyKey,
        random_bytes: RandomBytes,
        wanted: Callable[[str | None, str], bool],
    ) -> list[bytes]:
        """Grants of every key held of the slots ``wanted(user, scope)`` picks (``user``
        None: a scope key)."""
        # the data keys first: a robot makes a new user's keys in the epoch of the newest
        # scope key it holds (`current_epoch`), so a rotation's scope key comes after its data
        grants = [
            self._grant(granter, recipient_pk, s, e, u, key, random_bytes)
            for (u, s, e), keys in sorted(self._data_keys.items())
            if wanted(u, s)
            for key in keys
        ]
        grants += [
            self._grant(granter, recipient_pk, s, e, None, key, random_bytes)
            for (s, e), keys in sorted(self._scope_keys.items())
            if wanted(None, s)
            for key in keys
        ]
        return grants

    def accept_grant(
        self, data: bytes, identity: DeviceIdentity, *, trust: TrustStore, now: int
    ) -> KeyGrant:
        """Check a grant addressed to ``identity`` and hold its key.

        Order: structure, recipient, granter authority (a good owner/admin certificate in
        ``trust``), signature, the granter's scopes, then unsealing.  Any failure raises and
        changes nothing.  A good grant of a forgotten user's key is not an error; its key is
        dropped unused.  So is one of an epoch no revocation list held here accounts for
        (`accounted_for`).
        """
        grant = KeyGrant.from_wire(data)
        if grant.recipient != identity.device_id:
            raise CryptoError(f"key grant is for device {grant.recipient}, not this one")
        granter = trust.authority(grant.granter_pk, now)
        grant.check_signature()
        if grant.scope not in granter.scopes:
            # a granter passes on no more than its certificate names, as a certificate's
            # issuer does (SPEC §3): an admin given core alone granted a key of its own
            # making for a user's health slot, robots sealed with it (the smallest key id
            # of the slot) and it read what they wrote (found in review)
            raise OverreachError(
                f"key grant by {granter.device_id}: scope {grant.scope!r} beyond its own"
            )
        if not accounted_for(grant.epoch, trust):
            return grant
        if grant.sealed in self._accepted:
            return grant  # its key is held already: the same sealed bytes hold the same key
        key = unseal(identity, grant.sealed)
        if len(key) != KEY_BYTES:
            raise DecryptionError("key grant does not hold a 32-byte key")
        self._install(grant, key)
        self._accepted.add(grant.sealed)
        return grant

    def _install(self, grant: KeyGrant, key: bytes) -> None:
        scope = Scope(grant.scope)
        self._changed()
        if grant.kind == "scope":
            held = self._scope_keys.get((scope, grant.epoch), ())
            if held and not any(hmac.compare_digest(key, other) for other in held):
                # scope keys are made once, by the owner (epoch 0), and by the owner's
                # revocations: two of one epoch are two lists of one serial (an owner restored
                # from an old backup).  Holding both, a robot granted one side's keys to the
                # robot the other side revoked (found in review): the first is kept.  Not an
                # error: refusing closed the session before the grants of the epoch the owner
                # merges the two lists into, which come after, and the household split
                log.warning(
                    "kept the key held for scope %r epoch %d, not another one granted: two "
                    "revocations of one serial", str(scope), grant.epoch,
                )  # fmt: skip
                return
            _hold(self._scope_keys, (scope, grant.epoch), key)
            return
        user = UserId(grant.user)
        if user in self._forgotten:
            # refused, quietly: an owner or admin that has not yet heard of the forgetting
            # grants what it still holds; closing its session would keep the news from it
            return
        _hold(self._data_keys, (user, scope, grant.epoch), key)


def accounted_for(epoch: int, trust: TrustStore) -> bool:
    """Whether a revocation list held in ``trust`` accounts for ``epoch``: every epoch after
    the first comes of a revocation, whose list has a serial of at least the epoch, and a
    rotation sends its list before its keys (SPEC §4).

    A key of a later epoch held here was either granted before its list (lost on the way:
    the simulation drops frames), and an admin holding it granted it on to the robot the
    list revokes, which it still took for a member (seed 20071); or planted ahead by an
    admin about to be revoked, to be the key the household seals with once it is (found in
    review; only the owner revokes now, but a key's list may still be lost on the way).
    Refused, it comes again once the list is here: the granter's next session
    grants it, and a robot that meets a document it cannot open asks for that session."""
    revocations = trust.revocations
    return epoch <= (revocations.serial if revocations is not None else 0)


def _hold(slots: dict[K, tuple[bytes, ...]], index: K, key: bytes) -> bool:
    """Hold ``key`` among its slot's keys, smallest key id first; False if held already (or
    the slot is full).  A second key for a slot is not an error: two owner or admin robots
    made one each, unaware of each other (the module's docstring)."""
    held = slots.get(index, ())
    if any(hmac.compare_digest(key, other) for other in held):
        return False
    if len(held) >= MAX_KEYS_PER_SLOT:
        log.warning("not holding a key for %s: it holds %d already", index, len(held))
        return False
    slots[index] = tuple(sorted((*held, key), key=key_id))
    return True


def _new_key(random_bytes: RandomBytes) -> bytes:
    return check_bytes(random_bytes(KEY_BYTES), field="random_bytes(32)", size=KEY_BYTES)


# ---------------------------------------------------------------------- keeping keys on disk
# The store keeps a device's keyring in its 0600 credentials file; these two functions are the
# only way key bytes leave a Keyring, and they are named so that no one calls them by accident.

#: a slot's keys are entries of their own: a keyring of one key per slot reads as before, and
#: an older version reading this one keeps one key of a slot (the last), as it always did
_KEYRING_FORMAT = 1
#: an epoch is a revocation list's serial (SPEC §4): none reaches this; a key or a floor
#: past it can only come of a damaged file
MAX_EPOCH = 2**32


def export_secret_keys(keyring: Keyring) -> bytes:
    """Every key this device holds, for its own private credentials file only."""
    # a slot's sealing key (the first) last: a version that holds one key per slot keeps the
    # last entry of a slot, and so seals as this one does
    scope_keys = [
        [s, e, k] for (s, e), keys in sorted(keyring._scope_keys.items()) for k in keys[::-1]
    ]
    data_keys = [
        [u, s, e, k] for (u, s, e), keys in sorted(keyring._data_keys.items()) for k in keys[::-1]
    ]
    fields = [_KEYRING_FORMAT, scope_keys, data_keys, sorted(keyring._forgotten)]
    if keyring._shredded:  # a fifth field only then: a version before it reads the rest
        fields.append([[s, e] for s, e in sorted(keyring._shredded.items())])
    return pack(fields)


def import_secret_keys(data: bytes) -> Keyring:
    """The inverse of `export_secret_keys`; `CryptoError` if the bytes are not a keyring."""
    fields = unpack_array(
        data, what="keyring", length=4, max_length=5, max_bytes=4 * 1024 * 1024,
        error=CryptoError, max_array=100_000,
    )  # fmt: skip
    keyring = Keyring()
    # every entry checked as it is made: a huge epoch stopped all sealing in the scope for
    # good, a scope or user not a name broke every save after (found in review, for the
    # floors of forgetting first, then for the keys and the forgotten users)
    try:
        for scope, epoch, key in fields[1]:
            index = (_name(scope), _epoch(epoch))
            _hold(keyring._scope_keys, index, check_bytes(key, field="key", size=32))
        for user, scope, epoch, key in fields[2]:
            data_index = (UserId(_name(user)), _name(scope), _epoch(epoch))
            _hold(keyring._data_keys, data_index, check_bytes(key, field="key", size=32))
        keyring._forgotten.update(UserId(_name(u)) for u in fields[3])
        for scope, epoch in fields[4] if len(fields) > 4 else ():  # since forgetting floors
            name = _name(scope)
            keyring._shredded[name] = max(keyring._shredded.get(name, -1), _epoch(epoch))
    except (TypeError, ValueError) as exc:
        raise CryptoError(f"keyring: malformed entry ({type(exc).__name__})") from None
    return keyring


def _name(value: object) -> Scope:
    """A scope or user name read back from a keyring (`ValidationError`, a ValueError)."""
    return Scope(check_text(value, field="name", pattern=NAME_RE))


def _epoch(value: object) -> int:
    """An epoch read back from a keyring: one no revocation list's serial reaches is damage."""
    epoch = check_uint(value, field="epoch")
    if epoch > MAX_EPOCH:
        raise ValueError("epoch")
    return epoch
