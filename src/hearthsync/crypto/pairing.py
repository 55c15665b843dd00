"""Enrolling a new robot with a one-time invite code (SPEC §7), sans I/O.

An admin device makes an invite: 16 random bytes ``S`` and the address it can be reached at,
printed as a code (and a QR code) such as ``HS1-MFZWK3DPMFZWK3DPMFZWK3DPME-192.168.1.20:7420``.
The new robot, given the code, connects to that address and proves it knows ``S``:

```
join_request   := [1, device_pk:bin32, device_name:str, mac:bin32]
mac            := BLAKE2b-32(device_pk • device_name; key=S, person=b"hearth-join-v1")
join_response  := [1, sealed:bin, mac:bin32]
sealed         := crypto_box_seal(enrolment, x25519(device_pk))
mac            := BLAKE2b-32(sealed; key=S, person=b"hearth-joined-v1")
enrolment      := [1, household:[id, name, owner_pk, nonce, secret], certificate:bin,
                   trusted:[bin], revocations:bin, grants:[bin]]
```

Why this is enough: ``S`` never crosses the network, so someone who only watches it learns
nothing they can use (the response is sealed to the new robot's key, and a recorded request
replayed later gets at most the same sealed answer again); the MACs bind both messages to ``S``,
so neither side can be impersonated by someone without the code; the inviter closes the invite
when it is used and deletes it when it expires, so a code enrols one device key.

A used invite is kept, with the key it enrolled (`SpentInvite`), until it expires: a robot whose
answer was lost on the way (the link dropped, the inviter restarted) asks again with the same
code and key and gets the same enrolment again, while any other key is refused as before.
"""

from __future__ import annotations

import base64
import hmac
import re
from dataclasses import dataclass
from typing import Self

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import seal_to, unseal
from hearthsync.crypto.wire import check_bytes, check_text, pack, unpack_array
from hearthsync.errors import CryptoError, ValidationError

SECRET_BYTES = 16
PREFIX = "HS1"
MAX_ENROLMENT_BYTES = 256 * 1024
NO_OPEN_INVITE = "no open invite matches: the code is wrong, spent or expired"
_REQUEST_PERSON = b"hearth-join-v1"
_RESPONSE_PERSON = b"hearth-joined-v1"
_CODE = re.compile(
    r"HS1-(?P<secret>[A-Z2-7]{26})-(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})"
)


class PairingError(CryptoError):
    """An invite code, join request or join response is wrong, expired or spent."""


def _mac(secret: bytes, data: bytes, person: bytes) -> bytes:
    digest: bytes = blake2b(data, key=secret, person=person.ljust(16, b"\x00"), digest_size=32,
                            encoder=RawEncoder)  # fmt: skip
    return digest


@dataclass(frozen=True, slots=True)
class Invite:
    """What the code says: the one-time secret and where the inviter listens."""

    secret: bytes
    host: str
    port: int

    def __repr__(self) -> str:  # the secret is the whole point of the code: never print it
        return f"Invite(host={self.host!r}, port={self.port})"

    @property
    def code(self) -> str:
        secret = base64.b32encode(self.secret).decode().rstrip("=")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{PREFIX}-{secret}-{host}:{self.port}"

    @classmethod
    def parse(cls, code: str) -> Self:
        match = _CODE.fullmatch(code.strip())
        if not match:
            raise ValidationError(
                "an invite code looks like HS1-<26 letters and digits>-<host>:<port>",
                field="code",
            )
        port = int(match["port"])
        if not 0 < port < 65536:
            raise ValidationError(f"port {port} in the invite code is out of range", field="code")
        secret = base64.b32decode(match["secret"] + "======")
        return cls(secret, match["host"].strip("[]"), port)


@dataclass(frozen=True, slots=True)
class PendingInvite:
    """An invite the inviter has made and not yet seen used."""

    secret: bytes
    scopes: tuple[str, ...]
    role: str
    expires_at: int

    def __repr__(self) -> str:
        return (
            f"PendingInvite(scopes={self.scopes}, role={self.role!r}, expires_at={self.expires_at})"
        )

    def to_list(self) -> list[object]:
        return [self.secret, list(self.scopes), self.role, self.expires_at]

    @classmethod
    def from_list(cls, value: list[object]) -> Self:
        secret, scopes, role, expires_at = value
        if not (isinstance(secret, bytes) and isinstance(scopes, list) and isinstance(role, str)):
            raise PairingError("a stored invite is malformed")
        if not isinstance(expires_at, int):
            raise PairingError("a stored invite is malformed")
        return cls(secret, tuple(str(s) for s in scopes), role, expires_at)


