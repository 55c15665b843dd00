"""Compression of updates: before they are encrypted (SPEC §4, ``codec``) and in the store.

A burst of preference edits is mostly repetition (the same user, device, field names and clock
prefix in every record), so a Zstandard frame carries it in a tenth to a twentieth of its
bytes; that is what keeps a live burst under 40 bytes per edit on the wire, signatures and all.
Compression happens before encryption, because ciphertext does not compress.

Compressing before encrypting leaks a little through lengths (the CRIME family of attacks): an
attacker who can put chosen text into the *same* delta as a secret and watch the ciphertext's
size learns whether the guess matched.  Deltas here hold one document's changes of one commit
(or one catch-up), so the secret and the guess must share a document and a batch; the sender
leaves the scopes in `UNCOMPRESSED_SCOPES` (health by default) uncompressed all the same.  See
docs/explanation/sync.md.

The store keeps its update log and snapshots compressed the same way (a file on the robot's
own disk, where lengths tell nobody anything): a catch-up of 10,000 edits is committed as 50 KB
rather than 1.7 MB, which is most of what its fsync costs.

Decompression is bounded: the frame must declare its size, the size must be within
`MAX_UPDATE_BYTES`, and the frame must decode to exactly that many bytes.  A "zip bomb" costs
its sender a refused envelope, not this process's memory.
"""

from __future__ import annotations

import threading

import zstandard

from hearthsync.errors import DecryptionError

CODEC_NONE = 0
CODEC_ZSTD = 1
CODECS = (CODEC_NONE, CODEC_ZSTD)

#: the largest update an envelope may carry once decompressed (SPEC §1)
MAX_UPDATE_BYTES = 64 * 1024 * 1024
#: the largest row the store reads back of its own (a snapshot, a logged update): it wrote
#: them, and compaction writes a document's whole state, which may outgrow what an envelope
#: carries.  Read back under `MAX_UPDATE_BYTES`, the snapshot of a month of large events
#: (70 MB) made the month corrupt at the next open, every acknowledged event in it lost
#: (found in review); the bound only stops a damaged frame from asking for any size at all
MAX_STORED_BYTES = 2 * 1024 * 1024 * 1024
#: smaller updates go uncompressed: a Zstandard frame costs ~10 bytes and ~10 µs
MIN_COMPRESS_BYTES = 128
#: compressing these scopes would let lengths hint at their content (see the module docstring)
UNCOMPRESSED_SCOPES = frozenset({"health"})
#: level 1: within 10 % of level 3's size on CRDT updates, and the fastest (~1 GB/s here)
LEVEL = 1

_local = threading.local()  # Zstandard contexts are not thread-safe; one per thread


def _compressor() -> zstandard.ZstdCompressor:
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return found


def compress(data: bytes, *, scope: str = "") -> tuple[int, bytes]:
    """``(codec, payload)``: ``data`` compressed where that helps and is allowed, else as is."""
    if len(data) < MIN_COMPRESS_BYTES or scope in UNCOMPRESSED_SCOPES:
        return CODEC_NONE, data
    packed = _compressor().compress(data)
    if len(packed) >= len(data):
        return CODEC_NONE, data
    return CODEC_ZSTD, packed


def decompress(codec: int, payload: bytes, *, limit: int = MAX_UPDATE_BYTES) -> bytes:
    """The bytes ``payload`` holds under ``codec``; `DecryptionError` if it does not decode
    to a declared size of at most ``limit`` bytes."""
    if codec == CODEC_NONE:
        return payload
    if codec != CODEC_ZSTD:
        raise DecryptionError(f"unknown codec {codec}")
    try:
        size = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        size = -2
    if size < 0:  # -1: the frame does not declare its size
        raise DecryptionError("compressed update: not a Zstandard frame with a declared size")
    if size > limit:
        raise DecryptionError(f"compressed update declares {size} bytes, over {limit}")
    # a streaming decoder, so that bytes after the frame are seen (and refused); the declared
    # size bounds what it produces: Zstandard fails a frame whose content disagrees with it
    decoder = zstandard.ZstdDecompressor().decompressobj()
    try:
        data: bytes = decoder.decompress(payload)
    except zstandard.ZstdError as exc:
        raise DecryptionError(f"compressed update does not decode: {exc}") from None
    if len(data) != size or decoder.unused_data or not decoder.eof:
        raise DecryptionError(f"compressed update is not exactly one frame of {size} bytes")
    return data
