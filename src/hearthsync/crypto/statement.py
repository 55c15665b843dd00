"""Signed statements in the household document (SPEC §8): forgetting a user, the task policy.

Some household decisions must reach every robot and must not be forgeable by whoever can edit
a CRDT document: that a user is to be forgotten (irreversible), and which tasks may read which
scopes (it decides where health data goes).  Such a decision travels as a *statement* signed
by the device that made it, and every robot checks the signature, and that the device is one
the household certified (for the policy: an owner or admin), before it acts on it.  The
device's certificate travels inside, so a robot that never met that device can still check it
against the household's owner and admins.

    statement := [1, kind:str, subject:str, body:str, at:str (hybrid logical timestamp),
                  device_pk:bin32, certificate:bin (empty: a robot of no household),
                  signature:bin64]
    signature := Ed25519-sign(device_sk, b"hearth-statement-v1" •
                              msgpack([1, kind, subject, body, at, device_pk, certificate]))

Kinds: ``forget`` (subject: the user; body empty: a tombstone names the user by id only, it
must not keep what it asks everyone to forget) and ``policy`` (subject ``tasks``; body: the
policy as JSON).  In the household document a statement is stored as the hex of its
encoding.  Sans-I/O: no clock, no randomness, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.identity import DeviceIdentity, device_id_of
from hearthsync.crypto.signatures import verifies
from hearthsync.crypto.wire import NAME_RE, check_bytes, check_text, pack, unpack_array
from hearthsync.errors import CertificateError, CryptoError, SignatureError, ValidationError
from hearthsync.ids import DeviceId

STATEMENT_TAG = b"hearth-statement-v1"
FORGET = "forget"
POLICY = "policy"
KINDS = (FORGET, POLICY)
MAX_BODY_BYTES = 65_536
MAX_CERTIFICATE_BYTES = 1024
MAX_STATEMENT_BYTES = MAX_BODY_BYTES + 2048


@dataclass(frozen=True, slots=True)
class Statement:
    """``device_pk``'s device says, at ``at``: ``kind`` of ``subject``, with ``body``."""

    kind: str
    subject: str
    body: str
    at: str
    device_pk: bytes
    certificate: bytes  #: the device's certificate as on the wire, or b"" (no household)
    signature: bytes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValidationError(f"unknown statement kind {self.kind!r:.40}", field="kind")
        check_text(self.subject, field="subject", pattern=NAME_RE)
        if not isinstance(self.body, str) or len(self.body.encode()) > MAX_BODY_BYTES:
            raise ValidationError(f"body must be at most {MAX_BODY_BYTES} bytes", field="body")
        check_text(self.at, field="at", max_bytes=120)
        check_bytes(self.device_pk, field="device_pk", size=32)
        if not isinstance(self.certificate, bytes) or len(self.certificate) > MAX_CERTIFICATE_BYTES:
            raise ValidationError(
                f"certificate must be at most {MAX_CERTIFICATE_BYTES} bytes", field="certificate"
            )
        check_bytes(self.signature, field="signature", size=64)

    @property
    def device(self) -> DeviceId:
        return device_id_of(self.device_pk)

    @classmethod
    def issue(
        cls,
        identity: DeviceIdentity,
        kind: str,
        subject: str,
        at: str,
        *,
        body: str = "",
        certificate: bytes = b"",
    ) -> Self:
        """Sign a statement; ``at`` is the issuer's hybrid timestamp and ``certificate`` its
        household certificate (as on the wire), if it has one."""
        pk = bytes(identity.verify_key)
        signed = _signed_part(kind, subject, body, at, pk, certificate)
        signature = bytes(identity.signing_key.sign(signed).signature)
        return cls(kind, subject, body, at, pk, certificate, signature)

    def check_signature(self) -> None:
        """Raise `SignatureError` unless ``device_pk`` signed this statement."""
        signed = _signed_part(
            self.kind, self.subject, self.body, self.at, self.device_pk, self.certificate
        )
        if not verifies(self.device_pk, signed, self.signature):
            raise SignatureError(
                f"the {self.kind} statement on {self.subject!r} is not signed by its device"
            )

    def to_wire(self) -> bytes:
        fields = [self.kind, self.subject, self.body, self.at, self.device_pk, self.certificate]
        return pack([1, *fields, self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        """Decode and check structure (not the signature); `CryptoError` naming the fault."""
        value = unpack_array(
            data, what="statement", length=8, max_bytes=MAX_STATEMENT_BYTES, error=CryptoError
        )
        try:
            found = cls(*value[1:])
        except (ValidationError, TypeError) as exc:
            raise CryptoError(f"statement: {exc}") from None
        if found.to_wire() != bytes(data):
            raise CryptoError("statement: not canonically encoded (SPEC §1)")
        return found

    def to_text(self) -> str:
        """What the household document stores: the hex of `to_wire`."""
        return self.to_wire().hex()

    @classmethod
    def from_text(cls, text: str) -> Self:
        try:
            data = bytes.fromhex(text)
        except (ValueError, TypeError):
            raise CryptoError("statement: not hex") from None
        return cls.from_wire(data)


def _signed_part(
    kind: str, subject: str, body: str, at: str, device_pk: bytes, certificate: bytes
) -> bytes:
    return STATEMENT_TAG + pack([1, kind, subject, body, at, device_pk, certificate])


def check_statement(
    statement: Statement,
    *,
    own_device: str,
    trust: TrustStore | None,
    now: int,
    roles: tuple[str, ...] = ("owner", "admin", "member"),
) -> None:
    """Raise `CryptoError` unless ``statement`` is signed by its device and that device
    holds a certificate of ``trust``'s household valid at ``now`` (the one inside the
    statement, else one ``trust`` holds) with one of ``roles``; a robot of no household
    (``trust`` None) accepts only its own statements."""
    statement.check_signature()
    if trust is None and statement.device == own_device:
        return
    if trust is None:
        raise CertificateError(f"device {statement.device} is not of this robot's household")
    if statement.certificate:
        certificate = Certificate.from_wire(statement.certificate)
        if certificate.device_id != statement.device:
            raise CertificateError("the statement carries another device's certificate")
    else:
        certificate = trust.certificate_of(statement.device)
    trust.verify(certificate, now)
    if certificate.role not in roles:
        raise CertificateError(
            f"device {statement.device} ({certificate.role}) may not make a {statement.kind} "
            "statement"
        )
