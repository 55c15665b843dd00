"""The household: the trust domain every certificate, key and envelope belongs to (SPEC §2).

A household is named by a hash of its owner's public key and a random nonce, so the id itself
commits to the owner: anyone who knows ``(household_id, nonce)`` (given at enrollment, neither
is secret) can tell the one true owner certificate from a self-signed impostor.  The household
secret is shared by enrolled devices only; it keys the mDNS discovery tag so strangers on the LAN
cannot tell which households are present, nor link a household's adverts to its id.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.wire import B32_ID_RE, check_bytes, check_text
from hearthsync.errors import ValidationError

#: SPEC §2: the random part of a household id
NONCE_BYTES = 16
#: SPEC §2: the secret every enrolled device holds
SECRET_BYTES = 32
_ID_DIGEST = 10
_DISCOVERY_PERSON = b"hearth-disc-v1"


@functools.lru_cache(maxsize=64)  # checked on every envelope's author chain: hash it once
def household_id(owner_pk: bytes, nonce: bytes) -> str:
    """``base32(BLAKE2b-10(owner_pk • household_nonce))``, 16 characters A-Z 2-7 (SPEC §2)."""
    check_bytes(owner_pk, field="owner_pk", size=32)
    check_bytes(nonce, field="household_nonce", size=NONCE_BYTES)
    digest = blake2b(owner_pk + nonce, digest_size=_ID_DIGEST, encoder=RawEncoder)
    return base64.b32encode(digest).decode("ascii")


def discovery_tag(secret: bytes) -> str:
    """``hex(BLAKE2b-8(b"mdns"; key=secret, person=b"hearth-disc-v1"))`` (SPEC §2).

    Keyed by the secret, not derived from the id: the tag in a public mDNS advert must not let
    a passer-by learn or confirm which household is behind it.
    """
    check_bytes(secret, field="household_secret", size=SECRET_BYTES)
    digest = blake2b(
        b"mdns", digest_size=8, key=secret, person=_DISCOVERY_PERSON, encoder=RawEncoder
    )
    return digest.hex()


@dataclass(frozen=True, slots=True)
class Household:
    """What an enrolled device knows about its household.

    ``secret`` is excluded from ``repr`` (and so from ``str``): it must never reach a log.
    """

    id: str
    name: str
    owner_pk: bytes
    nonce: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        check_text(self.id, field="household_id", pattern=B32_ID_RE)
        check_text(self.name, field="household name")
        check_bytes(self.owner_pk, field="owner_pk", size=32)
        check_bytes(self.nonce, field="household_nonce", size=NONCE_BYTES)
        check_bytes(self.secret, field="household_secret", size=SECRET_BYTES)
        if household_id(self.owner_pk, self.nonce) != self.id:
            raise ValidationError(
                "household id does not match the owner key and nonce (SPEC §2)",
                field="household_id",
            )

    @classmethod
    def create(
        cls, owner: DeviceIdentity, name: str, random_bytes: Callable[[int], bytes]
    ) -> Household:
        """A new household owned by ``owner``; nonce and secret come from ``random_bytes``.

        The randomness is passed in (STYLE §1: the core never reads the OS generator) so tests
        and the golden vectors can build the same household twice.
        """
        nonce = random_bytes(NONCE_BYTES)
        secret = random_bytes(SECRET_BYTES)
        owner_pk = bytes(owner.verify_key)
        return cls(household_id(owner_pk, nonce), name, owner_pk, nonce, secret)

    @property
    def discovery_tag(self) -> str:
        return discovery_tag(self.secret)
