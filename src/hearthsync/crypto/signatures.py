"""Ed25519 verification that remembers what checked out.

The same few certificates, tombstones and key grants are checked again and again: every
session opening checks the peer's certificate chain, every look at the household's tombstones
checks each one, every grant offered again is checked again.  An Ed25519 verification costs
about 60 µs; a signature over the same bytes by the same key checks out the same way every
time, so a good one is remembered (by the exact bytes, not a hash of them) and the next check
is a dictionary lookup.  What a signature does not tell (expiry, revocation, household) is
checked by the caller every time, as before.  Envelopes are not remembered: each is new.
"""

from __future__ import annotations

import nacl.exceptions
from nacl.signing import VerifyKey

#: how many good signatures are remembered (the oldest is forgotten first)
MEMORY = 2048

_good: dict[tuple[bytes, bytes, bytes], None] = {}


def verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    key = (bytes(public_key), bytes(message), bytes(signature))
    if key in _good:
        return True
    try:
        VerifyKey(key[0]).verify(key[1], key[2])
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    if len(_good) >= MEMORY:
        del _good[next(iter(_good))]
    _good[key] = None
    return True
