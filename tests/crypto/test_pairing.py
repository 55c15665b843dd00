"""The join exchange (SPEC §7) meets hostile bytes with `PairingError`, never anything else."""

from __future__ import annotations

import pytest

from hearthsync.crypto.keyring import seal_to
from hearthsync.crypto.pairing import (
    _RESPONSE_PERSON,
    PairingError,
    PendingInvite,
    _mac,
    check_join_request,
    join_request,
    open_join_response,
)
from hearthsync.crypto.wire import pack

from .conftest import NOW, Home

SECRET = b"\x05" * 16
INVITE = PendingInvite(SECRET, ("core",), "member", NOW + 600)


@pytest.mark.parametrize(
    "fields",
    [
        [1, b"\x01" * 5, "robot", b"\x02" * 32],  # a device key cut short
        [1, b"\x01" * 32, 7, b"\x02" * 32],  # a name not a string
        [1, b"\x01" * 32, "", b"\x02" * 32],
        [1, b"\x01" * 32, "robot", b"\x02" * 31],  # a MAC cut short
    ],
)
def test_a_malformed_join_request_is_a_pairing_error(fields: list[object]) -> None:
    """Found in review: a stranger's request raised ValidationError, the error of a caller
    that broke a rule, not of a remote device."""
    with pytest.raises(PairingError, match="join request"):
        check_join_request(pack(fields), [INVITE], NOW)


def test_a_good_join_request_names_its_invite_and_device(home: Home) -> None:
    request = join_request(SECRET, home.kitchen, "kitchen")
    assert check_join_request(request, [INVITE], NOW) == (
        INVITE,
        bytes(home.kitchen.verify_key),
        "kitchen",
    )


def _answer(home: Home, enrolment: list[object], mac: bytes | None = None) -> bytes:
    sealed = seal_to(home.kitchen.verify_key, pack(enrolment), b"\x09" * 32)
    return pack([1, sealed, mac if mac is not None else _mac(SECRET, sealed, _RESPONSE_PERSON)])


@pytest.mark.parametrize(
    "change",
    [
        {2: 2**63},  # a certificate that is a number: OverflowError
        {2: 50_000_000},  # taken for 50 MB of zeros
        {3: [7]},  # a trusted certificate that is a number
        {4: -1},
        {5: ["grant"]},  # a grant that is text
    ],
)
def test_a_malformed_enrolment_is_a_pairing_error(home: Home, change: dict[int, object]) -> None:
    """Found in review: an enrolment field that was a number became that many zero bytes
    (``bytes(n)``), or raised OverflowError out of ``hearth join``."""
    h = home.household
    fields: list[object] = [1, [h.id, h.name, h.owner_pk, h.nonce, h.secret], b"", [], b"", []]
    for index, value in change.items():
        fields[index] = value
    with pytest.raises(PairingError, match="enrolment is malformed"):
        open_join_response(_answer(home, fields), SECRET, home.kitchen)


def test_a_join_response_with_a_short_mac_is_a_pairing_error(home: Home) -> None:
    h = home.household
    fields: list[object] = [1, [h.id, h.name, h.owner_pk, h.nonce, h.secret], b"", [], b"", []]
    with pytest.raises(PairingError, match="join response"):
        open_join_response(_answer(home, fields, mac=b"\x00" * 5), SECRET, home.kitchen)
    opened = open_join_response(_answer(home, fields), SECRET, home.kitchen)
    assert opened.household == h
