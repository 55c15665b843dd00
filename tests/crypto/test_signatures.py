"""The memory of good signatures never lets a bad one through."""

from __future__ import annotations

from nacl.signing import SigningKey

from hearthsync.crypto import signatures


def test_a_good_signature_is_remembered_and_a_changed_message_still_fails() -> None:
    key = SigningKey(b"\x01" * 32)
    public = bytes(key.verify_key)
    signed = key.sign(b"forget alice")
    assert signatures.verifies(public, signed.message, signed.signature)
    assert signatures.remembered(public, b"forget alice", signed.signature)
    # the same signature over other bytes, or under another key, is not good
    assert not signatures.verifies(public, b"forget alicf", signed.signature)
    other = bytes(SigningKey(b"\x02" * 32).verify_key)
    assert not signatures.verifies(other, signed.message, signed.signature)
    assert not signatures.verifies(public, signed.message, signed.signature[:-1] + b"\x00")
    assert not signatures.verifies(b"\x00" * 31, signed.message, signed.signature)  # not a key


def test_the_memory_is_bounded_and_forgets_the_oldest() -> None:
    key = SigningKey(b"\x03" * 32)
    public = bytes(key.verify_key)
    first = key.sign(b"message 0")
    assert signatures.verifies(public, first.message, first.signature)
    for n in range(1, signatures.MEMORY + 1):
        signed = key.sign(f"message {n}".encode())
        assert signatures.verifies(public, signed.message, signed.signature)
    assert len(signatures._good) == signatures.MEMORY
    assert not signatures.remembered(public, first.message, first.signature)
    assert signatures.verifies(public, first.message, first.signature)  # checked afresh
