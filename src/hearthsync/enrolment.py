"""A device's household credentials on disk, and enrolment of new robots (I/O adapter).

Everything a device needs to take part in sync (the household, its certificate, the
certificates it trusts, the revocation list, its keys, and its invites, open or spent, until
they expire) lives in one file beside the store, ``household.key``, created with mode 0600 and
replaced atomically.  A join that failed leaves only ``join.pending`` (`pending_join`).
The cryptography is in `hearthsync.crypto` (sans I/O); this module reads and writes the file
and speaks the two messages of the join exchange over a websocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import connect

from hearthsync.crypto.certificate import (
    ISSUING_ROLES,
    REVOCATION_NONCE_BYTES,
    Certificate,
    Revocations,
    TrustStore,
)
from hearthsync.crypto.household import Household
from hearthsync.crypto.identity import KEY_FILE, DeviceIdentity, device_id_of, fsync_dir
from hearthsync.crypto.keyring import Keyring, export_secret_keys, import_secret_keys
from hearthsync.crypto.pairing import (
    NO_OPEN_INVITE,
    Enrolment,
    Invite,
    PairingError,
    PendingInvite,
    SpentInvite,
    check_join_request,
    join_request,
    join_response,
    open_join_response,
)
from hearthsync.crypto.wire import check_text, pack, unpack_array
from hearthsync.errors import (
    CertificateError,
    CryptoError,
    MissingKeyError,
    OverreachError,
    StoreError,
    ValidationError,
)
from hearthsync.hlc import ClockHints
from hearthsync.ids import check_name
from hearthsync.store.lock import pid_alive
from hearthsync.transport.service import JOIN_PATH, Credentials

log = logging.getLogger(__name__)

CREDENTIALS_FILE = "household.key"
#: the device key of a join that failed, kept for a retry with the same code (`pending_join`)
PENDING_JOIN_FILE = "join.pending"
SCOPES = ("core", "health", "history", "household", "spatial")
INVITED_ROLES = ("member", "admin")  #: what an invite may make a robot (`add_invite`)
#: the longest an invite works: a code is a key to the household while it works, and one
#: good for longer is rather a robot's enrolment waiting to happen (``hearth invite --ttl``)
MAX_INVITE_TTL_S = 30 * 86_400
CERT_YEARS = 10
#: certificates start this long before they are issued: robots' clocks drift (some have no RTC),
#: and a certificate must not be "not yet valid" on a robot whose clock is a little behind
CLOCK_SLACK_S = 86_400
YEAR_S = 365 * 86_400
#: how long `join` waits for the inviter's answer once connected (it certifies the robot and
#: seals its keys: well under a second on a robot)
JOIN_ANSWER_TIMEOUT_S = 30.0


@dataclass
class HouseholdState:
    """The household as this device knows it: load with `load`, change, then `save`."""

    household: Household
    certificate: Certificate
    trust: TrustStore
    keyring: Keyring
    invites: list[PendingInvite] = field(default_factory=list)
    #: invites used, each with the device key it enrolled, kept until they expire: that device
    #: may ask again with the same code (its answer was lost) and gets the same enrolment
    spent: list[SpentInvite] = field(default_factory=list)
    #: the file's signature (`_signature`) right after this state last wrote it: while the
    #: file still has it, nobody else wrote it since, and `save` need not read it again
    seen: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)

    def credentials(self, identity: DeviceIdentity) -> Credentials:
        return Credentials(identity, self.certificate, self.trust, self.keyring)

    @property
    def is_admin(self) -> bool:
        return self.certificate.role in ISSUING_ROLES


# ---------------------------------------------------------------------- the file


def load(folder: Path, now: int | None = None) -> HouseholdState | None:
    """The credentials in ``folder``, or None if this device belongs to no household."""
    path = folder / CREDENTIALS_FILE
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise StoreError(f"{path} is readable by others; run: chmod 600 {path}")
    fields = _fields(path)
    household = Household(*fields[1])
    when = int(time.time()) if now is None else now
    trust = TrustStore.for_household(household)
    for wire in fields[3]:  # issuers first: the file keeps them in the order they were trusted
        cert = Certificate.from_wire(wire)
        try:
            trust.add(cert, when)
        except OverreachError as exc:
            # certified beyond what its issuer may give before robots checked that, or by
            # such an issuer (SPEC §3): it will never verify again, and no robot syncs with
            # that device any more; said at every open until the owner certifies anew the
            # device, or the issuer that overreached
            log.warning("%s; no robot of the household trusts it (SPEC §3): that robot "
                        "syncs with none until the owner certifies it, or the device that "
                        "overreached, anew", exc)  # fmt: skip
            trust.restore(cert)
        except CertificateError:  # not good now (expired): kept, every use checks it
            trust.restore(cert)
    if fields[4]:
        revocations = Revocations.from_wire(fields[4])
        try:
            taken = trust.accept_revocations(revocations, when)
        except CertificateError:
            taken = False
        if not taken:  # its own file: kept even if not good now (revoked stays revoked), and
            # a list an admin signed before only the owner revoked, which a list coming in
            # is ignored for (dropping it here trusted its robot again; found in review)
            trust.restore_revocations(revocations)
    for wire in fields[7] if len(fields) > 7 else ():
        with contextlib.suppress(CryptoError):  # a conflicting list (`TrustStore.conflicting`)
            trust.accept_revocations(Revocations.from_wire(wire), when)
    return HouseholdState(
        household,
        Certificate.from_wire(fields[2]),
        trust,
        import_secret_keys(fields[5]),
        # one list of both: an open invite has four items, a spent one five (its device key)
        [PendingInvite.from_list(item) for item in fields[6] if len(item) != 5],
        [SpentInvite.from_list(item) for item in fields[6] if len(item) == 5],
    )


def clock_hints(folder: Path) -> ClockHints | None:
    """What the credentials in ``folder`` say of the time, read before the clock can be
    trusted to check them (`hearthsync.hlc.FloorWall.start`); None without credentials, or
    with credentials that do not parse (opening them will then say why)."""
    try:
        fields = _fields(folder / CREDENTIALS_FILE)
        own = Certificate.from_wire(fields[2])
        trusted = [Certificate.from_wire(wire) for wire in fields[3]]
    except (OSError, CryptoError, ValidationError, TypeError, IndexError):
        return None
    issued = max(cert.issued_at for cert in [own, *trusted])
    return ClockHints(issued=float(issued), expires=float(own.expires_at))


def _fields(path: Path) -> list[Any]:
    """The credentials file's top-level fields, checked for shape only."""
    # an eighth field, the conflicting revocation lists, only while there are any: a file
    # without them still opens with a version that does not know of them
    return unpack_array(
        path.read_bytes(), what=CREDENTIALS_FILE, length=7, max_bytes=16 * 1024 * 1024,
        error=CryptoError, max_array=100_000, max_length=8,
    )  # fmt: skip


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise every read-modify-write of the credentials file between processes
    (``hearth run`` enrolling a robot while ``hearth invite`` makes a code, say)."""
    fd = os.open(folder / f"{CREDENTIALS_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def save(folder: Path, state: HouseholdState, now: int | None = None) -> None:
    """Write ``state`` back, merged with what other processes wrote meanwhile.

    The file is the authority for open invites (made by ``hearth invite``, spent by
    enrolment); certificates, revocations and keys found there are merged in, never dropped.
    ``now`` (default: the system clock) is what they are checked against: a running peer
    passes its own clock (`Peer.wall`), which never reads 1970.  A file nobody wrote since
    ``state`` last wrote it is not read again (a robot saves at every grant it accepts).
    """
    when = int(time.time()) if now is None else now
    with _locked(folder):
        path = folder / CREDENTIALS_FILE
        if path.exists() and state.seen != _signature(path):
            disk = load(folder, when)
            if disk is not None:
                _merge(state, disk, when)
        _write(folder, state)


def _signature(path: Path) -> tuple[int, int, int]:
    """What changes whenever the file is written again (`_write` replaces it: a new inode)."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _merge(state: HouseholdState, disk: HouseholdState, now: int) -> None:
    state.invites = disk.invites
    state.spent = disk.spent
    for device in _trust_order(disk):
        with contextlib.suppress(CryptoError):
            state.trust.add(disk.trust.certificate_of(device), now)
    for revocations in disk.trust.gossip():  # the held list, then conflicting ones
        with contextlib.suppress(CryptoError):
            state.trust.accept_revocations(revocations, now)
    state.keyring.merge_from(disk.keyring)


