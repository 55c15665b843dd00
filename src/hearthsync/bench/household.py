"""A seeded household for the sync benchmarks: an owner, its keys, and enrolled robots.

The same approach as the transport tests' ``Home``: the owner creates the household, a scope
key and a data key per user for every scope, then issues each robot a certificate and grants
it those keys.  Everything is derived from a seeded generator, so two runs enrol the same
household; only the robots' own identities (created by `Peer.open`) are fresh.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from nacl.signing import SigningKey

from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.peer import Peer
from hearthsync.transport.service import Credentials

SCOPES = ("core", "health", "history", "household", "spatial")
USERS = ("alice",)
YEAR_S = 365 * 86_400


class BenchHome:
    """The owner's side of a household: enrol robots with `enrol`."""

    def __init__(self, seed: int = 5, users: tuple[str, ...] = USERS) -> None:
        self.random_bytes: Callable[[int], bytes] = random.Random(seed).randbytes
        # certificates must be valid by the wall clock the services check them against
        self.now = int(time.time()) - 60
        self.owner = DeviceIdentity(SigningKey(bytes([1]) * 32))
        self.household = Household.create(self.owner, "Bench Home", self.random_bytes)
        self.owner_cert = Certificate.self_signed_owner(
            self.owner,
            self.household,
            device_name="owner",
            scopes=SCOPES,
            issued_at=self.now,
            expires_at=self.now + YEAR_S,
        )
        self.keys = Keyring()
        for scope in SCOPES:
            self.keys.create_scope(scope, self.random_bytes)
            for user in users:
                self.keys.create_data_key(user, scope, self.random_bytes)

    def trust(self) -> TrustStore:
        trust = TrustStore.for_household(self.household)
        trust.add(self.owner_cert, self.now)
        return trust

    def enrol(self, peer: Peer) -> Credentials:
        """A member certificate for every scope, and a keyring holding the household's keys."""
        cert = Certificate.issue(
            self.owner,
            household_id=self.household.id,
            device_pk=bytes(peer.identity.verify_key),
            device_name=peer.device,
            role="member",
            scopes=SCOPES,
            issued_at=self.now,
            expires_at=self.now + YEAR_S,
        )
        trust = self.trust()
        trust.add(cert, self.now)
        keyring = Keyring()
        grants = self.keys.grants_for(
            self.owner, peer.identity.verify_key, SCOPES, self.random_bytes
        )
        for grant in grants:
            keyring.accept_grant(grant, peer.identity, trust=trust, now=self.now)
        return Credentials(peer.identity, cert, trust, keyring)


@asynccontextmanager
async def robots(folder: Path, count: int, prefix: str = "robot") -> AsyncIterator[list[Peer]]:
    """``count`` peers in sub-folders of ``folder`` (default ``synchronous="FULL"``), each
    knowing the household's users; all closed on exit."""
    async with AsyncExitStack() as stack:
        peers = [
            await stack.enter_async_context(Peer.open(folder / f"{prefix}-{i}", device=f"r{i}"))
            for i in range(count)
        ]
        for peer in peers:
            for user in USERS:
                await peer.add_user(user, name=user.title())
        yield peers
