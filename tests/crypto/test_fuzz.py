"""Every ``from_wire`` meets hostile bytes with a hearthsync error, never anything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearthsync.crypto.certificate import Certificate, Revocations
from hearthsync.crypto.envelope import Envelope, Header, seal
from hearthsync.crypto.keyring import KeyGrant, Keyring
from hearthsync.errors import CryptoError

from .conftest import identity

DECODERS: list[Callable[[bytes], object]] = [
    Certificate.from_wire,
    Revocations.from_wire,
    KeyGrant.from_wire,
    Envelope.from_wire,
]


def _valid_samples() -> list[bytes]:
    signer, device = identity(1), identity(2)
    cert = Certificate.issue(
        signer,
        household_id="A" * 16,
        device_pk=bytes(device.verify_key),
        device_name="robot",
        role="member",
        scopes=["core", "spatial"],
        issued_at=1,
        expires_at=2,
    )
    revocations = Revocations.issue(signer, household_id="A" * 16, serial=1, revoked=["B" * 16])
    keys = Keyring()
    keys.create_scope("core", lambda n: b"\x01" * n)
    grant = keys.grant(signer, device.verify_key, scope="core", epoch=0, random_bytes=bytes)
    header = Header("home/spatial", "g-1", "core", 0, signer.device_id, 1)
    envelope = seal(signer, header, b"update", b"\x02" * 32, b"\x03" * 24)
    return [cert.to_wire(), revocations.to_wire(), grant, envelope.to_wire()]


SAMPLES = _valid_samples()

leaves = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=80) | st.sampled_from(["core", "A" * 16, "delta"])
)  # fmt: skip
msgpack_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=10), max_leaves=20)
#: arrays that pass the first checks (version 1, a plausible length) to reach the field checks
shaped = st.lists(leaves | st.lists(leaves, max_size=9), min_size=3, max_size=9).map(
    lambda fields: [1, *fields]
)
shaped_envelope = st.tuples(shaped, leaves, leaves, leaves).map(list)


def _refuses_cleanly(decode: Callable[[bytes], object], data: bytes) -> None:
    try:
        decode(data)
    except CryptoError:
        return
    # Decoding succeeded: only possible for a valid canonical encoding, so it must round-trip.
    decoded: Any = decode(data)
    assert decoded.to_wire() == data


@pytest.mark.parametrize("decode", DECODERS)
@settings(max_examples=400)
@given(data=st.binary(max_size=400))
def test_random_bytes(decode: Callable[[bytes], object], data: bytes) -> None:
    _refuses_cleanly(decode, data)


@pytest.mark.parametrize("decode", DECODERS)
@settings(max_examples=400)
@given(value=msgpack_values | shaped | shaped_envelope)
def test_random_msgpack_structures(decode: Callable[[bytes], object], value: object) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    _refuses_cleanly(decode, data)


@pytest.mark.parametrize("index", range(len(SAMPLES)))
@settings(max_examples=200)
@given(
    position=st.integers(0, 10_000), splice=st.binary(min_size=0, max_size=8), cut=st.integers(0, 8)
)
def test_spliced_valid_encodings(index: int, position: int, splice: bytes, cut: int) -> None:
    wire = SAMPLES[index]
    at = position % (len(wire) + 1)
    mutated = wire[:at] + splice + wire[at + cut :]
    for decode in DECODERS:
        _refuses_cleanly(decode, mutated)