@dataclass(frozen=True, slots=True)
class SpentInvite:
    """An invite that enrolled ``device_pk``, kept until it expires so that device, and no
    other, can ask again (its answer lost on the way) and get the same enrolment again."""

    invite: PendingInvite
    device_pk: bytes

    def __repr__(self) -> str:
        return f"SpentInvite({self.invite!r}, device_pk={self.device_pk.hex()[:16]}...)"

    @property
    def expires_at(self) -> int:
        return self.invite.expires_at

    def to_list(self) -> list[object]:
        return [*self.invite.to_list(), self.device_pk]

    @classmethod
    def from_list(cls, value: list[object]) -> Self:
        if len(value) != 5 or not isinstance(value[4], bytes) or len(value[4]) != 32:
            raise PairingError("a stored invite is malformed")
        return cls(PendingInvite.from_list(value[:4]), value[4])


def join_request(secret: bytes, identity: DeviceIdentity, device_name: str) -> bytes:
    device_pk = bytes(identity.verify_key)
    mac = _mac(secret, device_pk + device_name.encode(), _REQUEST_PERSON)
    return pack([1, device_pk, device_name, mac])


def check_join_request(
    data: bytes, pending: list[PendingInvite], now: int
) -> tuple[PendingInvite, bytes, str]:
    """The invite ``data`` proves knowledge of, and the joining device's key and name."""
    fields = unpack_array(data, what="join request", length=4, max_bytes=1024, error=PairingError)
    try:  # a stranger's bytes: its error, not the ValidationError of a caller's mistake
        device_pk = check_bytes(fields[1], field="device_pk", size=32)
        name = check_text(fields[2], field="device_name")
        mac = check_bytes(fields[3], field="mac", size=32)
    except ValidationError as exc:
        raise PairingError(f"join request: {exc}") from None
    for invite in pending:
        expected = _mac(invite.secret, device_pk + name.encode(), _REQUEST_PERSON)
        if hmac.compare_digest(expected, mac):
            if invite.expires_at <= now:
                raise PairingError("the invite code has expired: make a new one")
            return invite, device_pk, name
    raise PairingError(NO_OPEN_INVITE)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What a new robot receives: the household, its certificate, whom to trust, its keys."""

    household: Household
    certificate: bytes
    trusted: tuple[bytes, ...]
    revocations: bytes
    grants: tuple[bytes, ...]

    def to_wire(self) -> bytes:
        h = self.household
        household = [h.id, h.name, h.owner_pk, h.nonce, h.secret]
        return pack([1, household, self.certificate, list(self.trusted), self.revocations,
                     list(self.grants)])  # fmt: skip

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        fields = unpack_array(
            data, what="enrolment", length=6, max_bytes=MAX_ENROLMENT_BYTES, error=PairingError,
            max_array=4096,
        )  # fmt: skip
        try:
            household = Household(*fields[1])
            return cls(household, _bytes(fields[2]), tuple(_bytes(c) for c in fields[3]),
                       _bytes(fields[4]), tuple(_bytes(g) for g in fields[5]))  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise PairingError(f"enrolment is malformed: {type(exc).__name__}") from None


def _bytes(value: object) -> bytes:
    """A ``bin`` field, as it came: ``bytes(n)`` of a number was n zero bytes (a number past
    an index raised OverflowError out of ``hearth join``; found in review)."""
    if not isinstance(value, bytes):
        raise TypeError("not bytes")
    return value


def join_response(
    secret: bytes, enrolment: Enrolment, device_pk: bytes, ephemeral_seed: bytes
) -> bytes:
    sealed = seal_to(device_pk, enrolment.to_wire(), ephemeral_seed)
    return pack([1, sealed, _mac(secret, sealed, _RESPONSE_PERSON)])


def open_join_response(data: bytes, secret: bytes, identity: DeviceIdentity) -> Enrolment:
    fields = unpack_array(
        data, what="join response", length=3, max_bytes=MAX_ENROLMENT_BYTES + 256,
        error=PairingError,
    )  # fmt: skip
    sealed = fields[1]
    if not isinstance(sealed, bytes):
        raise PairingError("join response: sealed must be bytes")
    mac = fields[2]
    if not isinstance(mac, bytes) or len(mac) != 32:
        raise PairingError("join response: mac must be 32 bytes")
    if not hmac.compare_digest(_mac(secret, sealed, _RESPONSE_PERSON), mac):
        raise PairingError("the join response is not from the device that made the invite")
    return Enrolment.from_wire(unseal(identity, sealed))
