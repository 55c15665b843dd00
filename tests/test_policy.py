"""The household's task policy: stored signed, synced, obeyed by get_context, set by admins only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hearthsync import Peer, enrolment
from hearthsync.context import DEFAULT_POLICY, HouseholdPolicy, TaskGrant
from hearthsync.crdt.handles import SEP
from hearthsync.crypto.pairing import PendingInvite
from hearthsync.crypto.statement import POLICY, Statement
from hearthsync.errors import StoreError, ValidationError
from hearthsync.ids import DocId
from hearthsync.settings import HELD, TASKS
from hearthsync.transport.service import SyncService
from tests.conftest import FakeWall
from tests.test_forgetting import enrol_household
from tests.test_peer import send_all

TIMEOUT = 20.0


def with_grant(task: str, *scopes: str) -> HouseholdPolicy:
    """The default policy, with ``task`` granted ``scopes``."""
    tasks = DEFAULT_POLICY.tasks.model_copy(
        update={"tasks": DEFAULT_POLICY.tasks.tasks | {task: TaskGrant(scopes=scopes)}}
    )
    return DEFAULT_POLICY.model_copy(update={"tasks": tasks})


async def test_a_policy_is_kept_and_obeyed(tmp_path: Path) -> None:
    path = tmp_path / "robot"
    async with Peer.open(path, device="kitchen", wall=FakeWall()) as peer:
        await peer.add_user("chen", name="Mrs Chen")
        await peer.set_health("chen", "medication/evening", "two pills after dinner")
        assert peer.policy() == DEFAULT_POLICY
        before = await peer.get_context("chen", task="night_check")  # unknown task: default
        assert "health" in before.withheld
        assert before.health == ()
        custom = with_grant("night_check", "core", "health")
        await peer.set_policy(custom)
        assert peer.policy() == custom
        after = await peer.get_context("chen", task="night_check")
        assert "health" not in after.withheld
        assert [fact.record.value for fact in after.health] == ["two pills after dinner"]
    async with Peer.open(path, wall=FakeWall()) as again:
        assert again.policy() == custom


async def test_the_module_functions_obey_the_household_policy_too(tmp_path: Path) -> None:
    """``hearthsync.context.get_context(peer, ...)`` and ``explain(peer, ...)``, which the
    reference documents, used the built-in policy unless told: a task the household had
    taken history from was given it, and the family event with it (found by a new user)."""
    from hearthsync.context import explain, get_context

    async with Peer.open(tmp_path / "robot", device="kitchen", wall=FakeWall()) as peer:
        await peer.add_user("alice", name="Alice")
        await peer.record_event("alice", "OBSERVATION", "family", text="grandma visits Sunday")
        await peer.set_preference("alice", "beverage/coffee", "oat latte")
        assert "history" in (await get_context(peer, "alice", task="companion_chat")).granted
        await peer.set_policy(with_grant("companion_chat", "core"))
        for context in (
            await peer.get_context("alice", task="companion_chat"),
            await get_context(peer, "alice", task="companion_chat"),
        ):
            assert context.granted == ("core",)
            assert context.events == ()
        told = await get_context(peer, "alice", task="companion_chat", policy=DEFAULT_POLICY)
        assert "history" in told.granted  # a policy given is the one used
        said = await explain(peer, "alice", "beverage/coffee")
        assert said == await peer.explain("alice", "beverage/coffee")


async def test_present_given_as_one_string_is_refused_not_read_letter_by_letter(
    tmp_path: Path,
) -> None:
    async with Peer.open(tmp_path / "robot", device="kitchen", wall=FakeWall()) as peer:
        await peer.add_user("alice", name="Alice")
        with pytest.raises(ValidationError, match="present must be a list") as refused:
            await peer.get_context("alice", task="beverage", present="bob")  # type: ignore[arg-type]
        assert refused.value.field == "present"


async def until(peers: list[Peer], condition: Callable[[], bool]) -> None:
    changed = asyncio.Event()
    offs = [p.on_durable(lambda _: changed.set()) for p in peers]
    try:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                changed.clear()
                await changed.wait()
    finally:
        for off in offs:
            off()


@pytest.fixture
async def household(tmp_path: Path) -> AsyncIterator[list[Peer]]:
    names = ["owner", "hall"]
    enrol_household(tmp_path, names)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Peer.open(tmp_path / n, device=n)) for n in names]


async def test_only_admins_set_it_and_every_robot_obeys_theirs(household: list[Peer]) -> None:
    owner, hall = household
    assert hall.household is not None
    custom = with_grant("night_check", "core", "health")
    with pytest.raises(ValidationError, match="owner or admin"):
        await hall.set_policy(custom)
    # a member writing a policy statement into the document anyway is not obeyed
    forged = Statement.issue(
        hall.identity, POLICY, TASKS, hall._stamp()[0], body=custom.to_json(),
        certificate=hall.household.certificate.to_wire(),
    )  # fmt: skip
    await hall._settings.write(forged)
    assert hall.policy() == DEFAULT_POLICY

    await owner.set_policy(custom)
    assert owner.household is not None
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(
            SyncService(owner, owner.household.credentials(owner.identity))
        )
        await stack.enter_async_context(
            SyncService(
                hall, hall.household.credentials(hall.identity), listen=None,
                peers=[("127.0.0.1", hub.port)],
            )
        )  # fmt: skip
        await until([hall, owner], lambda: hall.policy() == custom)
        assert owner.policy() == custom  # the member's forged statement is ignored there too
        statement = hall._settings.policy_statement()
        assert statement is not None
        assert statement.device == owner.device_id


class AdminInvite(PendingInvite):
    """An invite that enrols an admin, whatever role it is made with."""

    def __init__(self, secret: bytes, scopes: tuple[str, ...], _role: str, expires: int) -> None:
        super().__init__(secret, scopes, "admin", expires)


async def test_a_policy_set_after_another_wins_whatever_the_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN invariant 3 for signed statements, whose stamps a merged update hides (hex):
    an admin robot a minute slow that sets the policy after receiving the owner's stamps its
    statement after the one it replaces, and both robots obey it."""
    # an admin robot (the command line does not invite one yet)
    monkeypatch.setattr(enrolment, "PendingInvite", AdminInvite)
    enrol_household(tmp_path, ["owner", "hall"])
    now_ms = int(time.time() * 1000)
    owner_wall, hall_wall = FakeWall(now_ms), FakeWall(now_ms - 60_000)
    async with (
        Peer.open(tmp_path / "owner", device="owner", wall=owner_wall) as owner,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        assert hall.household is not None
        assert hall.household.is_admin
        first, second = with_grant("night_check", "core"), with_grant("tidy", "spatial")
        await owner.set_policy(first)
        await send_all(owner, hall)
        assert hall.policy() == first
        owner_wall.advance(1_000)
        hall_wall.advance(1_000)
        await hall.set_policy(second)
        assert hall.policy() == second
        await send_all(hall, owner)
        assert owner.policy() == second
        owner_wall.advance(2 * 86_400_000)  # the owner's clock glitches two days ahead
        third = with_grant("night_check", "health")
        await owner.set_policy(third)
        await send_all(owner, hall)
        # stamped more than a day ahead of the hall robot's clock, it is not obeyed there (or
        # a glitch to 2056 would set a policy no later one could ever outrank), and the hall
        # robot can still set one
        assert hall.policy() == second
        fourth = with_grant("tidy", "core")
        await hall.set_policy(fourth)
        assert hall.policy() == fourth


@asynccontextmanager
async def owner_and_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, owner_ahead_ms: int = 0
) -> AsyncIterator[tuple[Peer, FakeWall, Peer, FakeWall]]:
    """An owner robot (``owner_ahead_ms`` fast) and an admin robot ("hall"), each with its
    own clock: (owner, its wall, hall, its wall)."""
    monkeypatch.setattr(enrolment, "PendingInvite", AdminInvite)
    enrol_household(tmp_path, ["owner", "hall"])
    now_ms = int(time.time() * 1000)
    owner_wall, hall_wall = FakeWall(now_ms + owner_ahead_ms), FakeWall(now_ms)
    async with (
        Peer.open(tmp_path / "owner", device="owner", wall=owner_wall) as owner,
        Peer.open(tmp_path / "hall", device="hall", wall=hall_wall) as hall,
    ):
        yield owner, owner_wall, hall, hall_wall


