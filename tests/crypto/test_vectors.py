"""Golden vectors (protocol/vectors/*.json) both ways, and the generator is deterministic."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from hearthsync.compression import CODEC_NONE, CODEC_ZSTD
from hearthsync.crypto.certificate import Certificate, Revocations, TrustStore
from hearthsync.crypto.envelope import Envelope, Header, open_envelope, seal, seal_payload
from hearthsync.crypto.household import Household, discovery_tag, household_id
from hearthsync.crypto.identity import DeviceIdentity, device_id_of, x25519_public_key
from hearthsync.crypto.keyring import KeyGrant, Keyring, derive_doc_key, unseal
from hearthsync.errors import CryptoError

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
NAMES = ["certificate.json", "revocations.json", "key_grant.json", "envelope.json"]


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return loaded


def ident(seed_hex: str) -> DeviceIdentity:
    return DeviceIdentity(SigningKey(bytes.fromhex(seed_hex)))


def test_generator_is_deterministic_and_matches_the_committed_files(tmp_path: Path) -> None:
    script = runpy.run_path(str(VECTORS / "make_crypto_vectors.py"))
    for folder in (tmp_path / "a", tmp_path / "b"):
        folder.mkdir()
        script["write_vectors"](folder)
    for name in NAMES:
        first = (tmp_path / "a" / name).read_bytes()
        assert first == (tmp_path / "b" / name).read_bytes()
        assert first == (VECTORS / name).read_bytes(), f"{name} is stale: rerun the script"


def test_household_vector() -> None:
    vector = load("certificate.json")["household"]
    owner_pk, nonce = bytes.fromhex(vector["owner_pk"]), bytes.fromhex(vector["nonce"])
    assert bytes(ident(vector["owner_seed"]).verify_key) == owner_pk
    assert household_id(owner_pk, nonce) == vector["household_id"]
    assert discovery_tag(bytes.fromhex(vector["secret"])) == vector["discovery_tag"]
    home = Household(
        vector["household_id"], vector["name"], owner_pk, nonce, bytes.fromhex(vector["secret"])
    )
    assert home.discovery_tag == vector["discovery_tag"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_certificate_vector_both_ways(index: int) -> None:
    document = load("certificate.json")
    vector = document["certificates"][index]
    fields = {
        "household_id": document["household"]["household_id"],
        "device_pk": bytes.fromhex(vector["device_pk"]),
        "device_name": vector["device_name"],
        "role": vector["role"],
        "scopes": vector["scopes"],
        "issued_at": vector["issued_at"],
        "expires_at": vector["expires_at"],
    }
    built = Certificate.issue(ident(vector["issuer_seed"]), **fields)
    assert built.signed_part().hex() == vector["signed_part"]
    assert built.to_wire().hex() == vector["wire"]
    decoded = Certificate.from_wire(bytes.fromhex(vector["wire"]))
    assert decoded == built
    assert {k: getattr(decoded, k) for k in fields} == {**fields, "scopes": tuple(vector["scopes"])}
    assert decoded.issuer_pk.hex() == vector["issuer_pk"]
    assert decoded.signature.hex() == vector["signature"]
    assert decoded.device_id == vector["device_id"] == device_id_of(decoded.device_pk)


def test_certificate_chain_vector_verifies() -> None:
    document = load("certificate.json")
    trust = TrustStore(
        document["household"]["household_id"], bytes.fromhex(document["household"]["nonce"])
    )
    for vector in document["certificates"]:
        trust.add(Certificate.from_wire(bytes.fromhex(vector["wire"])), document["verify_at"])
    assert trust.scopes_of(document["certificates"][2]["device_id"]) == {"core", "spatial"}


@pytest.mark.parametrize("index", [0, 1, 2])
def test_certificate_reject_vectors(index: int) -> None:
    vector = load("certificate.json")["rejects"][index]
    with pytest.raises(CryptoError, match=vector["error"]):
        Certificate.from_wire(bytes.fromhex(vector["wire"])).check_signature()


def test_revocations_vector_both_ways() -> None:
    vector = load("revocations.json")
    built = Revocations.issue(
        ident(vector["issuer_seed"]),
        household_id=vector["household_id"],
        serial=vector["serial"],
        revoked=vector["revoked"],
    )
    assert built.signed_part().hex() == vector["signed_part"]
    assert built.to_wire().hex() == vector["wire"]
    decoded = Revocations.from_wire(bytes.fromhex(vector["wire"]))
    assert decoded == built
    assert (decoded.household_id, decoded.serial, list(decoded.revoked)) == (
        vector["household_id"], vector["serial"], vector["revoked"],
    )  # fmt: skip
    assert decoded.issuer_pk.hex() == vector["issuer_pk"]
    assert decoded.signature.hex() == vector["signature"]
    decoded.check_signature()


def test_revocations_version_2_vector_both_ways() -> None:
    document = load("revocations.json")
    vector = document["version_2"]
    nonce = bytes.fromhex(vector["nonce"])
    built = Revocations.issue(
        ident(vector["issuer_seed"]),
        household_id=document["household_id"],
        serial=vector["serial"],
        revoked=vector["revoked"],
        nonce=nonce,
    )
    assert built.signed_part().hex() == vector["signed_part"]
    assert built.to_wire().hex() == vector["wire"]
    decoded = Revocations.from_wire(bytes.fromhex(vector["wire"]))
    assert decoded == built
    assert (decoded.serial, list(decoded.revoked), decoded.nonce) == (
        vector["serial"], vector["revoked"], nonce,
    )  # fmt: skip
    assert decoded.signature.hex() == vector["signature"]
    decoded.check_signature()
    # the nonce is signed: another nonce under the same signature does not verify
    forged = bytearray(bytes.fromhex(vector["wire"]))
    at = forged.index(nonce)
    forged[at] ^= 1
    with pytest.raises(CryptoError):
        Revocations.from_wire(bytes(forged)).check_signature()


@pytest.mark.parametrize("index", [0, 1])
def test_key_grant_vector_both_ways(index: int) -> None:
    document = load("key_grant.json")
    vector = document["grants"][index]
    granter, recipient = ident(document["granter_seed"]), ident(document["recipient_seed"])
    assert bytes(x25519_public_key(recipient.verify_key)).hex() == document["recipient_x25519_pk"]
    keys = Keyring()
    key = bytes.fromhex(vector["key"])
    keys.create_scope(vector["scope"], lambda n: key)
    user = vector["user"] or None
    if user is not None:
        keys.create_data_key(user, vector["scope"], lambda n: key)
    ephemeral = bytes.fromhex(vector["ephemeral_secret"])
    wire = keys.grant(
        granter, recipient.verify_key, scope=vector["scope"], epoch=vector["epoch"], user=user,
        random_bytes=lambda n: ephemeral,
    )  # fmt: skip
    assert wire.hex() == vector["wire"]
    decoded = KeyGrant.from_wire(bytes.fromhex(vector["wire"]))
    assert (decoded.kind, decoded.scope, decoded.user, decoded.epoch) == (
        vector["kind"], vector["scope"], vector["user"], vector["epoch"],
    )  # fmt: skip
    assert decoded.recipient == document["recipient_id"]
    assert decoded.granter_pk == bytes(granter.verify_key)
    decoded.check_signature()
    assert unseal(recipient, decoded.sealed) == key


def test_envelope_vector_both_ways() -> None:
    vector = load("envelope.json")
    author = ident(vector["author_seed"])
    derivation = vector["doc_key"]
    doc_key = derive_doc_key(
        bytes.fromhex(derivation["base_key"]), derivation["doc_id"], derivation["lineage"]
    )
    assert doc_key.hex() == derivation["doc_key"]
    plaintext = bytes.fromhex(vector["plaintext"])
    assert [case["header"][8] for case in vector["envelopes"]] == [CODEC_NONE, CODEC_ZSTD]
    for case in vector["envelopes"]:
        header = Header(*case["header"][1:])
        assert header.to_list() == case["header"]
        assert header.ad.hex() == case["ad"]
        payload, nonce = bytes.fromhex(case["payload"]), bytes.fromhex(case["nonce"])
        built = seal_payload(author, header, payload, doc_key, nonce)
        assert built.ciphertext.hex() == case["ciphertext"]
        assert built.signature.hex() == case["signature"]
        assert built.to_wire().hex() == case["wire"]
        decoded = Envelope.from_wire(bytes.fromhex(case["wire"]))
        assert decoded == built
        assert (decoded.header, decoded.nonce) == (header, nonce)
        assert open_envelope(decoded, doc_key, author.verify_key) == plaintext


def test_a_compressed_envelope_opens_to_what_was_sealed() -> None:
    """What `seal` compresses today (whatever bytes this Zstandard picks) opens to the update."""
    vector = load("envelope.json")
    author = ident(vector["author_seed"])
    plaintext = bytes.fromhex(vector["plaintext"])
    header = Header(*vector["envelopes"][0]["header"][1:])
    key, nonce = bytes(range(32)), bytes(24)
    sealed = seal(author, header, plaintext, key, nonce, compress_update=True)
    assert sealed.header.codec == CODEC_ZSTD
    assert len(sealed.ciphertext) < len(plaintext)
    assert open_envelope(sealed, key, author.verify_key) == plaintext
