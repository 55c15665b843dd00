"""``hearth demo``: a household's memory, on one robot and then on two.

It writes Monday to Saturday of Alice's and Bob's life as a kitchen robot would see it (orders,
a correction, quiet confirmation, the mugs on shelf 2, Bob's late nights), closes the store,
opens it again from disk, and prints what the robot knows and why: the records, recall, and the
context the reasoning layer asks for before making Alice's coffee on a weekday and at the
weekend, with an explanation.

Then, on Sunday, a second robot joins the household with a one-time invite code, granted every
scope but ``health``, and syncs with the kitchen robot over websockets on this machine,
end-to-end encrypted; the two are cut apart, each learns something the other does not, and once
back in range both hold the same memory, except Bob's health record, which never leaves the
robot holding its key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hearthsync import enrolment
from hearthsync.context import MaintenanceReport, correct, feedback
from hearthsync.context.feedback import event_ids
from hearthsync.model.records import Condition, ContextSnapshot
from hearthsync.peer import Peer
from hearthsync.transport.service import SyncService

MONDAY = dt.datetime(2026, 3, 9, tzinfo=dt.UTC)
SUNDAY = 6  #: the day the hall robot joins
HOUSEHOLD = "Alice and Bob's home"
LOOPBACK = "127.0.0.1"
#: seconds the demo waits for the robots to link, sync or part on this machine before it says
#: what did not happen (they take milliseconds)
PATIENCE_S = 30.0
KITCHEN = ContextSnapshot(location="kitchen", time_of_day="morning")
WEEKDAY = Condition(days="weekday")


class StoryClock:
    """The demo's wall clock: the story decides what time it is."""

    def __init__(self) -> None:
        self.now = MONDAY

    def at(self, day: int, hhmm: str) -> int:
        hour, minute = map(int, hhmm.split(":"))
        self.now = MONDAY + dt.timedelta(days=day, hours=hour, minutes=minute)
        return self.ms()

    def ms(self) -> int:
        return int(self.now.timestamp() * 1000)

    def __call__(self) -> float:
        return self.now.timestamp()


async def write_the_week(peer: Peer, clock: StoryClock) -> MaintenanceReport:
    """The week in the order it happened: the story clock only moves forward, as a robot's does
    (a clock that goes back days is taken for a glitch when the store is opened again).
    Returns what the slow loop did in the robot's idle hour before Saturday's order."""
    await monday_morning(peer, clock)
    await bob_is_up_late(peer, clock)  # Monday night
    await alice_keeps_the_mug(peer, clock, day=1)
    await bob_makes_tea(peer, clock)  # Tuesday night
    for day in (2, 3, 4):
        await alice_keeps_the_mug(peer, clock, day=day)
    return await saturday_morning(peer, clock)


async def monday_morning(peer: Peer, clock: StoryClock) -> None:
    """The household, the mugs on shelf 2, Alice's weekday order and her correction."""
    clock.at(0, "07:00")
    await peer.add_user("alice", name="Alice", household_role="owner", languages=["en"])
    await peer.add_user("bob", name="Bob", languages=["en", "fr"])
    await peer.set_region("kitchen", "Kitchen")
    await peer.set_region("shelf-2", "Second shelf", parent="kitchen", tags=["good-shelf"])
    await peer.place("green-mug", "Green mug", region="shelf-2", owner="alice")
    await peer.place("blue-mug", "Blue mug", region="shelf-2", owner="bob")
    await peer.relate("alice", "uses", "green-mug", note="her mug since Monday")
    order = await peer.record_event(
        "alice", "COMMAND", "beverage", text="a latte with oat milk please", context=KITCHEN,
        ts=clock.at(0, "07:42"),
    )  # fmt: skip
    await peer.set_preference(
        "alice", "beverage/coffee", "oat latte", condition=WEEKDAY, evidence=[order.id]
    )
    await correct(
        peer, "alice", "beverage/mug", "green-mug", served="blue-mug",
        text="not the blue one, I want the green mug", context=KITCHEN, ts=clock.at(0, "07:44"),
    )  # fmt: skip
    await peer.set_preference(
        "alice", "social/quiet_until", "09:00", note="not to be talked to before 9"
    )


