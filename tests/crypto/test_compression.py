"""Compressed envelopes (SPEC §4 ``codec``): round trips, bounded decompression, scope rules."""

from __future__ import annotations

import random

import pytest
import zstandard

from hearthsync.compression import (
    CODEC_NONE,
    CODEC_ZSTD,
    MIN_COMPRESS_BYTES,
    compress,
    decompress,
)
from hearthsync.crypto.envelope import Envelope, Header, open_envelope, seal, seal_payload
from hearthsync.crypto.keyring import Keyring
from hearthsync.errors import DecryptionError, ValidationError

from .conftest import Home

DOC, LINEAGE = "user/alice/prefs", "g-0011223344556677"
RECORDS = b"".join(b'{"value":%d,"set_at":"0001795786971217.%05d"}' % (i, i) for i in range(200))


def test_repetitive_updates_shrink_and_round_trip() -> None:
    codec, payload = compress(RECORDS)
    assert codec == CODEC_ZSTD
    assert len(payload) * 4 < len(RECORDS)
    assert decompress(codec, payload) == RECORDS


def test_small_incompressible_and_health_updates_stay_as_they_are() -> None:
    small = RECORDS[: MIN_COMPRESS_BYTES - 1]
    assert compress(small) == (CODEC_NONE, small)
    noise = random.Random(3).randbytes(4096)  # a frame of it would be larger: sent as is
    assert compress(noise) == (CODEC_NONE, noise)
    assert compress(RECORDS, scope="health") == (CODEC_NONE, RECORDS)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not a frame at all", "declared size"),
        (zstandard.ZstdCompressor(write_content_size=False).compress(RECORDS), "declared size"),
        (zstandard.ZstdCompressor().compress(RECORDS)[:-3], "exactly one frame"),
        (zstandard.ZstdCompressor().compress(RECORDS) + b"\x00", "exactly one frame"),
        (zstandard.ZstdCompressor().compress(RECORDS) * 2, "exactly one frame"),
    ],
)
def test_bad_frames_are_refused(payload: bytes, match: str) -> None:
    with pytest.raises(DecryptionError, match=match):
        decompress(CODEC_ZSTD, payload)


def test_a_frame_declaring_too_much_is_refused_before_it_is_decoded() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(1_000_000))  # a megabyte of zeros
    assert len(bomb) < 1_000
    with pytest.raises(DecryptionError, match="over 65536"):
        decompress(CODEC_ZSTD, bomb, limit=65_536)
    with pytest.raises(DecryptionError, match="unknown codec"):
        decompress(7, bomb)


def test_an_envelope_carrying_a_bad_frame_is_refused(home: Home, admin_keys: Keyring) -> None:
    """Signed and encrypted by a certified author, and still refused: the frame is checked."""
    header = Header(DOC, LINEAGE, "core", 0, home.kitchen.device_id, 1, codec=CODEC_ZSTD)
    key = bytes(32)
    envelope = seal_payload(home.kitchen, header, b"\x28\xb5\x2f\xfd garbage", key, bytes(24))
    with pytest.raises(DecryptionError, match="compressed update"):
        open_envelope(Envelope.from_wire(envelope.to_wire()), key, home.kitchen.verify_key)


def test_seal_picks_the_codec_and_the_header_binds_it(home: Home) -> None:
    header = Header(DOC, LINEAGE, "core", 0, home.kitchen.device_id, 1)
    key, nonce = bytes(range(32)), bytes(24)
    sealed = seal(home.kitchen, header, RECORDS, key, nonce, compress_update=True)
    assert sealed.header.codec == CODEC_ZSTD
    assert open_envelope(sealed, key, home.kitchen.verify_key) == RECORDS
    plain = seal(home.kitchen, header, RECORDS, key, nonce)
    assert plain.header.codec == CODEC_NONE
    assert RECORDS in plain.ciphertext or len(plain.ciphertext) == len(RECORDS) + 16
    with pytest.raises(ValidationError, match="codec"):
        seal(home.kitchen, sealed.header, RECORDS, key, nonce)
    with pytest.raises(ValidationError, match="codec"):
        Header(DOC, LINEAGE, "core", 0, home.kitchen.device_id, 1, codec=2)