async def test_a_policy_stamped_days_ahead_is_obeyed_once_the_clock_gets_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: refused while more than a day ahead, it stayed refused (the verdict
    was kept until the household changed), though trust.md promises it is obeyed then."""
    custom = with_grant("night_check", "core", "health")
    async with owner_and_admin(tmp_path, monkeypatch, owner_ahead_ms=2 * 86_400_000) as (
        owner, _, hall, hall_wall,
    ):  # fmt: skip
        await owner.set_policy(custom)
        await send_all(owner, hall)
        assert hall.policy() == DEFAULT_POLICY
        hall_wall.advance(2 * 86_400_000)
        assert hall.policy() == custom


async def test_an_admin_whose_certificate_expired_sets_the_policy_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the verdict on its statement was kept after its certificate expired
    (trust.md: expiry retires a robot nobody revoked), and the owner, holding that expired
    certificate, could not even open its credentials again."""
    monkeypatch.setattr(enrolment, "CERT_YEARS", 1)
    monkeypatch.setattr(enrolment, "YEAR_S", 3 * 86_400)  # the hall's certificate: 3 days
    custom = with_grant("night_check", "core", "health")
    async with owner_and_admin(tmp_path, monkeypatch) as (owner, owner_wall, hall, _):
        await hall.set_policy(custom)
        await send_all(hall, owner)
        assert owner.policy() == custom
        owner_wall.advance(5 * 86_400_000)  # the hall's certificate has expired
        assert owner.policy() == DEFAULT_POLICY
    async with Peer.open(tmp_path / "owner", wall=owner_wall) as again:  # it opens
        assert again.policy() == DEFAULT_POLICY
        assert again.household is not None