async def alice_keeps_the_mug(peer: Peer, clock: StoryClock, *, day: int) -> None:
    """Served as she asked and not corrected: an implicit confirmation of the green mug, recorded
    as feedback (re-writing the preference would make it a new statement of hers)."""
    await feedback(
        peer, "alice", "beverage/mug", "green-mug", "kept",
        text="oat latte in the green mug, no complaint", context=KITCHEN,
        ts=clock.at(day, "07:40"),
    )  # fmt: skip


async def bob_is_up_late(peer: Peer, clock: StoryClock) -> None:
    """Bob, the night owl: his late hours, a quiet robot, camomile after nine."""
    clock.at(0, "23:30")
    await peer.set_routine(
        "bob-late-nights",
        "Bob is up late",
        user="bob",
        after="23:00",
        before="02:00",
        constraints=["lights dim", "speak softly"],
    )
    await peer.set_calibration("bob", proactivity=0.2, verbosity=0.3)
    await peer.set_preference("bob", "beverage/tea", "camomile", condition=Condition(after="21:00"))


async def bob_makes_tea(peer: Peer, clock: StoryClock) -> None:
    await peer.record_event(
        "bob", "COMMAND", "beverage", text="camomile tea, quietly",
        context=ContextSnapshot(location="kitchen", time_of_day="night"),
        ts=clock.at(1, "23:50"),
    )  # fmt: skip


async def saturday_morning(peer: Peer, clock: StoryClock) -> MaintenanceReport:
    """The robot's idle hour folds the week's confirmations in; then a weekend order."""
    clock.at(5, "03:00")
    report = await peer.maintain(lookback="7d")
    weekend_order = await peer.record_event(
        "alice", "COMMAND", "beverage", text="a cortado today, it's Saturday", context=KITCHEN,
        ts=clock.at(5, "09:30"),
    )  # fmt: skip
    await peer.set_preference(
        "alice",
        "beverage/coffee",
        "cortado",
        condition=Condition(days="weekend"),
        evidence=[weekend_order.id],
    )
    return report


async def show(peer: Peer, console: Console) -> None:
    for user in peer.users():
        profile = peer.profile(user)
        title = f"{profile.name if profile else user} ({user})"
        table = Table(title=f"What the robot knows about {title}", title_justify="left")
        for column in ("preference", "when", "value", "source", "confidence", "evidence"):
            table.add_column(column)
        for pref in peer.preferences(user):
            table.add_row(
                pref.key,
                pref.condition.key() or "always",
                str(pref.value),
                pref.source,
                f"{pref.confidence:.2f}",
                f"{pref.evidence_count} ({len(event_ids(pref))} events)",
            )
        console.print(table)
        calibration = peer.calibration(user)
        console.print(
            f"  calibration: proactivity {calibration.proactivity:.1f}, "
            f"verbosity {calibration.verbosity:.1f}, "
            f"personal space {calibration.personal_space_m} m"
        )

    places = Table(title="Where things are", title_justify="left")
    for column in ("object", "region", "owner"):
        places.add_column(column)
    for placement in peer.placements():
        places.add_row(placement.label, placement.region or "?", placement.owner or "")
    console.print(places)
    for routine in peer.routines():
        console.print(
            f"  routine: {routine.label} ({routine.after}-{routine.before}): "
            + ", ".join(routine.constraints)
        )

    query = "which mug does she want"
    recall = Table(title=f"Alice's history, recalled for {query!r}", title_justify="left")
    for column in ("score", "when", "type", "said"):
        recall.add_column(column)
    for hit in await peer.recall("alice", query, k=3):
        when = dt.datetime.fromtimestamp(hit.event.ts / 1000, tz=dt.UTC).strftime("%a %d %b %H:%M")
        recall.add_row(f"{hit.score:.2f}", when, hit.event.type.value, hit.event.text)
    console.print(recall)

    await show_context(peer, console)

    status = await peer.status()
    docs = Table(
        title=f"Store {status.path / 'hearth.db'} ({status.file_bytes:,} bytes)",
        title_justify="left",
    )
    for column in ("document", "scope", "records", "snapshot B", "log entries"):
        docs.add_column(column)
    for doc in status.documents:
        docs.add_row(
            doc.doc_id, doc.scope, str(doc.records), str(doc.snapshot_bytes), str(doc.log_entries)
        )
    console.print(docs)


