"""Envelopes: one delta or snapshot of one document, encrypted and signed (SPEC §4).

The header travels in clear so the relay can route it (document, lineage, scope, epoch,
author, and a counter that is informational only: SPEC §4) without any key; it is the AEAD's
associated data, so it cannot be changed without the decryption failing.  The author signs
header, nonce and ciphertext, so the relay (which holds no document key) can still refuse
forgeries and a reader knows which certified device wrote the update.

A receiver checks in the order SPEC §4 fixes: sizes and structure (`Envelope.from_wire`), the
author's certificate (`TrustStore.author_key`, the caller's step), the signature, then decrypts
(`open_envelope`).  Verifying before decrypting means a forged envelope costs one signature check
and never reaches the AEAD; a bad envelope raises and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self

import nacl.bindings
import nacl.exceptions
from nacl.signing import VerifyKey

from hearthsync.compression import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODECS,
    MAX_UPDATE_BYTES,
    compress,
    decompress,
)
from hearthsync.crypto.identity import DeviceIdentity, device_id_of
from hearthsync.crypto.signatures import verifies
from hearthsync.crypto.wire import (
    B32_ID_RE,
    ID_RE,
    NAME_RE,
    check_bytes,
    check_canonical,
    check_text,
    check_uint,
    check_version,
    pack,
    unpack_array,
)
from hearthsync.errors import CryptoError, SignatureError, UnknownKeyError, ValidationError

KIND_DELTA = 0
KIND_SNAPSHOT = 1
NONCE_BYTES = 24
KEY_BYTES = 32
TAG_BYTES = 16
MAX_CIPHERTEXT = 2 * 1024 * 1024  # SPEC §1
#: ciphertext plus the largest header, nonce, signature and msgpack framing
MAX_ENVELOPE_BYTES = MAX_CIPHERTEXT + 1024
ENV_TAG = b"hearth-env-v1"
HEADER_VERSION = 2


@dataclass(frozen=True, slots=True)
class Header:
    """``[2, doc_id, lineage, scope, epoch, author, counter, kind, codec]`` (SPEC §4).

    ``doc_id`` and ``lineage`` are SPEC §1 ``id``s, like the frames that name the same document.
    ``codec`` says how the plaintext is encoded (`hearthsync.compression`).
    """

    doc_id: str
    lineage: str
    scope: str
    epoch: int
    author: str
    counter: int
    kind: int = KIND_DELTA
    codec: int = CODEC_NONE

    def __post_init__(self) -> None:
        check_text(self.doc_id, field="doc_id", pattern=ID_RE)
        check_text(self.lineage, field="lineage", pattern=ID_RE)
        check_text(self.scope, field="scope", pattern=NAME_RE)
        check_uint(self.epoch, field="epoch")
        check_text(self.author, field="author", pattern=B32_ID_RE)
        check_uint(self.counter, field="counter")
        if self.kind not in (KIND_DELTA, KIND_SNAPSHOT) or type(self.kind) is not int:
            raise ValidationError("kind must be 0 (delta) or 1 (snapshot)", field="kind")
        if self.codec not in CODECS or type(self.codec) is not int:
            raise ValidationError("codec must be 0 (none) or 1 (zstd)", field="codec")

    def to_list(self) -> list[object]:
        fields = [self.doc_id, self.lineage, self.scope, self.epoch, self.author, self.counter]
        return [HEADER_VERSION, *fields, self.kind, self.codec]

    @property
    def ad(self) -> bytes:
        """``ad := msgpack(header)``: the associated data of the AEAD (SPEC §4)."""
        return pack(self.to_list())


@dataclass(frozen=True, slots=True)
class Envelope:
    """``[header, nonce, ciphertext, signature]`` (SPEC §4).  Build with `seal`."""

    header: Header
    nonce: bytes
    ciphertext: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise ValidationError("header must be a Header", field="header")
        check_bytes(self.nonce, field="nonce", size=NONCE_BYTES)
        if not isinstance(self.ciphertext, bytes):
            raise ValidationError("ciphertext must be bytes", field="ciphertext")
        if not TAG_BYTES <= len(self.ciphertext) <= MAX_CIPHERTEXT:
            raise ValidationError(
                f"ciphertext must be {TAG_BYTES} to {MAX_CIPHERTEXT} bytes", field="ciphertext"
            )
        check_bytes(self.signature, field="signature", size=64)

    def signed_part(self) -> bytes:
        """``b"hearth-env-v1" • ad • nonce • ciphertext``: what the author signs (SPEC §4)."""
        return ENV_TAG + self.header.ad + self.nonce + self.ciphertext

    def to_wire(self) -> bytes:
        return pack([self.header.to_list(), self.nonce, self.ciphertext, self.signature])

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        """Decode and validate an envelope: sizes and structure only, no key needed.

        Raises `CryptoError` naming the fault.  The encoding must be canonical, so the header
        bytes on the wire are exactly the ``ad`` the author signed and encrypted under.
        """
        what = "envelope"
        value = unpack_array(
            data,
            what=what,
            length=4,
            max_bytes=MAX_ENVELOPE_BYTES,
            error=CryptoError,
            versioned=False,
        )
        header = _header_from(value[0])
        try:
            envelope = cls(header, *value[1:])
        except ValidationError as exc:
            raise CryptoError(f"{what}: {exc}") from None
        check_canonical(data, envelope.to_wire(), what=what, error=CryptoError)
        return envelope


def _header_from(value: Any) -> Header:
    if not isinstance(value, list) or len(value) != 9:
        raise CryptoError("envelope: header must be an array of 9 fields")
    check_version(value, what="envelope header", error=CryptoError, version=HEADER_VERSION)
    try:
        return Header(*value[1:])
    except ValidationError as exc:
        raise CryptoError(f"envelope header: {exc}") from None


def seal(
    identity: DeviceIdentity,
    header: Header,
    update: bytes,
    key: bytes,
    nonce: bytes,
    *,
    compress_update: bool = False,
) -> Envelope:
    """Encrypt ``update`` under the document key ``key`` and sign it as ``identity``.

    ``nonce`` (24 bytes) comes from the caller's random source: XChaCha20's nonce is long enough
    that random nonces never collide in practice, and passing it in keeps this function pure.
    With ``compress_update`` the update is compressed first where that helps and the header's
    scope allows it (its ``codec`` then says so); otherwise ``header.codec`` must be none.
    """
    if not isinstance(update, bytes) or len(update) > MAX_UPDATE_BYTES:
        raise ValidationError(f"update must be bytes of at most {MAX_UPDATE_BYTES}")
    if header.codec != CODEC_NONE:
        raise ValidationError("seal chooses the codec: pass compress_update", field="codec")
    if compress_update:
        codec, update = compress(update, scope=header.scope)
        header = replace(header, codec=codec)
    return seal_payload(identity, header, update, key, nonce)


def seal_payload(
    identity: DeviceIdentity, header: Header, payload: bytes, key: bytes, nonce: bytes
) -> Envelope:
    """Encrypt ``payload``, already encoded as ``header.codec`` says, and sign the envelope.

    `seal` is what a sender calls; this step alone is what the golden vectors pin down, since a
    compressor's output may differ between versions while any payload must open the same way.
    """
    if header.author != identity.device_id:
        raise ValidationError("header.author must be the sealing device's id", field="author")
    check_bytes(key, field="key", size=KEY_BYTES)
    check_bytes(nonce, field="nonce", size=NONCE_BYTES)
    if not isinstance(payload, bytes) or len(payload) > MAX_CIPHERTEXT - TAG_BYTES:
        size = len(payload) if isinstance(payload, bytes) else "?"
        raise ValidationError(
            f"payload of {size} bytes is over {MAX_CIPHERTEXT - TAG_BYTES}", field="update"
        )
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        payload, header.ad, nonce, key
    )
    unsigned = ENV_TAG + header.ad + nonce + ciphertext
    signature = identity.signing_key.sign(unsigned).signature
    return Envelope(header, nonce, ciphertext, signature)


def verify_envelope(envelope: Envelope, author_verify_key: VerifyKey) -> None:
    """Raise `SignatureError` unless the header's author signed ``envelope`` with this key.

    Needs no document key: the relay calls this before storing an envelope.
    """
    if device_id_of(bytes(author_verify_key)) != envelope.header.author:
        raise SignatureError("envelope author is not the device of the verifying key")
    if not verifies(bytes(author_verify_key), envelope.signed_part(), envelope.signature):
        raise SignatureError("envelope signature does not verify")


def open_envelope(envelope: Envelope, key: bytes, author_verify_key: VerifyKey) -> bytes:
    """Verify the signature, then decrypt and decompress: the update, or `SignatureError` /
    `DecryptionError`.

    ``key`` is the document key (`Keyring.doc_key` for the header's scope and epoch); a
    missing key is the caller's `MissingKeyError`, raised before this is called.
    """
    return open_envelope_packed(envelope, [key], author_verify_key)[0]


def open_envelope_packed(
    envelope: Envelope, keys: Sequence[bytes], author_verify_key: VerifyKey
) -> tuple[bytes, bytes | None]:
    """`open_envelope` with whichever of ``keys`` (`Keyring.doc_keys`: a slot may hold
    several) it was sealed under, and the Zstandard frame the update came in (``None`` if it
    came uncompressed): the store keeps that frame as it is rather than compress the update
    again.  `UnknownKeyError` if none of them opens it.

    The signature is checked first, once: an envelope that verifies and opens with none of
    the keys was sealed by its author under a key this device does not hold (yet), since
    nobody else could have changed its ciphertext.
    """
    verify_envelope(envelope, author_verify_key)
    header = envelope.header
    for key in keys:
        check_bytes(key, field="key", size=KEY_BYTES)
        try:
            plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                envelope.ciphertext, header.ad, envelope.nonce, key
            )
        except (nacl.exceptions.CryptoError, ValueError):
            continue
        update = decompress(header.codec, plaintext)
        return update, (plaintext if header.codec == CODEC_ZSTD else None)
    raise UnknownKeyError(
        f"envelope {header.doc_id!r} #{header.counter} does not decrypt with the "
        f"{'key' if len(keys) == 1 else f'{len(keys)} keys'} held here of scope "
        f"{header.scope!r} epoch {header.epoch}"
    )
