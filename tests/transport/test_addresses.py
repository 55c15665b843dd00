"""Which address a dial loop tries next: the pure decision behind `SyncService.dial`."""

from __future__ import annotations

from hearthsync.transport.addresses import GIVE_UP_AFTER, MAX_ADDRESSES, Address, Addresses

REAL: Address = ("10.0.0.2", 8765)


def attempt(addresses: Addresses, *, proved_at: Address | None = None) -> Address:
    address = addresses.next()
    addresses.tried(address, proved=address == proved_at)
    return address


def test_a_forged_address_heard_before_every_attempt_leaves_every_other_one_to_the_real() -> None:
    """The robot is away for a while, and someone announces it at a new address each time."""
    addresses = Addresses(REAL)
    assert attempt(addresses, proved_at=REAL) == REAL
    tried = []
    for i in range(20):
        addresses.heard(("10.0.0.66", 9000 + i))
        tried.append(attempt(addresses))
    assert tried[::2] == [REAL] * 10
    assert REAL not in tried[1::2]
    assert len(addresses.others) == MAX_ADDRESSES
    assert attempt(addresses, proved_at=REAL) == REAL  # it is back: dialed first from now on
    assert addresses.next() == REAL


def test_a_robot_that_moved_is_followed_one_attempt_later() -> None:
    moved: Address = ("10.0.0.9", 8765)
    addresses = Addresses(REAL)
    attempt(addresses, proved_at=REAL)
    addresses.heard(moved)
    assert attempt(addresses, proved_at=moved) == REAL  # not there any more
    assert attempt(addresses, proved_at=moved) == moved
    assert (addresses.proven, addresses.others) == (moved, [REAL])
    assert addresses.next() == moved


def test_before_any_proof_the_addresses_heard_take_turns_newest_first() -> None:
    forged: Address = ("10.0.0.66", 8765)
    addresses = Addresses(REAL)
    addresses.heard(forged)
    assert [attempt(addresses) for _ in range(4)] == [forged, REAL, forged, REAL]
    addresses.heard(REAL)  # it announced itself again
    assert attempt(addresses, proved_at=REAL) == REAL


def test_a_lost_device_is_dialed_where_it_proved_itself_until_that_fails_for_a_while() -> None:
    """A goodbye may be forged: the proven address is still dialed, and only it."""
    addresses = Addresses(REAL)
    attempt(addresses, proved_at=REAL)
    addresses.heard(("10.0.0.66", 8765))
    assert addresses.lose()
    assert [attempt(addresses) for _ in range(GIVE_UP_AFTER - 1)] == [REAL] * (GIVE_UP_AFTER - 1)
    assert not addresses.given_up
    assert attempt(addresses, proved_at=REAL) == REAL  # it was there: count again from 0
    for _ in range(GIVE_UP_AFTER):
        assert not addresses.given_up
        attempt(addresses)
    assert addresses.given_up


def test_a_lost_device_heard_again_is_not_given_up() -> None:
    addresses = Addresses(REAL)
    attempt(addresses, proved_at=REAL)
    addresses.lose()
    for _ in range(GIVE_UP_AFTER - 1):
        attempt(addresses)
    addresses.heard(REAL)  # it announced itself again
    attempt(addresses)
    assert not addresses.given_up


def test_a_device_lost_before_it_proved_itself_anywhere_leaves_nothing_to_dial() -> None:
    assert not Addresses(REAL).lose()