async def show_context(peer: Peer, console: Console) -> None:
    """What the reasoning layer asks before acting: get_context, then explain."""
    for label, moment in (("Wednesday 07:30", (2, "07:30")), ("Saturday 09:00", (5, "09:00"))):
        day, hhmm = moment
        hour, minute = map(int, hhmm.split(":"))
        when = MONDAY + dt.timedelta(days=day, hours=hour, minutes=minute)
        context = await peer.get_context(
            "alice", task="prepare_morning_beverage", location="kitchen", time=when,
            query="which mug",
        )  # fmt: skip
        console.print(
            Panel(
                Text(context.to_prompt(260)),  # as the model reads it: "[beverage]" is no markup
                title=f"get_context(alice, task=prepare_morning_beverage), {label}",
                title_align="left",
            )
        )
    sentence = await peer.explain("alice", "beverage/mug", time=MONDAY + dt.timedelta(days=5))
    console.print(f"explain(alice, beverage/mug): {sentence}\n", markup=False)


async def run_demo(folder: Path | None = None, console: Console | None = None) -> None:
    console = console or Console()
    with tempfile.TemporaryDirectory(prefix="hearth-demo-") as tmp:
        home = folder or Path(tmp)
        path = home / "kitchen-robot"
        clock = StoryClock()
        console.print(
            Panel.fit(
                "hearthsync demo: one robot's memory, then a household of two\n"
                f"writing Monday-Saturday of a household into {path}",
            )
        )
        async with Peer.open(path, device="kitchen-robot", wall=clock) as peer:
            enrolment.create(path, peer.identity, HOUSEHOLD, "kitchen-robot", now=int(clock()))
        async with Peer.open(path, wall=clock) as peer:
            report = await write_the_week(peer, clock)
            for change in report.changes:
                console.print(f"the slow loop, Saturday 03:00 (maintain): {change.line()}")
            console.print(f"wrote the week on device {peer.device} ({peer.device_id}); closing")
        async with Peer.open(path, wall=clock) as peer:
            console.print("reopened from disk; this is what it remembers:\n")
            await show(peer, console)
        await sunday(path, home / "hall-robot", clock, console)


# ------------------------------------------------------------------ Sunday: a household of two


async def sunday(kitchen_path: Path, hall_path: Path, clock: StoryClock, console: Console) -> None:
    """A second robot joins, syncs, is cut off, and catches up: one memory on two robots."""
    console.print(
        Panel.fit(
            "Sunday: a second robot joins the household\n"
            f"{hall_path}, linked to the kitchen robot over websockets on {LOOPBACK}, "
            "end-to-end encrypted"
        )
    )
    clock.at(SUNDAY, "08:00")
    async with Peer.open(kitchen_path, wall=clock) as kitchen:
        await kitchen.set_health(
            "bob", "medication/evening", "blood pressure tablet at 21:00",
            note="for the medication task only",
        )  # fmt: skip
        state = kitchen.household
        assert state is not None

        async def enrol(request: bytes) -> bytes:  # as `hearth run` answers a join
            return await asyncio.to_thread(
                enrolment.enrol, kitchen_path, kitchen.identity, request, now=int(clock())
            )

        credentials = state.credentials(kitchen.identity)
        async with SyncService(
            kitchen, credentials, listen=(LOOPBACK, 0), join=enrol, clock=clock
        ) as kitchen_sync:
            invite = enrolment.add_invite(
                kitchen_path, state, LOOPBACK, kitchen_sync.port,
                scopes=("core", "history", "spatial"), ttl_s=600, now=int(clock()),
            )  # fmt: skip
            console.print(
                f"kitchen-robot invites a robot for core, history and spatial, not health: "
                f"code {invite.code[:12]}... (works once, for 10 minutes)",
                markup=False,
            )
            async with Peer.open(hall_path, device="hall-robot", wall=clock) as hall:
                joined = await enrolment.join(
                    hall_path, hall.identity, invite.code, "hall-robot", now=int(clock())
                )
            console.print(
                f"hall-robot ({hall.device_id}) joined {joined.household.name!r} with it",
                markup=False,
            )
            async with Peer.open(hall_path, wall=clock) as hall:
                await _together(kitchen, kitchen_sync, hall, clock, console)


