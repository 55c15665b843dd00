"""Forget-tombstones: a device's signed statement that a user is to be forgotten (SPEC §8).

Forgetting is irreversible and reaches every robot of the household, so the statement that
triggers it is signed by the device that made it, and every robot checks the signature (and
that the device is one the household certified) before it deletes anything.  The device's
certificate travels inside, so that a robot which never met that device can still check it
against the household's owner and admins.  The tombstone names the user by id only: it must
not itself keep what it asks everyone to forget.

    tombstone := [1, user:str, at:str (hybrid logical timestamp), device_pk:bin32,
                  certificate:bin (empty for a robot of no household), signature:bin64]
    signature := Ed25519-sign(device_sk, b"hearth-forget-v1" •
                              msgpack([1, user, at, device_pk, certificate]))

In the household document a tombstone is stored as the hex of ``msgpack(tombstone)`` under the
user's id, in the ``forgotten`` map.  Sans-I/O: no clock, no randomness, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import nacl.exceptions
from nacl.signing import VerifyKey

from hearthsync.crypto.identity import DeviceIdentity, device_id_of
from hearthsync.crypto.wire import NAME_RE, check_bytes, check_text, pack, unpack_array
from hearthsync.errors import CryptoError, SignatureError, ValidationError
from hearthsync.ids import DeviceId

TOMBSTONE_TAG = b"hearth-forget-v1"
MAX_TOMBSTONE_BYTES = 2048
MAX_CERTIFICATE_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Tombstone:
    """``user`` is to be forgotten, as ``device_pk``'s device said at ``at``."""

    user: str
    at: str
    device_pk: bytes
    certificate: bytes  #: the device's certificate as on the wire, or b"" (no household)
    signature: bytes

    def __post_init__(self) -> None:
        check_text(self.user, field="user", pattern=NAME_RE)
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
    def issue(cls, identity: DeviceIdentity, user: str, at: str, certificate: bytes = b"") -> Self:
        """Sign that ``user`` is to be forgotten; ``at`` is the issuer's hybrid timestamp and
        ``certificate`` its household certificate (as on the wire), if it has one."""
        pk = bytes(identity.verify_key)
        signed = _signed_part(user, at, pk, certificate)
        return cls(user, at, pk, certificate, bytes(identity.signing_key.sign(signed).signature))

    def check_signature(self) -> None:
        """Raise `SignatureError` unless ``device_pk`` signed this tombstone."""
        try:
            VerifyKey(self.device_pk).verify(
                _signed_part(self.user, self.at, self.device_pk, self.certificate), self.signature
            )
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            raise SignatureError(
                f"the tombstone of {self.user!r} is not signed by its device"
            ) from None

    def to_wire(self) -> bytes:
        return pack([1, self.user, self.at, self.device_pk, self.certificate, self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        """Decode and check structure (not the signature); `CryptoError` naming the fault."""
        value = unpack_array(
            data, what="tombstone", length=6, max_bytes=MAX_TOMBSTONE_BYTES, error=CryptoError
        )
        try:
            found = cls(*value[1:])
        except (ValidationError, TypeError) as exc:
            raise CryptoError(f"tombstone: {exc}") from None
        if found.to_wire() != bytes(data):
            raise CryptoError("tombstone: not canonically encoded (SPEC §1)")
        return found

    def to_text(self) -> str:
        """What the household document stores: the hex of `to_wire`."""
        return self.to_wire().hex()

    @classmethod
    def from_text(cls, text: str) -> Self:
        try:
            data = bytes.fromhex(text)
        except (ValueError, TypeError):
            raise CryptoError("tombstone: not hex") from None
        return cls.from_wire(data)


def _signed_part(user: str, at: str, device_pk: bytes, certificate: bytes) -> bytes:
    return TOMBSTONE_TAG + pack([1, user, at, device_pk, certificate])
