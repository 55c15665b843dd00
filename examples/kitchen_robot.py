"""A kitchen robot that learns Alice's coffee and mug, then answers from memory after a restart.

Run: ``.venv/bin/python examples/kitchen_robot.py [FOLDER]`` (a temporary folder by default).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from hearthsync import Condition, ContextSnapshot, Peer

WEEKDAY, WEEKEND = Condition(days="weekday"), Condition(days="weekend")


async def learn(folder: Path) -> None:
    async with Peer.open(folder, device="kitchen") as robot:
        if "alice" not in robot.users():
            await robot.add_user("alice", name="Alice", household_role="owner")
        kitchen = ContextSnapshot(location="kitchen", time_of_day="morning")
        order = await robot.record_event(
            "alice", "COMMAND", "beverage", text="oat latte please", context=kitchen
        )
        await robot.set_preference(
            "alice", "beverage/coffee", "oat latte", condition=WEEKDAY, evidence=[order.id]
        )
        await robot.set_preference("alice", "beverage/coffee", "cortado", condition=WEEKEND)
        fix = await robot.record_event(
            "alice", "CORRECTION", "beverage", text="the green mug, not the blue one"
        )
        await robot.set_preference(
            "alice", "beverage/mug", "green-mug", source="correction", evidence=[fix.id]
        )
        await robot.place("green-mug", "Green mug", region="shelf-2", owner="alice")


async def remember(folder: Path) -> None:
    async with Peer.open(folder) as robot:
        weekday = robot.preference("alice", "beverage/coffee", WEEKDAY)
        mug = robot.preference("alice", "beverage/mug")
        where = robot.placement("green-mug")
        if weekday is None or mug is None or where is None:
            raise SystemExit("the robot forgot something it was told")
        print(f"weekdays: {weekday.value}; mug: {mug.value} (on {where.region})")
        for hit in await robot.recall("alice", "which mug", k=1):
            print(f"because she said: {hit.event.text!r}")


async def main(folder: Path) -> None:
    await learn(folder)
    await remember(folder)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp) / "kitchen"))