async def _together(
    kitchen: Peer, kitchen_sync: SyncService, hall: Peer, clock: StoryClock, console: Console
) -> None:
    assert hall.household is not None
    credentials = hall.household.credentials(hall.identity)
    async with SyncService(
        hall, credentials, listen=None, peers=((LOOPBACK, kitchen_sync.port),), clock=clock
    ) as hall_sync:
        started = time.perf_counter()
        await _until((kitchen, hall), lambda: _same(kitchen, hall), "hall-robot to sync")
        console.print(
            f"synced in {(time.perf_counter() - started) * 1000:.0f} ms: hall-robot holds "
            f"{len(hall.document_ids())} documents, all of kitchen-robot's but Bob's health "
            f"record (it was granted no health key); Alice's mug there: "
            f"{_value(hall, 'alice', 'beverage/mug')}",
            markup=False,
        )

        hall_sync.pause()  # the hall robot goes out of range
        await _apart(kitchen_sync, hall_sync)
        console.print("\nhall-robot goes out of range; each robot learns something alone:")
        weekend = Condition(days="weekend")
        clock.at(SUNDAY, "09:30")
        await correct(
            kitchen, "alice", "beverage/coffee", "oat cortado", served="cortado",
            condition=weekend, text="a cortado, but with oat milk from now on",
            context=KITCHEN, ts=clock.ms(),
        )  # fmt: skip
        console.print("  kitchen-robot, 09:30: Alice wants her weekend cortado with oat milk now")
        clock.at(SUNDAY, "09:35")
        await hall.set_region("hall-table", "Hall table")
        await hall.place("blue-mug", "Blue mug", region="hall-table", owner="bob")
        console.print("  hall-robot, 09:35: Bob left his blue mug on the hall table")

        hall_sync.resume()  # back in range
        started = time.perf_counter()
        await _until((kitchen, hall), lambda: _same(kitchen, hall), "the robots to catch up")
        coffee = _value(hall, "alice", "beverage/coffee", weekend)
        console.print(
            f"back in range: caught up in {(time.perf_counter() - started) * 1000:.0f} ms; "
            f"hall-robot now serves Alice a weekend {coffee}, kitchen-robot looks for the blue "
            f"mug on the {_where(kitchen, 'blue-mug')}\n",
            markup=False,
        )
        await _health_stays_home(kitchen, hall, console)


async def _health_stays_home(kitchen: Peer, hall: Peer, console: Console) -> None:
    table = Table(
        title="Bob's evening medication, asked by each robot's medication task",
        title_justify="left",
    )
    for column in ("robot", "health documents", "get_context(bob, task=medication_reminder)"):
        table.add_column(column)
    for robot in (kitchen, hall):
        context = await robot.get_context("bob", task="medication_reminder", time=robot.now())
        health = [h for h in context.to_prompt(400).splitlines() if "tablet" in h]
        held = [d for d in robot.document_ids() if d.endswith("/health")]
        table.add_row(
            robot.device, ", ".join(held) or "none (no health key)",
            health[0].strip() if health else "nothing of Bob's health",
        )  # fmt: skip
    console.print(table)


def _same(kitchen: Peer, hall: Peer) -> bool:
    """Whether the hall robot holds every document the kitchen robot may share with it, each
    with the same content and state (the kitchen's health document is not for it)."""
    shared = [d for d in kitchen.document_ids() if not d.endswith("/health")]
    return set(hall.document_ids()) == set(shared) and all(
        hall.docs.digest(d) == kitchen.docs.digest(d) for d in shared
    )


async def _until(robots: tuple[Peer, ...], condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``, looked at again after each commit of any of ``robots`` (the
    last to land may be either's)."""
    changed = asyncio.Event()
    offs = [robot.on_durable(lambda _: changed.set()) for robot in robots]
    try:
        async with asyncio.timeout(PATIENCE_S):
            while not condition():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise RuntimeError(f"the demo waited {PATIENCE_S:g} s for {what}") from None
    finally:
        for off in offs:
            off()


async def _apart(kitchen_sync: SyncService, hall_sync: SyncService) -> None:
    """Wait until neither robot has a link left."""
    async with asyncio.timeout(PATIENCE_S):
        await kitchen_sync.wait_until(lambda: not kitchen_sync.links)
        await hall_sync.wait_until(lambda: not hall_sync.links)


def _value(peer: Peer, user: str, key: str, condition: Condition | None = None) -> str:
    found = peer.preference(user, key, condition)
    return str(found.value) if found is not None else "nothing"


def _where(peer: Peer, thing: str) -> str:
    placement = peer.placement(thing)
    region = placement.region if placement is not None else None
    regions = {r.id: r.label for r in peer.regions()}
    return regions.get(region or "", region or "nowhere").lower()
