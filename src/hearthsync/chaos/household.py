"""The household a simulation starts from, and where its robots' log records go.

`create` leaves on disk what ``hearth init`` on robot 0 and ``hearth invite``/``join`` for the
others would: each robot's device key and household file (certificate, trust store, keys)
beside an empty store, all drawn from the schedule's seed.  The robots then boot from those
files, as ``hearth run`` does, at the start and after every crash.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from hearthsync import enrolment
from hearthsync.chaos.plan import FIRST_USERS, SCOPES, Plan
from hearthsync.crypto.certificate import Certificate, TrustStore
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import KEY_FILE, DeviceIdentity
from hearthsync.crypto.keyring import Keyring
from hearthsync.enrolment import HouseholdState

#: simulated time 0 on every robot's wall clock (2026-09-15 12:00 UTC), before its skew
BASE_WALL = 1_789_473_600.0
#: certificates outlive any machine that will run this (the household file is also read with
#: the real clock, when a save merges what is on disk)
CERT_S = 50 * 365 * 86_400


@dataclass(frozen=True)
class Member:
    """One robot as enrolled: where it lives, who it is, what it may read."""

    index: int
    folder: Path
    identity: DeviceIdentity
    state: HouseholdState
    scopes: frozenset[str]
    rng: random.Random  #: the robot's own generator (nonces, client ids), from the seed
    skew: float  #: how far its wall clock is off at the start


def create(plan: Plan, folder: Path) -> list[Member]:
    """Enrol ``plan.peers`` robots in a new household under ``folder`` (one folder each)."""
    setup = random.Random(f"hearthsync-chaos-setup-{plan.seed}")
    owner = DeviceIdentity(SigningKey(setup.randbytes(32)))
    issued = int(BASE_WALL) - 86_400
    household = Household.create(owner, "Chaos Home", setup.randbytes)
    keys = Keyring()
    for scope in SCOPES:
        keys.create_scope(scope, setup.randbytes)
        # the later users get theirs during the run, from the owner, when it hears of them
        for user in FIRST_USERS:
            keys.create_data_key(user, scope, setup.randbytes)
    identities = [owner] + [
        DeviceIdentity(SigningKey(setup.randbytes(32))) for _ in range(1, plan.peers)
    ]
    certs = [
        Certificate.self_signed_owner(
            owner, household, device_name="r0", scopes=SCOPES,
            issued_at=issued, expires_at=issued + CERT_S,
        )
    ] + [
        Certificate.issue(
            owner, household_id=household.id, device_pk=bytes(identity.verify_key),
            device_name=f"r{index}", role="admin" if index in plan.admins else "member",
            scopes=plan.scopes[index],
            issued_at=issued, expires_at=issued + CERT_S,
        )
        for index, identity in enumerate(identities) if index
    ]  # fmt: skip
    members = []
    for index, identity in enumerate(identities):
        trust = TrustStore.for_household(household)
        # the owner enrolled every robot, so it holds every certificate; a robot that joined
        # holds the owner's and its own, and learns the others' when they meet
        for cert in certs if index == 0 else (certs[0], certs[index]):
            trust.add(cert, issued)
        keyring = keys if index == 0 else Keyring()
        if index:
            wanted = plan.scopes[index]
            for grant in keys.grants_for(owner, identity.verify_key, wanted, setup.randbytes):
                keyring.accept_grant(grant, identity, trust=trust, now=issued)
        home = folder / f"r{index}"
        home.mkdir(parents=True)
        key_file = home / KEY_FILE
        key_file.write_bytes(bytes(identity.signing_key))
        key_file.chmod(0o600)
        state = HouseholdState(household, certs[index], trust, keyring)
        enrolment.save(home, state)
        skew = setup.uniform(-plan.scenario.max_skew, plan.scenario.max_skew)
        members.append(
            Member(index, home, identity, state, frozenset(plan.scopes[index]),
                   random.Random(setup.getrandbits(64)), skew)
        )  # fmt: skip
    return members


class TraceHandler(logging.Handler):
    """Puts what the core logs during a simulation into its trace (and its errors into the
    findings) instead of the console: a crash makes a robot rebuild its vector index, which
    the core rightly reports, hundreds of times in a long chaos run.  The schedule's folder
    is left out of the messages: a trace must not depend on where the run happened."""

    def __init__(
        self,
        note: Callable[[str], None],
        error: Callable[[str], None],
        now: Callable[[], float],
        folder: Path,
    ) -> None:
        super().__init__(logging.WARNING)
        self.note, self.error, self.now = note, error, now
        self.folder = str(folder)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().replace(self.folder, "<folder>")
        self.note(f"log {record.name}: {text}")
        if record.levelno >= logging.ERROR:
            self.error(f"t={self.now():.3f} logged by {record.name}: {text}")
