"""Write the golden vectors of SPEC §2-§4: certificate, revocations, key_grant, envelope.json.

Everything is built from fixed seeds, nonces and times, so running this twice writes identical
files (tests/crypto/test_vectors.py checks that, and that the library reproduces every byte).
Byte strings are lower-case hex.  Run: ``.venv/bin/python protocol/vectors/make_crypto_vectors.py``
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from hearthsync.compression import CODEC_NONE, CODECS
from hearthsync.crypto.certificate import Certificate, Revocations
from hearthsync.crypto.envelope import KIND_DELTA, Header, seal_payload
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import DeviceIdentity, x25519_public_key
from hearthsync.crypto.keyring import Keyring, derive_doc_key

OWNER_SEED = bytes(range(0, 32))
ADMIN_SEED = bytes(range(32, 64))
MEMBER_SEED = bytes(range(64, 96))
HOUSEHOLD_NONCE = bytes(range(0xA0, 0xB0))
HOUSEHOLD_SECRET = bytes(range(0xC0, 0xE0))
ISSUED_AT = 1_773_014_400  # 2026-03-09T00:00Z
EXPIRES_AT = ISSUED_AT + 365 * 86_400
VERIFY_AT = ISSUED_AT + 86_400
#: ``plaintext`` of envelope.json as one Zstandard frame (level 1, content size declared),
#: fixed here because another compressor version may choose other (equally valid) bytes
COMPRESSED_PLAINTEXT = bytes.fromhex(
    "28b52ffd20b9dd0000a00101aa010068656c6c6f2c206865617274683b20010044424d26"
)


def identity(seed: bytes) -> DeviceIdentity:
    return DeviceIdentity(SigningKey(seed))


def fixed(value: bytes) -> Callable[[int], bytes]:
    """A ``random_bytes`` that returns ``value``: the vectors' only "randomness"."""
    return lambda n: value


def household() -> Household:
    stream = iter([HOUSEHOLD_NONCE, HOUSEHOLD_SECRET])
    return Household.create(identity(OWNER_SEED), "Vector Home", lambda n: next(stream))


def certificate_cases() -> list[dict[str, Any]]:
    """Owner (self-signed), an admin issued by the owner, a member issued by the admin."""
    home = household()
    cases = [
        ("owner", OWNER_SEED, OWNER_SEED, "hall-hub", ["core", "health", "history", "spatial"]),
        ("admin", ADMIN_SEED, OWNER_SEED, "alice-phone", ["core", "health", "spatial"]),
        ("member", MEMBER_SEED, ADMIN_SEED, "kitchen-robot", ["spatial", "core"]),
    ]
    out = []
    for role, seed, issuer_seed, name, scopes in cases:
        cert = Certificate.issue(
            identity(issuer_seed),
            household_id=home.id,
            device_pk=bytes(identity(seed).verify_key),
            device_name=name,
            role=role,
            scopes=scopes,
            issued_at=ISSUED_AT,
            expires_at=EXPIRES_AT,
        )
        out.append(
            {
                "role": role,
                "device_seed": seed.hex(),
                "issuer_seed": issuer_seed.hex(),
                "device_name": name,
                "scopes": sorted(scopes),
                "issued_at": ISSUED_AT,
                "expires_at": EXPIRES_AT,
                "device_pk": cert.device_pk.hex(),
                "device_id": cert.device_id,
                "issuer_pk": cert.issuer_pk.hex(),
                "signed_part": cert.signed_part().hex(),
                "signature": cert.signature.hex(),
                "wire": cert.to_wire().hex(),
            }
        )
    return out


def certificate_rejects(member_wire: bytes) -> list[dict[str, str]]:
    """Encodings a receiver must refuse, with a word its error message contains."""
    flipped = bytearray(member_wire)
    flipped[-1] ^= 0x01
    unsorted = member_wire.replace(b"\xa4core\xa7spatial", b"\xa7spatial\xa4core")
    as_uint16 = member_wire.replace(b"\x01", b"\xcd\x00\x01", 1)
    return [
        {"why": "last signature bit flipped", "wire": bytes(flipped).hex(), "error": "signature"},
        {"why": "scopes not sorted", "wire": unsorted.hex(), "error": "sorted"},
        {"why": "version as uint16: not canonical", "wire": as_uint16.hex(), "error": "canonical"},
    ]


def certificate_json() -> dict[str, Any]:
    home = household()
    certs = certificate_cases()
    return {
        "spec": "protocol/SPEC.md §2-§3",
        "household": {
            "owner_seed": OWNER_SEED.hex(),
            "name": home.name,
            "nonce": home.nonce.hex(),
            "secret": home.secret.hex(),
            "owner_pk": home.owner_pk.hex(),
            "household_id": home.id,
            "discovery_tag": home.discovery_tag,
        },
        "verify_at": VERIFY_AT,
        "certificates": certs,
        "rejects": certificate_rejects(bytes.fromhex(certs[2]["wire"])),
    }