async def test_a_member_cannot_roll_the_policy_back_to_an_older_statement(
    tmp_path: Path,
) -> None:
    """Found in review: a member robot, which may edit the household document, wrote the
    owner's older statement (that had given the general assistant health records) back into
    the owner's slot, or removed the owner's statement: every robot obeyed the older policy,
    or the default, though the owner had signed a newer one."""
    enrol_household(tmp_path, ["owner", "hall"])
    now_ms = int(time.time() * 1000)
    owner_wall = FakeWall(now_ms)
    async with (
        Peer.open(tmp_path / "owner", device="owner", wall=owner_wall) as owner,
        Peer.open(tmp_path / "hall", device="hall", wall=FakeWall(now_ms)) as hall,
    ):
        await owner.add_user("chen", name="Mrs Chen")
        await owner.set_health("chen", "medication/evening", "two pills after dinner")
        loose = with_grant("general_assistant", "core", "health", "history")
        await owner.set_policy(loose)
        await send_all(owner, hall)
        slot = f"{TASKS}{SEP}{owner.device_id}"
        older = hall._household().settings[slot]  # kept by the member
        strict = with_grant("general_assistant", "core")
        await owner.set_policy(strict)
        await send_all(owner, hall)
        assert hall.policy() == strict

        def put(_: object) -> None:
            hall._household().settings[slot] = older

        def remove(_: object) -> None:
            hall._household().settings.pop(slot)

        for tamper in (put, remove):
            await hall._docs.write(DocId("household"), tamper)
            await send_all(hall, owner)
            assert owner.policy() == strict
            context = await owner.get_context("chen", task="general_assistant")
            assert context.health == ()
            await owner.flush()  # the owner wrote its statement back: every robot obeys it
            await send_all(owner, hall)
            assert hall._household().settings[slot] != older
            assert hall.policy() == strict
    async with Peer.open(tmp_path / "owner", wall=owner_wall) as again:
        assert again.policy() == strict


async def test_a_rollback_merged_before_any_read_is_undone_even_after_a_crash(
    tmp_path: Path,
) -> None:
    """Found in review: the newest statement a robot held against rollback lived in memory,
    and was taken only when something read the policy.  The hall robot merged the owner's
    strict policy, then a member's rollback to the older loose one, reading neither, and
    crashed: restarted, it obeyed the loose policy and gave the general assistant Mrs Chen's
    health records.  A statement is held as it is merged, and kept with the robot's store."""
    strict = with_grant("general_assistant", "core")
    async with _loose_then_strict(tmp_path, strict) as (owner, den, hall, slot, older):
        await send_all(owner, hall)  # the strict statement: nothing reads it
        await send_all(den, hall)
        await send_all(hall, den)
        await den._docs.write(DocId("household"), _put(den, slot, older))  # the rollback
        await send_all(den, hall)
        await hall.crash()
        async with Peer.open(tmp_path / "hall", device="hall") as hall:
            assert hall.policy() == strict
            context = await hall.get_context("chen", task="general_assistant")
            assert context.health == ()
            await hall.flush()  # and written back, for the others
            assert hall._household().settings[slot] != older
            await send_all(hall, den)
            assert den.policy() == strict


