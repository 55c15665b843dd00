"""A small household for the crypto tests: owner, admin, two robots, their keys and trust store.

Everything is seeded, so every test builds exactly the same household and every failure replays.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from nacl.signing import SigningKey

from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import Keyring

NOW = 1_773_014_400  # 2026-03-09T00:00Z
YEAR = 365 * 86_400
SCOPES = ("core", "health", "history", "spatial")


def identity(n: int) -> DeviceIdentity:
    return DeviceIdentity(SigningKey(bytes([n]) * 32))


@dataclass
class Home:
    household: Household
    owner: DeviceIdentity
    admin: DeviceIdentity
    kitchen: DeviceIdentity
    hall: DeviceIdentity
    trust: TrustStore
    certs: dict[str, Certificate]
    random_bytes: Callable[[int], bytes]

    def issue(
        self,
        issuer: DeviceIdentity,
        device: DeviceIdentity,
        *,
        role: str = "member",
        scopes: tuple[str, ...] = ("core", "spatial"),
        issued_at: int = NOW,
        expires_at: int = NOW + YEAR,
        household_id: str | None = None,
    ) -> Certificate:
        return Certificate.issue(
            issuer,
            household_id=household_id or self.household.id,
            device_pk=bytes(device.verify_key),
            device_name="robot",
            role=role,
            scopes=scopes,
            issued_at=issued_at,
            expires_at=expires_at,
        )


@pytest.fixture
def rng() -> Callable[[int], bytes]:
    return random.Random(7).randbytes


@pytest.fixture
def home(rng: Callable[[int], bytes]) -> Home:
    owner, admin, kitchen, hall = identity(1), identity(2), identity(3), identity(4)
    household = Household.create(owner, "Test Home", rng)
    trust = TrustStore.for_household(household)
    built = Home(household, owner, admin, kitchen, hall, trust, {}, rng)
    owner_cert = Certificate.self_signed_owner(
        owner, household, device_name="hub", scopes=SCOPES, issued_at=NOW, expires_at=NOW + YEAR
    )
    built.certs["owner"] = trust.add(owner_cert, NOW)
    built.certs["admin"] = trust.add(built.issue(owner, admin, role="admin", scopes=SCOPES), NOW)
    built.certs["kitchen"] = trust.add(built.issue(admin, kitchen), NOW)
    built.certs["hall"] = trust.add(built.issue(admin, hall, scopes=("core", "health")), NOW)
    return built


@pytest.fixture
def admin_keys(home: Home) -> Keyring:
    """The admin's keyring: epoch 0 of every scope, data keys for alice and bob."""
    keyring = Keyring()
    for scope in SCOPES:
        keyring.create_scope(scope, home.random_bytes)
        for user in ("alice", "bob"):
            keyring.create_data_key(user, scope, home.random_bytes)
    return keyring


def enrolled(home: Home, admin_keys: Keyring, device: DeviceIdentity) -> Keyring:
    """A device's keyring after the admin granted it every key of its certified scopes."""
    keyring = Keyring()
    scopes = home.trust.scopes_of(device.device_id)
    for grant in admin_keys.grants_for(home.admin, device.verify_key, scopes, home.random_bytes):
        keyring.accept_grant(grant, device, trust=home.trust, now=NOW)
    return keyring
