"""Device certificates, revocation lists and the trust store that checks them (SPEC §3).

The owner's self-signed certificate is the root; the owner and admins certify devices; a
serial-numbered revocation list, which only the owner signs, removes them.  `TrustStore`
answers the one question a session, the relay and the keyring ask: *is this certificate good
now?*  It holds only certificates that verified when added, and re-checks the whole chain on
every `TrustStore.verify`, because an issuer may have expired or been revoked since.

Checks run in a fixed order: signature, household, issuer authority, revocation, validity
window.  The signature comes before any field is believed, so a forged
certificate is reported as forged, not as "expired" because of a flipped bit in ``expires_at``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Self

from nacl.signing import VerifyKey

from hearthsync.crypto.household import Household, household_id
from hearthsync.crypto.identity import DeviceIdentity, device_id_of
from hearthsync.crypto.signatures import verifies
from hearthsync.crypto.wire import (
    B32_ID_RE,
    NAME_RE,
    check_bytes,
    check_canonical,
    check_sorted_names,
    check_text,
    check_uint,
    pack,
    unpack_array,
)
from hearthsync.errors import CertificateError, OverreachError, ValidationError
from hearthsync.ids import DeviceId, Scope

log = logging.getLogger(__name__)

ROLES = ("owner", "admin", "member")
#: roles whose certificates may issue certificates, revocations and key grants (SPEC §3)
ISSUING_ROLES = frozenset({"owner", "admin"})
#: how far a revocation list's serial may pass the one held (each list takes the next serial;
#: a robot that was away skips the ones it missed, never a million)
MAX_SERIAL_STEP = 1 << 20
MAX_CERTIFICATE_BYTES = 1024  # SPEC §1
MAX_SCOPES = 16
MAX_DEVICE_NAME_BYTES = 64
MAX_REVOCATIONS_BYTES = 64 * 1024  # SPEC §3
MAX_REVOKED = 2048
#: an issuer chain longer than this is refused (renewals could otherwise form a cycle)
MAX_CHAIN = 8
#: conflicting revocation lists held at once (`TrustStore.conflicting`), until the owner merges
MAX_CONFLICTING = 8
#: the nonce of a version 2 revocation list, which tells lists signed apart from each other
REVOCATION_NONCE_BYTES = 16

CERT_TAG = b"hearth-cert-v1"
REVOKE_TAG = b"hearth-revoke-v1"


def _verify(tag: bytes, signed: bytes, signature: bytes, public_key: bytes, what: str) -> None:
    if not verifies(public_key, tag + signed, signature):
        raise CertificateError(f"{what}: signature does not verify")


@dataclass(frozen=True, slots=True)
class Certificate:
    """``[1, household_id, device_pk, device_name, role, scopes, issued_at, expires_at,
    issuer_pk, signature]`` (SPEC §3).  Construct with `issue` or `self_signed_owner`."""

    household_id: str
    device_pk: bytes
    device_name: str
    role: str
    scopes: tuple[str, ...]
    issued_at: int
    expires_at: int
    issuer_pk: bytes
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_text(self.household_id, field="household_id", pattern=B32_ID_RE)
        check_bytes(self.device_pk, field="device_pk", size=32)
        check_text(self.device_name, field="device_name", max_bytes=MAX_DEVICE_NAME_BYTES)
        if self.role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}", field="role")
        check_sorted_names(self.scopes, field="scopes", pattern=NAME_RE, max_items=MAX_SCOPES)
        check_uint(self.issued_at, field="issued_at")
        check_uint(self.expires_at, field="expires_at")
        if self.expires_at <= self.issued_at:
            raise ValidationError("expires_at must be after issued_at", field="expires_at")
        check_bytes(self.issuer_pk, field="issuer_pk", size=32)
        check_bytes(self.signature, field="signature", size=64)
        if len(self.to_wire()) > MAX_CERTIFICATE_BYTES:
            raise ValidationError(f"certificate is over {MAX_CERTIFICATE_BYTES} bytes")

    @classmethod
    def issue(
        cls,
        issuer: DeviceIdentity,
        *,
        household_id: str,
        device_pk: bytes,
        device_name: str,
        role: str,
        scopes: Iterable[str],
        issued_at: int,
        expires_at: int,
    ) -> Self:
        """Sign a certificate for ``device_pk``; ``scopes`` are sorted here (SPEC §3)."""
        unsigned = cls(
            household_id,
            device_pk,
            device_name,
            role,
            tuple(sorted(set(scopes))),
            issued_at,
            expires_at,
            bytes(issuer.verify_key),
            bytes(64),  # placeholder: validates every field before anything is signed
        )
        signature = issuer.signing_key.sign(CERT_TAG + unsigned.signed_part()).signature
        return replace(unsigned, signature=signature)

    @classmethod
    def self_signed_owner(
        cls,
        owner: DeviceIdentity,
        household: Household,
        *,
        device_name: str,
        scopes: Iterable[str],
        issued_at: int,
        expires_at: int,
    ) -> Self:
        """The household's root certificate: role ``owner``, ``issuer_pk = device_pk``."""
        return cls.issue(
            owner,
            household_id=household.id,
            device_pk=bytes(owner.verify_key),
            device_name=device_name,
            role="owner",
            scopes=scopes,
            issued_at=issued_at,
            expires_at=expires_at,
        )

    @property
    def device_id(self) -> DeviceId:
        return device_id_of(self.device_pk)

    @property
    def issuer_id(self) -> DeviceId:
        return device_id_of(self.issuer_pk)

    @property
    def is_self_signed(self) -> bool:
        return self.issuer_pk == self.device_pk

    @property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self.device_pk)

    def signed_part(self) -> bytes:
        """``cert_signed_part`` of SPEC §3."""
        return pack([1, *self._fields()])

    def check_signature(self) -> None:
        """Raise `CertificateError` unless ``issuer_pk`` signed this certificate."""
        what = f"certificate of {self.device_id}"
        _verify(CERT_TAG, self.signed_part(), self.signature, self.issuer_pk, what)

    def to_wire(self) -> bytes:
        return pack([1, *self._fields(), self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        """Decode and validate (not verify) a certificate; `CertificateError` names the fault."""
        what = "certificate"
        value = unpack_array(
            data, what=what, length=10, max_bytes=MAX_CERTIFICATE_BYTES, error=CertificateError
        )
        if isinstance(value[5], list):
            value[5] = tuple(value[5])
        try:
            cert = cls(*value[1:])
        except ValidationError as exc:
            raise CertificateError(f"{what}: {exc}") from None
        check_canonical(data, cert.to_wire(), what=what, error=CertificateError)
        return cert

    def _fields(self) -> list[object]:
        return [
            self.household_id,
            self.device_pk,
            self.device_name,
            self.role,
            list(self.scopes),
            self.issued_at,
            self.expires_at,
            self.issuer_pk,
        ]


@dataclass(frozen=True, slots=True)
class Revocations:
    """``[1, household_id, serial, revoked, issuer_pk, signature]``, or with a ``nonce``
    ``[2, household_id, serial, revoked, issuer_pk, nonce, signature]`` (SPEC §3).

    ``revoked`` is sorted and free of duplicates so that the encoding is canonical.  The
    nonce tells apart two lists the owner signed apart with the same serial and robots: an
    owner restored from an older backup that revokes again a robot the household revoked
    since signed the household's very list (Ed25519 signatures are deterministic) with a
    different key of that epoch, and no robot saw a conflict (found in review).
    """

    household_id: str
    serial: int
    revoked: tuple[str, ...]
    issuer_pk: bytes
    signature: bytes = field(repr=False)
    nonce: bytes = b""

    def __post_init__(self) -> None:
        check_text(self.household_id, field="household_id", pattern=B32_ID_RE)
        check_uint(self.serial, field="serial")
        check_sorted_names(self.revoked, field="revoked", pattern=B32_ID_RE, max_items=MAX_REVOKED)
        check_bytes(self.issuer_pk, field="issuer_pk", size=32)
        check_bytes(self.signature, field="signature", size=64)
        if self.nonce:
            check_bytes(self.nonce, field="nonce", size=REVOCATION_NONCE_BYTES)

    @classmethod
    def issue(
        cls, issuer: DeviceIdentity, *, household_id: str, serial: int, revoked: Iterable[str],
        nonce: bytes = b"",
    ) -> Self:  # fmt: skip
        """Sign a revocation list; ``revoked`` must repeat every device of the previous list.
        A revocation passes a fresh ``nonce`` (16 bytes; none: a version 1 list)."""
        listed = tuple(sorted(set(revoked)))
        unsigned = cls(household_id, serial, listed, bytes(issuer.verify_key), bytes(64), nonce)
        signature = issuer.signing_key.sign(REVOKE_TAG + unsigned.signed_part()).signature
        return replace(unsigned, signature=signature)

    @property
    def issuer_id(self) -> DeviceId:
        return device_id_of(self.issuer_pk)

    def _fields(self) -> list[object]:
        fields: list[object] = [self.household_id, self.serial, list(self.revoked), self.issuer_pk]
        return [2, *fields, self.nonce] if self.nonce else [1, *fields]

    def signed_part(self) -> bytes:
        return pack(self._fields())

    def check_signature(self) -> None:
        what = f"revocation list {self.serial}"
        _verify(REVOKE_TAG, self.signed_part(), self.signature, self.issuer_pk, what)

    def to_wire(self) -> bytes:
        return pack([*self._fields(), self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        what = "revocation list"
        value = unpack_array(
            data,
            what=what,
            length=6,
            max_length=7,
            max_bytes=MAX_REVOCATIONS_BYTES,
            error=CertificateError,
            max_array=MAX_REVOKED,
            versioned=False,
        )
        if value[0] != len(value) - 5 or type(value[0]) is not int:  # 1: six fields, 2: seven
            raise CertificateError(f"{what}: unsupported version {value[0]!r:.20}")
        if isinstance(value[3], list):
            value[3] = tuple(value[3])
        try:
            if value[0] == 2:
                household, serial, revoked, issuer, nonce, signature = value[1:]
                if not nonce:
                    raise ValidationError("a version 2 list has a nonce", field="nonce")
                revocations = cls(household, serial, revoked, issuer, signature, nonce)
            else:
                revocations = cls(*value[1:])
        except (ValidationError, TypeError) as exc:
            raise CertificateError(f"{what}: {exc}") from None
        check_canonical(data, revocations.to_wire(), what=what, error=CertificateError)
        return revocations


class TrustStore:
    """The certificates of one household and its latest revocation list.

    Built from ``(household_id, household_nonce)``, learned at enrollment: the nonce is what
    singles out the owner's self-signed certificate among any others (SPEC §2-§3).  Only
    certificates that verify are stored (`add`), at most one per device: the latest issued.
    """

    def __init__(self, household_id: str, household_nonce: bytes) -> None:
        self.household_id = household_id
        self._nonce = household_nonce
        self._certs: dict[DeviceId, Certificate] = {}
        self._scopes: dict[DeviceId, tuple[Certificate, frozenset[Scope]]] = {}
        self._revocations: Revocations | None = None
        self._revoked: frozenset[str] = frozenset()
        self._conflicting: tuple[Revocations, ...] = ()

    @classmethod
    def for_household(cls, household: Household) -> TrustStore:
        return cls(household.id, household.nonce)

    def __repr__(self) -> str:
        serial = None if self._revocations is None else self._revocations.serial
        return (
            f"TrustStore({self.household_id}, {len(self._certs)} certificates, "
            f"{len(self._revoked)} revoked, revocation serial {serial})"
        )

    @property
    def revocations(self) -> Revocations | None:
        return self._revocations

    @property
    def conflicting(self) -> tuple[Revocations, ...]:
        """Lists the owner signed that the held one neither replaces nor contains: an owner
        restored from a backup older than its last revocation signed them apart (SPEC §3).
        Their robots count as revoked here too; they are gossiped with the held list, and the
        owner merges them (`enrolment.catch_up`).  Kept with the credentials, in a field of
        their own while there are any (a robot restarting trusted their robots again until
        it met one holding them; found in review)."""
        return self._conflicting

    def gossip(self) -> list[Revocations]:
        """The lists to send a peer: the held one, then the conflicting ones."""
        held = [] if self._revocations is None else [self._revocations]
        return held + list(self._conflicting)

    @property
    def revoked(self) -> frozenset[str]:
        """Every robot revoked by the held list or a conflicting one."""
        return self._revoked

    def is_revoked(self, device: str) -> bool:
        return device in self._revoked

    def devices(self) -> list[DeviceId]:
        """Every device whose certificate is held."""
        return sorted(self._certs)

    def certificate_of(self, device: str) -> Certificate:
        """The stored certificate of ``device``; `CertificateError` if none was added."""
        cert = self._certs.get(DeviceId(device))
        if cert is None:
            raise CertificateError(f"no certificate known for device {device}")
        return cert

    def knows(self, device: str) -> bool:
        """Whether a certificate of ``device`` was added (revoked or not)."""
        return DeviceId(device) in self._certs

    def scopes_of(self, device: str) -> frozenset[Scope]:
        """The scopes ``device`` was granted, revoked or not: what a revocation must rotate."""
        cert = self._certs.get(DeviceId(device))
        if cert is None:
            return frozenset()
        made = self._scopes.get(cert.device_id)
        if made is None or made[0] is not cert:  # asked for on every envelope: made once
            made = self._scopes[cert.device_id] = (cert, frozenset(Scope(s) for s in cert.scopes))
        return made[1]

    def add(self, cert: Certificate, now: int) -> Certificate:
        """Verify ``cert`` and keep it unless a later-issued one of that device is held.

        Add the owner's certificate first, then admins, then members: an issuer must be known
        before what it issued can verify.  Returns the certificate now held for the device.
        """
        self.verify(cert, now)
        held = self._certs.get(cert.device_id)
        if held is not None and held.role == "owner" and held != cert:
            # the household's root: no certificate another device issued replaces it
            raise CertificateError(f"device {cert.device_id} is the owner; its root is held")
        if held is not None and cert.issued_at <= held.issued_at:
            try:
                return self.verify(held, now)
            except CertificateError:  # expired, or its issuer revoked: the good one counts
                pass
        self._certs[cert.device_id] = cert
        return cert

    def restore(self, cert: Certificate) -> None:
        """Keep ``cert``, read back from this device's own credentials, though it is not good
        now (expired, or its issuer's is).  Every use verifies it at its own ``now``; refusing
        it here made a robot holding one expired certificate unable to open its credentials
        at all, and a clock glitched ahead for a while would have dropped every certificate
        for good at the next save (found in review).  Its signature and household are
        checked, as `add` checks them."""
        cert.check_signature()
        if cert.household_id != self.household_id:
            raise CertificateError(f"certificate of {cert.device_id}: other household")
        held = self._certs.get(cert.device_id)
        if held is not None and held.is_self_signed:
            return  # the household's root: nothing replaces it (`add`)
        if held is None or cert.issued_at > held.issued_at:
            self._certs[cert.device_id] = cert

    def restore_revocations(self, revocations: Revocations) -> None:
        """Keep the revocation list read back from this device's own credentials, though its
        signer's certificate is not good now (`restore`): revoked stays revoked."""
        revocations.check_signature()
        if revocations.household_id != self.household_id:
            raise CertificateError("revocation list: other household")
        if self._revocations is None or revocations.serial > self._revocations.serial:
            self._revocations = revocations
            self._revoked = self._revoked | frozenset(revocations.revoked)

    def verify(self, cert: Certificate, now: int) -> Certificate:
        """Return ``cert`` if it is good at ``now``, else raise `CertificateError` (SPEC §3)."""
        return self._verify(cert, now, depth=0)

    def author_key(self, device: str, scope: str, now: int) -> VerifyKey:
        """The key that must have signed an envelope of ``scope`` by ``device`` (SPEC §4)."""
        cert = self.verify(self.certificate_of(device), now)
        if scope not in cert.scopes:
            raise CertificateError(f"device {device} is not granted scope {scope!r}")
        return cert.verify_key

    def authority(self, issuer_pk: bytes, now: int) -> Certificate:
        """The good owner/admin certificate of ``issuer_pk``: who may sign certificates,
        revocations and key grants."""
        return self._authority(issuer_pk, now, depth=0)

    def accept_revocations(self, revocations: Revocations, now: int) -> bool:
        """Take ``revocations`` in; return whether anything changed here (SPEC §3).

        Only the owner signs lists, so they form one chain: a list with a greater serial that
        revokes every robot the held one does replaces it.  One the held list contains (an
        older serial, or gossip redelivering it) is ignored, before its signer is judged.  A
        list an admin signed is ignored, with a warning: admins do not revoke.  Anything else
        the owner signed apart from the held list (restored from an older backup, it reused
        a serial or left a robot out) is kept as *conflicting* (`conflicting`): its robots are
        revoked here at once, and the owner, hearing of it, signs the union at a new serial.
        Raising (a 401) closed every session between robots holding different lists, and the
        owner, ignoring a list of a serial it had used, never learnt what it revoked (found
        in review)."""
        revocations.check_signature()
        if revocations.household_id != self.household_id:
            raise CertificateError("revocation list: other household")
        held = self._revocations
        listed = frozenset(revocations.revoked)
        if held is not None and (
            revocations == held or (revocations.serial < held.serial and listed <= self._revoked)
        ):
            # judged before its signer: a list this device holds too, whose signer's
            # certificate has expired since, closed every session it came on (401), and no
            # robot could join (found in review).  Another list of the held serial, even one
            # revoking the same robots, was signed apart (its nonce differs): conflicting
            return False
        if revocations in self._conflicting:
            return False
        signer = self.authority(revocations.issuer_pk, now)
        if not signer.is_self_signed:
            # one signer, so one chain of lists: two lists made apart (an admin's and the
            # owner's, in a partition) had one serial, each side ignored the other's, and each
            # granted its new keys to the robot the other had revoked.  Ignored rather than
            # refused: a list an admin signed before this rule, held by some robots, would
            # close every session between them and the others
            log.warning(
                "ignored revocation list %d signed by admin %s: only the household owner "
                "revokes", revocations.serial, signer.device_id,
            )  # fmt: skip
            return False
        top = max([held.serial if held else 0, *(c.serial for c in self._conflicting)])
        if revocations.serial > top + MAX_SERIAL_STEP:
            # one list after another: a serial leaping to the largest there is (a list signed
            # with 2**64-1) would leave no serial for any later revocation
            raise CertificateError(
                f"revocation list {revocations.serial} leaps more than {MAX_SERIAL_STEP} "
                f"past the list held"
            )
        if signer.device_id in listed:  # the signer is the owner (above)
            raise CertificateError(
                f"revocation list {revocations.serial} revokes the household owner"
            )
        if held is None or (revocations.serial > held.serial and listed >= set(held.revoked)):
            self._revocations = revocations
            self._conflicting = tuple(
                c for c in self._conflicting if not frozenset(c.revoked) <= listed
            )
        elif len(self._conflicting) >= MAX_CONFLICTING:
            log.warning(
                "ignored revocation list %d: %d conflicting lists held already, waiting for "
                "the owner to merge them", revocations.serial, MAX_CONFLICTING,
            )  # fmt: skip
            return False
        else:
            log.warning(
                "revocation list %d (revoking %s) conflicts with the list held, %d (revoking "
                "%s): the owner signed them apart (restored from an older backup?); both "
                "count here until the owner merges them", revocations.serial,
                ", ".join(sorted(listed)), held.serial, ", ".join(held.revoked),
            )  # fmt: skip
            self._conflicting += (revocations,)
        self._revoked |= listed
        return True

    def _verify(self, cert: Certificate, now: int, *, depth: int) -> Certificate:
        who = f"certificate of {cert.device_id}"
        if self._certs.get(cert.device_id) is not cert:  # a held one verified when added
            cert.check_signature()
        if cert.household_id != self.household_id:
            raise CertificateError(f"{who}: other household ({cert.household_id})")
        self._check_issuer(cert, now, depth)
        if cert.device_id in self._revoked:
            raise CertificateError(f"{who}: revoked")
        if now < cert.issued_at:
            raise CertificateError(f"{who}: not yet valid (from {cert.issued_at}, now {now})")
        if now >= cert.expires_at:
            raise CertificateError(f"{who}: expired at {cert.expires_at} (now {now})")
        return cert

    def _check_issuer(self, cert: Certificate, now: int, depth: int) -> None:
        if cert.is_self_signed:
            # SPEC §3: the one self-signed certificate is the owner's, bound by the nonce (§2).
            if cert.role != "owner" or household_id(cert.device_pk, self._nonce) != (
                self.household_id
            ):
                raise CertificateError(
                    f"certificate of {cert.device_id}: issued by a device that may not issue "
                    "(self-signed, but not the household owner)"
                )
            return
        if cert.role == "owner":
            raise CertificateError(
                f"certificate of {cert.device_id}: issued by a device that may not issue "
                "(role owner is only valid self-signed)"
            )
        try:
            issuer = self._authority(cert.issuer_pk, now, depth=depth + 1)
        except CertificateError as exc:  # of its kind (`_authority`)
            raise type(exc)(f"certificate of {cert.device_id}: {exc}") from None
        # an issuer passes on no more than it holds (SPEC §3): an admin given some scopes
        # certified robots reading others (health among them), and the owner granted them
        # those keys; and only the owner makes admins, or one admin, once taken, signs
        # itself as many as it likes (found in review)
        beyond = sorted(set(cert.scopes) - set(issuer.scopes))
        if beyond:
            raise OverreachError(
                f"certificate of {cert.device_id}: issued by a device that may not issue "
                f"({issuer.device_id}: scopes {', '.join(beyond)} beyond its own)"
            )
        if cert.role == "admin" and issuer.role != "owner":
            raise OverreachError(
                f"certificate of {cert.device_id}: issued by a device that may not issue "
                f"({issuer.device_id}: an admin, which certifies members only)"
            )

    def _authority(self, issuer_pk: bytes, now: int, *, depth: int) -> Certificate:
        issuer = device_id_of(issuer_pk)
        held = self._certs.get(issuer)
        refuse = f"issued by a device that may not issue ({issuer}"
        if held is None or held.device_pk != issuer_pk:
            raise CertificateError(f"{refuse}: no certificate known)")
        if held.role not in ISSUING_ROLES:
            raise CertificateError(f"{refuse}: role {held.role})")
        if depth > MAX_CHAIN:
            raise CertificateError(f"{refuse}: chain longer than {MAX_CHAIN})")
        try:
            return self._verify(held, now, depth=depth)
        except CertificateError as exc:  # of its kind: what an overreaching issuer certified
            # never verifies either (found in review: it was restored as if merely expired)
            raise type(exc)(f"{refuse}: {exc})") from None