async def test_a_statement_on_another_subject_is_not_the_task_policy(
    household: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: the subject of a statement in a task policy slot was not checked, so
    a policy statement the owner signed about anything else (a room's rules, later) could be
    filed there and obeyed; and of the statements refused in one slot, only the first was
    ever reported."""
    owner, hall = household
    assert owner.household is not None
    slot = f"{TASKS}{SEP}{owner.device_id}"
    loose = with_grant("general_assistant", "core", "health", "history")

    def statement(subject: str, body: str) -> str:
        assert owner.household is not None
        return Statement.issue(
            owner.identity, POLICY, subject, owner._stamp()[0], body=body,
            certificate=owner.household.certificate.to_wire(),
        ).to_text()  # fmt: skip

    for text in (statement("rooms", loose.to_json()), statement(TASKS, "{")):
        await hall._docs.write(DocId("household"), _put(hall, slot, text))
        with caplog.at_level("WARNING", logger="hearthsync.settings"):
            caplog.clear()
            await send_all(hall, owner)  # reported as it is merged (`hold`), or when read
            assert owner.policy() == DEFAULT_POLICY
        assert [r for r in caplog.records if "ignoring the task policy" in r.getMessage()]


def _put(peer: Peer, slot: str, text: str) -> Callable[[object], None]:
    """A change that writes ``text`` into ``slot`` of the household's settings."""

    def put(_: object) -> None:
        peer._household().settings[slot] = text

    return put


async def test_a_statement_held_is_kept_though_the_batch_keeping_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the statement held as it was merged was marked held in memory, and
    the batch that was to keep it failed (a full disk): the next batches did not write it,
    and after a crash the hall robot obeyed a member's rollback to the loose policy."""
    strict = with_grant("general_assistant", "core")
    async with _loose_then_strict(tmp_path, strict) as (owner, den, hall, slot, older):
        real_commit = hall._sqlite.commit
        failed: list[object] = []

        async def failing_once(batch: Any) -> None:
            if not failed and any(key.startswith(HELD) for key in batch.meta):
                failed.append(batch)
                raise StoreError("write on hearth.db failed: disk I/O error")
            await real_commit(batch)

        monkeypatch.setattr(hall._sqlite, "commit", failing_once)
        with pytest.raises(StoreError):  # the strict statement, held: its batch fails
            await send_all(owner, hall)
        await send_all(owner, hall)  # carried into the next batch, which lands
        await send_all(den, hall)
        await send_all(hall, den)
        await hall.flush()
        assert failed
        await den._docs.write(DocId("household"), _put(den, slot, older))  # the rollback
        await send_all(den, hall)
        await hall.commit()
        await hall.crash()
        async with Peer.open(tmp_path / "hall", device="hall") as hall:
            assert hall.policy() == strict


@asynccontextmanager
async def _loose_then_strict(
    tmp_path: Path, strict: HouseholdPolicy
) -> AsyncIterator[tuple[Peer, Peer, Peer, str, str]]:
    """The owner, a member (den) and a robot started anew (hall, the caller crashes or closes
    it) of a household whose owner set a loose policy, which den kept, then ``strict``: yields
    them, the owner's policy slot and the loose statement den kept."""
    enrol_household(tmp_path, ["owner", "hall", "den"])
    loose = with_grant("general_assistant", "core", "health", "history")
    async with (
        Peer.open(tmp_path / "owner", device="owner") as owner,
        Peer.open(tmp_path / "den", device="den") as den,
    ):
        await owner.add_user("chen", name="Mrs Chen")
        await owner.set_health("chen", "medication/evening", "two pills after dinner")
        await owner.set_policy(loose)
        await send_all(owner, den)
        slot = f"{TASKS}{SEP}{owner.device_id}"
        older = den._household().settings[slot]
        await owner.set_policy(strict)
        hall = await Peer.start(tmp_path / "hall", device="hall")
        yield owner, den, hall, slot, older
