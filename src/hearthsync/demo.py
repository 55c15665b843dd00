"""``hearth demo``: one robot's memory of a few days in a household.

It writes Monday to Saturday of Alice's and Bob's life as a kitchen robot would see it (orders,
a correction, quiet confirmation, the mugs on shelf 2, Bob's late nights), closes the store,
opens it again from disk, and prints what the robot knows and why: the records, recall, and the
context the reasoning layer asks for before making Alice's coffee on a weekday and at the
weekend, with an explanation.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hearthsync.context import MaintenanceReport, correct, feedback
from hearthsync.context.feedback import event_ids
from hearthsync.model.records import Condition, ContextSnapshot
from hearthsync.peer import Peer

MONDAY = dt.datetime(2026, 3, 9, tzinfo=dt.UTC)
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
        path = folder or Path(tmp) / "kitchen-robot"
        clock = StoryClock()
        console.print(
            Panel.fit(
                "hearthsync demo: one robot's memory\n"
                f"writing Monday-Saturday of a household into {path}",
            )
        )
        async with Peer.open(path, device="kitchen-robot", wall=clock) as peer:
            report = await write_the_week(peer, clock)
            for change in report.changes:
                console.print(f"the slow loop, Saturday 03:00 (maintain): {change.line()}")
            console.print(f"wrote the week on device {peer.device} ({peer.device_id}); closing")
        async with Peer.open(path, wall=clock) as peer:
            console.print("reopened from disk; this is what it remembers:\n")
            await show(peer, console)
