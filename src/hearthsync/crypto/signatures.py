"""Ed25519 verification that remembers what checked out.

The same signatures are checked again and again: every session opening checks the peer's
certificate chain, every look at the household's tombstones checks each one, every grant
offered again is checked again, and an envelope that reaches a robot by two links is checked
twice.  A verification costs about 60 µs; a signature over the same bytes by the same key
checks out the same way every time, so a good one is remembered and the next check is a
hash and a dictionary lookup.  What a signature does not tell (expiry, revocation, the
household, the scope) is checked by the caller every time, as before.

A signature is remembered by the public key, the signature and a 256-bit BLAKE2b digest of
the message (an envelope is up to 2 MiB: the memory holds digests, not messages).  To pass a
changed message off as checked, one would need a second preimage of BLAKE2b-256 under the
same key and signature.  The memory is per process: robots simulated in one process (the
chaos harness) share it, as they share the CPU; each real robot has its own.
"""

from __future__ import annotations

import hashlib
import threading

import nacl.exceptions
from nacl.signing import VerifyKey

#: how many good signatures are remembered (the oldest is forgotten first)
MEMORY = 4096

_good: dict[tuple[bytes, bytes, bytes], None] = {}
#: held while the memory changes: a robot answers a join on a worker thread
#: (`enrolment.enrol`) while its sessions check signatures on the event loop's, and two
#: threads that found it full forgot the same signature, the second with a KeyError (found
#: in review)
_changing = threading.Lock()


def _key(public_key: bytes, message: bytes, signature: bytes) -> tuple[bytes, bytes, bytes]:
    digest = hashlib.blake2b(message, digest_size=32).digest()
    return (bytes(public_key), bytes(signature), digest)


def verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    key = _key(public_key, message, signature)
    if key in _good:
        return True
    try:
        VerifyKey(bytes(public_key)).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    with _changing:
        if len(_good) >= MEMORY:
            del _good[next(iter(_good))]
        _good[key] = None
    return True


def remembered(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether this signature checked out before and is still remembered (for tests)."""
    return _key(public_key, message, signature) in _good