def _write(folder: Path, state: HouseholdState) -> None:
    """Write the credentials file atomically, readable by its owner only."""
    h = state.household
    trusted = [state.trust.certificate_of(d).to_wire() for d in _trust_order(state)]
    revocations = state.trust.revocations
    conflicting = [listed.to_wire() for listed in state.trust.conflicting]
    data = pack([
        1, [h.id, h.name, h.owner_pk, h.nonce, h.secret], state.certificate.to_wire(), trusted,
        revocations.to_wire() if revocations else b"", export_secret_keys(state.keyring),
        [i.to_list() for i in state.invites] + [s.to_list() for s in state.spent],
        *([conflicting] if conflicting else []),
    ])  # fmt: skip
    path = folder / CREDENTIALS_FILE
    partial = folder / f".{CREDENTIALS_FILE}.{os.getpid()}.tmp"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    # the rename is durable only once the folder is: without this, a power cut could bring
    # back the credentials before it, a spent invite unspent or a new key epoch gone (found
    # in review)
    fsync_dir(folder)
    state.seen = _signature(path)
    _sweep_partial_writes(folder)


def _sweep_partial_writes(folder: Path) -> None:
    """Remove what a save killed before its rename left (``.household.key.<pid>.tmp``, of a
    process that is gone): it holds every key of its time, those of users forgotten since
    included, and nothing else ever removed it (found in review).  And what a device key's
    creation killed before its link or unlink left (``.device.key.<pid>.tmp``: a key never
    used, or a second name of the robot's own; found in review)."""
    suffix = ".tmp"
    for entry in folder.iterdir():
        name = entry.name
        prefix = next(
            (f".{n}." for n in (CREDENTIALS_FILE, KEY_FILE) if name.startswith(f".{n}.")), ""
        )
        if not (prefix and name.endswith(suffix)):
            continue
        pid = name[len(prefix) : -len(suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def _trust_order(state: HouseholdState) -> list[str]:
    """Certificates in an order `TrustStore.add` accepts: each issuer before what it issued."""
    certs = {d: state.trust.certificate_of(d) for d in state.trust.devices()}
    ordered: list[str] = []
    placed: set[bytes] = set()
    while len(ordered) < len(certs):
        ready = [
            d for d, c in certs.items()
            if d not in ordered and (c.is_self_signed or c.issuer_pk in placed)
        ]  # fmt: skip
        if not ready:  # an orphan (issuer unknown): keep it last, the load will say why
            ready = [d for d in certs if d not in ordered]
        for device in sorted(ready):
            ordered.append(device)
            placed.add(certs[device].device_pk)
    return ordered


# ---------------------------------------------------------------------- households and invites


def check_new_robot(folder: Path, device_name: str, household_name: str | None = None) -> None:
    """Refuse, before anything is made, what ``hearth init`` (``household_name`` given: its
    `create`) or ``hearth join`` would refuse later of their arguments: a bad name, a folder
    that belongs to a household already.  A refused command leaves the folder as it was;
    found in review: init opened the peer first, and a bad household name left a store, a
    key and a lock file behind, tied to the device name."""
    check_name(device_name, field="device")
    if household_name is not None:
        check_text(household_name, field="household name")
    if load(folder) is not None:
        raise ValidationError(f"{folder} already belongs to a household", field="path")


def create(
    folder: Path, identity: DeviceIdentity, name: str, device_name: str, *, now: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> HouseholdState:  # fmt: skip
    """Start a household with this device as its owner (``hearth init``)."""
    if load(folder, now) is not None:
        raise ValidationError(f"{folder} already belongs to a household", field="path")
    household = Household.create(identity, name, random_bytes)
    certificate = Certificate.self_signed_owner(
        identity, household, device_name=device_name, scopes=SCOPES,
        issued_at=now - CLOCK_SLACK_S, expires_at=now + CERT_YEARS * YEAR_S,
    )  # fmt: skip
    trust = TrustStore.for_household(household)
    trust.add(certificate, now)
    keyring = Keyring()
    for scope in SCOPES:
        keyring.create_scope(scope, random_bytes)
    state = HouseholdState(household, certificate, trust, keyring)
    save(folder, state, now)
    return state


def add_invite(
    folder: Path, state: HouseholdState, host: str, port: int, *, scopes: tuple[str, ...],
    ttl_s: int, now: int, role: str = "member",
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Invite:  # fmt: skip
    """Make a one-time invite for a new robot (``hearth invite``), a member or (``role``
    ``"admin"``, the owner only) an admin: a robot that invites members, makes and grants
    the data keys of the people it adds, and revokes nothing (only the owner revokes).  The
    scopes are at most the inviter's own (SPEC §3)."""
    if not state.is_admin:
        raise ValidationError("only the owner or an admin device can invite", field="path")
    if role not in INVITED_ROLES:
        raise ValidationError(
            f"a robot is invited as {' or '.join(INVITED_ROLES)}, not {role!r:.40}", field="role"
        )
    if role == "admin" and state.certificate.role != "owner":
        # the certificate would not verify (SPEC §3: admins certify members only)
        raise ValidationError(
            f"only the household owner can invite an admin; this robot is {state.certificate.role}",
            field="role",
        )
    unknown = set(scopes) - set(SCOPES)
    if unknown:
        raise ValidationError(f"unknown scopes: {', '.join(sorted(unknown))}", field="scopes")
    beyond = set(scopes) - set(state.certificate.scopes)
    if beyond:  # its certificate would not verify (SPEC §3): said here, not at the join
        raise ValidationError(
            f"this robot does not read {', '.join(sorted(beyond))}, so it cannot invite a "
            f"robot that does (it reads {', '.join(state.certificate.scopes)})",
            field="scopes",
        )
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a listening address, not a dialable one
        raise ValidationError(
            f"{host or 'no host'} is not an address a robot can dial: give --address HOST:PORT",
            field="address",
        )
    if not 0 < ttl_s <= MAX_INVITE_TTL_S:  # a huge one overflowed the file's integers
        raise ValidationError(
            f"an invite works for 1 s to {MAX_INVITE_TTL_S // 86_400} days, not {ttl_s} s",
            field="ttl",
        )
    secret = random_bytes(16)
    wanted = tuple(sorted(set(scopes) | {"household"}))
    with _locked(folder):
        fresh = load(folder, now) or state
        fresh.invites = [i for i in fresh.invites if i.expires_at > now]
        fresh.spent = [s for s in fresh.spent if s.expires_at > now]
        fresh.invites.append(PendingInvite(secret, wanted, role, now + ttl_s))
        _write(folder, fresh)
    state.invites, state.spent = fresh.invites, fresh.spent
    return Invite(secret, host, port)


def add_user_keys(state: HouseholdState, user: str, random_bytes: Callable[[int], bytes]) -> bool:
    """Give ``user`` a data key in every scope this device holds keys of (admins only), for
    its current epoch, where it holds none; True if any was new."""
    if not state.is_admin or state.keyring.is_forgotten(user):
        return False
    made = False
    for scope in sorted(state.keyring.scopes & set(SCOPES)):
        epoch = state.keyring.current_epoch(scope)
        try:
            state.keyring.data_key(user, scope, epoch)
        except MissingKeyError:
            state.keyring.create_data_key(user, scope, random_bytes)
            made = True
    return made


def device_named(state: HouseholdState, device: str) -> str:
    """The id of the robot ``device`` names: its device id (dashes allowed, as ``hearth
    status`` groups it) or the name it joined with (``--device``), if one robot has it."""
    plain = device.replace("-", "")
    if state.trust.knows(plain):
        return plain
    named = [
        d for d in state.trust.devices() if state.trust.certificate_of(d).device_name == device
    ]
    if len(named) == 1:
        return named[0]
    if named:
        raise ValidationError(
            f"{len(named)} robots are named {device!r} ({', '.join(named)}): give its device id",
            field="device",
        )
    known = ", ".join(
        f"{state.trust.certificate_of(d).device_name} ({d})" for d in state.trust.devices()
    )
    raise ValidationError(
        f"no robot named {device!r} or with that device id in this household; known: {known}",
        field="device",
    )


def revoke(
    folder: Path, state: HouseholdState, identity: DeviceIdentity, device: str, *, now: int,
    users: Iterable[str] = (), random_bytes: Callable[[int], bytes] = os.urandom,
) -> dict[str, int]:  # fmt: skip
    """Revoke ``device`` (``hearth revoke``, the owner only): sign a new revocation list,
    start a new epoch of every scope this robot holds (the device can decrypt nothing written
    afterwards), save; return the epochs.  ``users`` are the household's (`Peer.users`): each
    gets a data key of the new epoch, those this robot holds no key of yet too.  The running
    sync gossips the list and grants the new keys to the remaining robots.

    Every scope, not those of the device's certificate: an older certificate of it may have
    granted more, and it keeps the keys it was given then (found in review)."""
    if state.certificate.role != "owner":
        # one signer keeps the lists one chain (SPEC §3): lists two robots signed apart had
        # one serial, and each side granted its new keys to the robot the other revoked
        raise ValidationError(
            f"only the household owner can revoke; this robot is {state.certificate.role} "
            "(run 'hearth revoke' on the owner)", field="path",
        )  # fmt: skip
    if device == identity.device_id:
        raise ValidationError("a device cannot revoke itself", field="device")
    if not state.trust.knows(device):
        raise ValidationError(f"no certificate known for device {device}", field="device")
    return _rotate(folder, state, identity, state.trust.revoked | {device}, now=now,
                   users=users, random_bytes=random_bytes)  # fmt: skip


def catch_up(
    folder: Path, state: HouseholdState, identity: DeviceIdentity, *, now: int,
    users: Iterable[str] = (), random_bytes: Callable[[int], bytes] = os.urandom,
) -> dict[str, int]:  # fmt: skip
    """The owner, holding a revocation list newer than its keys, lists it signed apart
    (`TrustStore.conflicting`), or a list an admin signed, signs the next list (revoking
    every robot of them all) and starts a new epoch of every scope; the epochs made, ``{}``
    if none was needed.

    Only the owner revokes, so only an owner restored from a backup older than its last
    revocation holds a list (gossiped back) without that revocation's keys, which it alone
    granted: it sealed under the epoch the revoked robot holds (found in review).  Rotating
    on the first such list, an old one, it reused a serial the household had used for
    another robot, and the two lists never merged (found in the next review): what it hears
    of lists it signed apart is merged now, at a serial past them all."""
    held = state.trust.revocations
    if state.certificate.role != "owner" or held is None:
        return {}
    behind = any(state.keyring.current_epoch(s) < held.serial for s in state.keyring.scopes)
    conflicting = state.trust.conflicting
    # a list an admin signed before admins stopped revoking: signed again, by the owner
    legacy = held.issuer_pk != state.certificate.device_pk
    if not (behind or conflicting or legacy):
        return {}
    log.warning(
        "this owner holds revocation list %d %s: signing the next, revoking %s, with a new "
        "epoch of every scope", held.serial,
        "and conflicting lists it signed apart (restored from an older backup?)" if conflicting
        else "but not the keys its rotation made (restored from an older backup?)" if behind
        else "signed by an admin", ", ".join(sorted(state.trust.revoked)),
    )  # fmt: skip
    return _rotate(folder, state, identity, state.trust.revoked, now=now, users=users,
                   random_bytes=random_bytes)  # fmt: skip


def _rotate(
    folder: Path, state: HouseholdState, identity: DeviceIdentity, revoked: Iterable[str], *,
    now: int, users: Iterable[str], random_bytes: Callable[[int], bytes],
) -> dict[str, int]:  # fmt: skip
    """Sign the next revocation list, of ``revoked``, start a new epoch of every scope at its
    serial, save; the epochs."""
    held = state.trust.revocations
    # past every epoch held too: a keyring from before epochs followed serials may hold one at
    # or past the list's serial, and a rotation to it would be a key no robot holds (found in
    # review).  The serial may leap as far as `MAX_SERIAL_STEP`, which a household's epochs
    # never reach.
    top = max((state.keyring.current_epoch(s) for s in state.keyring.scopes), default=0)
    apart = max((c.serial for c in state.trust.conflicting), default=0)  # lists to merge
    serial = max((held.serial + 1) if held else 1, top + 1, apart + 1)
    revocations = Revocations.issue(
        identity, household_id=state.household.id, serial=serial, revoked=sorted(revoked),
        nonce=random_bytes(REVOCATION_NONCE_BYTES),
    )  # fmt: skip
    state.trust.accept_revocations(revocations, now)
    epochs = state.keyring.rotate_for_revocation(
        state.keyring.scopes, random_bytes, users, serial=revocations.serial
    )
    save(folder, state, now)
    return {str(scope): epoch for scope, epoch in epochs.items()}


# ---------------------------------------------------------------------- the join exchange


def enrol(
    folder: Path, identity: DeviceIdentity, request: bytes, *, now: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:  # fmt: skip
    """Answer a join request (the inviter's side): certify the device, grant its keys.

    The same request again (the same code and device key, before the code expires: the answer
    was lost on the way) gets the same enrolment again, with the keys held now, and changes
    nothing; the code with any other key is refused, as is a device revoked since."""
    with _locked(folder):
        state = load(folder, now)
        if state is None:
            raise PairingError("this device belongs to no household")
        spent = [s for s in state.spent if s.expires_at > now]
        invite, device_pk, name = check_join_request(
            request, [*state.invites, *(s.invite for s in spent)], now
        )
        enrolled = device_id_of(device_pk)
        again = next((s for s in spent if s.invite is invite), None)
        if again is not None:
            if again.device_pk != device_pk:
                raise PairingError(NO_OPEN_INVITE)  # one code, one device key
            certificate = _enrolled_by(state, identity, again, now)
        else:
            if state.trust.knows(enrolled):
                # a device key is public (every handshake shows it): certifying it again would
                # let whoever holds any invite rewrite another device's role and scopes, the
                # owner's too
                raise PairingError(f"device {enrolled} is enrolled already")
            state.invites = [i for i in state.invites if i is not invite]  # one use only
            state.spent = [*spent, SpentInvite(invite, device_pk)]
            certificate = Certificate.issue(
                identity, household_id=state.household.id, device_pk=device_pk,
                device_name=name, role=invite.role, scopes=invite.scopes,
                issued_at=now - CLOCK_SLACK_S, expires_at=now + CERT_YEARS * YEAR_S,
            )  # fmt: skip
            state.trust.add(certificate, now)
            # spent before anything is sent: a crash cannot make it reusable by another key
            _write(folder, state)
    grants = state.keyring.grants_for(identity, device_pk, invite.scopes, random_bytes)
    revocations = state.trust.revocations
    enrolment = Enrolment(
        state.household, certificate.to_wire(),
        tuple(state.trust.certificate_of(d).to_wire() for d in _trust_order(state)),
        revocations.to_wire() if revocations else b"", tuple(grants),
    )  # fmt: skip
    return join_response(invite.secret, enrolment, device_pk, random_bytes(32))


def _enrolled_by(
    state: HouseholdState, identity: DeviceIdentity, spent: SpentInvite, now: int
) -> Certificate:
    """The certificate ``spent`` issued, to send again: only while it is the one held for the
    device and still good (not revoked, nor its issuer)."""
    device = device_id_of(spent.device_pk)
    if state.trust.is_revoked(device):
        raise PairingError(f"device {device} is revoked: it cannot join again")
    try:
        held = state.trust.verify(state.trust.certificate_of(device), now)
    except CertificateError as exc:
        raise PairingError(f"device {device} cannot join again: {exc}") from None
    issued = (bytes(identity.verify_key), spent.invite.role, tuple(spent.invite.scopes))
    if (held.issuer_pk, held.role, tuple(held.scopes)) != issued:
        raise PairingError(f"device {device} holds another certificate now: make a new invite")
    return held


def adopt(folder: Path, identity: DeviceIdentity, enrolment: Enrolment, now: int) -> HouseholdState:
    """Install what the inviter sent (the new robot's side) and save it."""
    trust = TrustStore.for_household(enrolment.household)
    for wire in enrolment.trusted:
        trust.add(Certificate.from_wire(wire), now)
    if enrolment.revocations:
        trust.accept_revocations(Revocations.from_wire(enrolment.revocations), now)
    certificate = Certificate.from_wire(enrolment.certificate)
    if certificate.device_id != identity.device_id:
        raise PairingError("the inviter certified another device")
    trust.add(certificate, now)
    keyring = Keyring()
    for grant in enrolment.grants:
        keyring.accept_grant(grant, identity, trust=trust, now=now)
    state = HouseholdState(enrolment.household, certificate, trust, keyring)
    save(folder, state, now)
    return state


async def join(
    folder: Path, identity: DeviceIdentity, code: str, device_name: str, *, now: int,
    address: tuple[str, int] | None = None,
) -> HouseholdState:  # fmt: skip
    """Enrol this device with an invite code (``hearth join``)."""
    if load(folder, now) is not None:
        raise ValidationError(f"{folder} already belongs to a household", field="path")
    invite = Invite.parse(code)
    host, port = address or (invite.host, invite.port)
    uri = f"ws://[{host}]:{port}{JOIN_PATH}" if ":" in host else f"ws://{host}:{port}{JOIN_PATH}"
    try:
        async with connect(uri, proxy=None, open_timeout=10, max_size=1024 * 1024) as websocket:
            try:
                async with asyncio.timeout(JOIN_ANSWER_TIMEOUT_S):
                    await websocket.send(join_request(invite.secret, identity, device_name))
                    answer = await websocket.recv()
            except TimeoutError:
                raise PairingError(
                    f"the inviter at {host}:{port} did not answer within "
                    f"{JOIN_ANSWER_TIMEOUT_S:g} s"
                ) from None
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
        raise PairingError(f"could not reach the inviter at {host}:{port}: {exc}") from None
    if isinstance(answer, str) or not answer.startswith(b"\x93"):
        raise PairingError(f"the inviter refused: {answer!r:.200}")
    return adopt(folder, identity, open_join_response(answer, invite.secret, identity), now)


# ---------------------------------------------------------------------- a join that failed


@contextlib.contextmanager
def pending_join(folder: Path, code: str) -> Iterator[None]:
    """Around a join into ``folder`` (``hearth join``: open the peer there, then `join`).

    A join that fails leaves no half-made peer, which `hearth run` or a retry could take for
    a robot: what it made in the folder is removed (the folder too, if it made it), nothing
    else, except the device key it made and sent, kept in ``join.pending`` (mode 0600, as
    every key file) with a digest of the code's secret.  The next join into the folder with
    the same code sends that key again: the inviter may have certified it and lost its
    answer, and answers that key again, never another (`enrol`).  A join with another code
    drops it (an invite certifies only a key the household does not know), and one that
    succeeds leaves no pending file.  A join whose enrolment was saved (`adopt`) has
    succeeded: what fails after it (printing so, closing the store) undoes nothing.

    Found in review: an empty folder counted as made by the join, and a join refused in it
    removed the user's folder; in a folder of another kind a failed join left its key, store
    and lock file beside the user's files.
    """
    tag = _pending_tag(Invite.parse(code))
    pending = folder / PENDING_JOIN_FILE
    existed = folder.exists()
    before = {entry.name for entry in folder.iterdir()} if existed else set()
    if PENDING_JOIN_FILE in before and KEY_FILE not in before:
        seed = _pending_seed(pending, tag)
        if seed is not None:
            DeviceIdentity.load_or_create(folder, seed)  # the join's own, as it was
        pending.unlink()
        before.discard(PENDING_JOIN_FILE)
    try:
        yield
    except BaseException:
        # undoing an adopted join wiped a robot the inviter had certified, its code spent on
        # it, and kept join.pending: every retry was refused (found in review)
        if CREDENTIALS_FILE in before or not (folder / CREDENTIALS_FILE).exists():
            _undo(folder, tag, before=before if existed else None)
            raise
        pending.unlink(missing_ok=True)
        raise
    pending.unlink(missing_ok=True)  # left by a crash between putting the key back and here


def _pending_tag(invite: Invite) -> bytes:
    """Which invite a pending key was sent with: its digest, so the file holds no code."""
    return hashlib.blake2b(invite.secret, digest_size=16, person=b"hearth-pending1").digest()


def _pending_seed(path: Path, tag: bytes) -> bytes | None:
    """The key kept in ``path`` if it was sent with the invite of ``tag``."""
    if path.stat().st_mode & 0o077:
        raise StoreError(f"{path} is readable by others; run: chmod 600 {path}")
    try:
        _, kept, seed = unpack_array(
            path.read_bytes(), what=PENDING_JOIN_FILE, length=3, max_bytes=1024, error=CryptoError
        )
    except CryptoError:
        seed = None
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise StoreError(f"{path} is not a pending join; remove it to join with a new key")
    return seed if kept == tag else None


def _undo(folder: Path, tag: bytes, *, before: set[str] | None) -> None:
    """Remove what a failed join made in ``folder``, which held ``before`` (None: the join
    made it), but keep the device key it made as pending for the invite of ``tag``."""
    if not folder.is_dir():
        return
    held = set() if before is None else before
    key = folder / KEY_FILE
    seed = key.read_bytes() if KEY_FILE not in held and key.is_file() else b""
    kept = len(seed) == 32
    if kept:  # written whole before anything goes: a crash never loses the key it sent
        partial = folder / f".{PENDING_JOIN_FILE}.{os.getpid()}.tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pack([1, tag, seed]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, folder / PENDING_JOIN_FILE)
    for entry in folder.iterdir():
        if entry.name in held or (kept and entry.name == PENDING_JOIN_FILE):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if before is None and not kept:
        with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile
            folder.rmdir()
