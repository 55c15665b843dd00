"""Device identity, household, certificates, keyring and envelopes (protocol/SPEC.md §2-§4).

Sans-I/O: nothing here reads a clock or the OS random generator.  ``now`` (seconds) and
randomness (``random_bytes(n)``, nonces) are arguments, so the chaos harness and the golden
vectors replay exactly.  The one edge is `DeviceIdentity.load_or_create`, which reads its key file.
"""

from hearthsync.crypto.certificate import Certificate, Revocations, TrustStore
from hearthsync.crypto.envelope import Envelope, Header, open_envelope, seal, verify_envelope
from hearthsync.crypto.household import Household, discovery_tag, household_id
from hearthsync.crypto.identity import DeviceIdentity, device_id_of, x25519_public_key
from hearthsync.crypto.keyring import KeyGrant, Keyring, derive_doc_key

__all__ = [
    "Certificate",
    "DeviceIdentity",
    "Envelope",
    "Header",
    "Household",
    "KeyGrant",
    "Keyring",
    "Revocations",
    "TrustStore",
    "derive_doc_key",
    "device_id_of",
    "discovery_tag",
    "household_id",
    "open_envelope",
    "seal",
    "verify_envelope",
    "x25519_public_key",
]
