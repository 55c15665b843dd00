"""The memory of good signatures never lets a bad one through."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from nacl.signing import SignedMessage, SigningKey

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


class _Crowded(dict[tuple[bytes, bytes, bytes], None]):
    """A memory where every thread that looks for the oldest signature waits for a second
    one to look too (for at most ``timeout``): the switch of threads that has two threads
    forget the same signature, made certain."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.meeting = threading.Barrier(2, timeout=timeout)

    def __iter__(self) -> Iterator[tuple[bytes, bytes, bytes]]:
        keys = list(super().__iter__())
        with contextlib.suppress(threading.BrokenBarrierError):
            self.meeting.wait()
        return iter(keys)


def test_two_threads_forgetting_the_oldest_signature_at_once_both_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A robot answers a join on a worker thread (`enrolment.enrol`, its certificates
    checked) while its sessions check signatures on the event loop's: two threads that
    found the memory full forgot the same signature, and the second raised KeyError
    (found in review)."""
    memory = _Crowded(timeout=0.5)
    monkeypatch.setattr(signatures, "_good", memory)
    monkeypatch.setattr(signatures, "MEMORY", 1)
    key = SigningKey(b"\x04" * 32)
    public = bytes(key.verify_key)
    first, *others = (key.sign(f"message {n}".encode()) for n in range(3))
    assert signatures.verifies(public, first.message, first.signature)  # the memory is full
    failures: list[BaseException] = []

    def check(signed: SignedMessage) -> None:
        try:
            assert signatures.verifies(public, signed.message, signed.signature)
        except BaseException as exc:  # reported on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=check, args=(signed,)) for signed in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a signature check never returned"
    assert failures == []
    assert len(memory) == 1
