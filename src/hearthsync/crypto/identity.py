"""A device's Ed25519 identity (DESIGN: vocabulary, *device*).

The device id is the base32 of a BLAKE2b hash of the public key: 16 characters, shown to people
in groups of four (``MFZW-K3DP-...``).  The secret key lives in ``device.key`` beside the store,
created with mode 0600 and never printed: `DeviceIdentity`'s ``repr`` omits it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from hearthsync.errors import CryptoError, StoreError
from hearthsync.ids import DeviceId

KEY_FILE = "device.key"
_SEED_BYTES = 32


@functools.lru_cache(maxsize=4096)  # public keys only: ids are asked for on every frame
def device_id_of(public_key: bytes) -> DeviceId:
    digest = hashlib.blake2b(public_key, digest_size=10).digest()
    return DeviceId(base64.b32encode(digest).decode("ascii"))


def x25519_public_key(ed25519_public_key: bytes | VerifyKey) -> PublicKey:
    """The X25519 key that key grants are sealed to (SPEC §4: libsodium's conversion).

    One Ed25519 key per device is enough: its certificate already vouches for it, so a sealed
    grant reaches exactly the certified device without a second key to distribute and revoke.
    """
    return _x25519_public_key(bytes(ed25519_public_key))


@functools.lru_cache(maxsize=1024)  # public keys only: a grant is sealed per peer and scope
def _x25519_public_key(ed25519_public_key: bytes) -> PublicKey:
    try:
        return VerifyKey(ed25519_public_key).to_curve25519_public_key()
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise CryptoError("not a valid Ed25519 public key") from None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    signing_key: SigningKey = field(repr=False)
    #: the X25519 secret derived from the signing key, once (a scalar multiplication each time)
    _x25519: PrivateKey | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def device_id(self) -> DeviceId:
        return device_id_of(bytes(self.verify_key))

    def x25519_private_key(self) -> PrivateKey:
        """The X25519 secret matching `x25519_public_key` of this device's public key."""
        if self._x25519 is None:
            object.__setattr__(self, "_x25519", self.signing_key.to_curve25519_private_key())
        assert self._x25519 is not None
        return self._x25519

    @classmethod
    def load_or_create(cls, folder: Path, seed: bytes | None = None) -> DeviceIdentity:
        """Read ``folder/device.key``, or create it (mode 0600) from ``seed`` or the OS."""
        path = folder / KEY_FILE
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != _SEED_BYTES:
                raise StoreError(f"{path} is not a device key ({len(raw)} bytes)")
            if path.stat().st_mode & 0o077:
                raise StoreError(f"{path} is readable by others; run: chmod 600 {path}")
            return cls(SigningKey(raw))
        key = SigningKey(seed) if seed is not None else SigningKey.generate()
        # Written beside, then linked into place: a crash mid-write never leaves a partial key
        # under the real name, and link() fails if another process created one meanwhile.
        partial = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(key))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            return cls.load_or_create(folder)
        finally:
            partial.unlink(missing_ok=True)
        fsync_dir(folder)
        return cls(key)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a link in ``folder`` durable: the folder's entry is synced too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