def revocations_json() -> dict[str, Any]:
    home = household()
    revoked = [identity(MEMBER_SEED).device_id]
    revocations = Revocations.issue(
        identity(ADMIN_SEED), household_id=home.id, serial=1, revoked=revoked
    )
    return {
        "spec": "protocol/SPEC.md §3",
        "household_id": home.id,
        "issuer_seed": ADMIN_SEED.hex(),
        "serial": 1,
        "revoked": revoked,
        "issuer_pk": revocations.issuer_pk.hex(),
        "signed_part": revocations.signed_part().hex(),
        "signature": revocations.signature.hex(),
        "wire": revocations.to_wire().hex(),
        # version 2, what `hearth revoke` signs now: the owner's, with a nonce that tells
        # apart two lists it signed apart with the same serial
        "version_2": revocations_v2(),
    }


def revocations_v2() -> dict[str, Any]:
    home = household()
    revoked = sorted([identity(MEMBER_SEED).device_id, identity(ADMIN_SEED).device_id])
    nonce = bytes(range(0x50, 0x60))
    revocations = Revocations.issue(
        identity(OWNER_SEED), household_id=home.id, serial=2, revoked=revoked, nonce=nonce
    )
    return {
        "issuer_seed": OWNER_SEED.hex(),
        "serial": 2,
        "revoked": revoked,
        "nonce": nonce.hex(),
        "issuer_pk": revocations.issuer_pk.hex(),
        "signed_part": revocations.signed_part().hex(),
        "signature": revocations.signature.hex(),
        "wire": revocations.to_wire().hex(),
    }


def key_grant_json() -> dict[str, Any]:
    granter, recipient = identity(ADMIN_SEED), identity(MEMBER_SEED)
    scope_key, data_key = bytes(range(0x10, 0x30)), bytes(range(0x30, 0x50))
    keyring = Keyring()
    keys = iter([scope_key, data_key])
    keyring.create_scope("core", lambda n: next(keys))
    keyring.create_data_key("alice", "core", lambda n: next(keys))
    cases = []
    for user, key, ephemeral in [
        (None, scope_key, b"\x21" * 32),
        ("alice", data_key, b"\x42" * 32),
    ]:
        wire = keyring.grant(
            granter, recipient.verify_key, scope="core", epoch=0, user=user,
            random_bytes=fixed(ephemeral),
        )  # fmt: skip
        cases.append(
            {
                "kind": "scope" if user is None else "data",
                "scope": "core",
                "user": user or "",
                "epoch": 0,
                "key": key.hex(),
                "ephemeral_secret": ephemeral.hex(),
                "wire": wire.hex(),
            }
        )
    return {
        "spec": "protocol/SPEC.md §4",
        "granter_seed": ADMIN_SEED.hex(),
        "recipient_seed": MEMBER_SEED.hex(),
        "recipient_id": recipient.device_id,
        "recipient_x25519_pk": bytes(x25519_public_key(recipient.verify_key)).hex(),
        "grants": cases,
    }


def envelope_json() -> dict[str, Any]:
    """One envelope per codec: the same update, once as is and once as a Zstandard frame."""
    author = identity(MEMBER_SEED)
    base_key = bytes(range(0x30, 0x50))
    doc_id, lineage = "user/alice/prefs", "g-0123456789abcdef"
    doc_key = derive_doc_key(base_key, doc_id, lineage)
    plaintext = b"\x01\x01\xaa\x01\x00" + b"hello, hearth; " * 12
    cases = []
    for counter, codec in enumerate(CODECS, start=1):
        header = Header(doc_id, lineage, "core", 0, author.device_id, counter, KIND_DELTA, codec)
        nonce = bytes(range(0x60 + counter, 0x78 + counter))
        payload = plaintext if codec == CODEC_NONE else COMPRESSED_PLAINTEXT
        envelope = seal_payload(author, header, payload, doc_key, nonce)
        cases.append(
            {
                "header": header.to_list(),
                "ad": header.ad.hex(),
                "nonce": nonce.hex(),
                "payload": payload.hex(),
                "ciphertext": envelope.ciphertext.hex(),
                "signature": envelope.signature.hex(),
                "wire": envelope.to_wire().hex(),
            }
        )
    return {
        "spec": "protocol/SPEC.md §4",
        "author_seed": MEMBER_SEED.hex(),
        "doc_key": {
            "base_key": base_key.hex(),
            "doc_id": doc_id,
            "lineage": lineage,
            "doc_key": doc_key.hex(),
        },
        "plaintext": plaintext.hex(),
        "envelopes": cases,
    }


def write_vectors(folder: Path) -> list[Path]:
    """Write the four files into ``folder``; return their paths."""
    documents = {
        "certificate.json": certificate_json(),
        "revocations.json": revocations_json(),
        "key_grant.json": key_grant_json(),
        "envelope.json": envelope_json(),
    }
    paths = []
    for name, document in documents.items():
        path = folder / name
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_vectors(Path(__file__).resolve().parent):
        print(written)
