"""A peer that writes until it is killed, printing one line per acknowledged write.

Run by ``tests/test_crash.py`` as a subprocess::

    python tests/crash_writer.py FOLDER SEED SYNCHRONOUS

It prints ``BOOT`` once imported (the parent may kill it while it opens the store), ``READY``
once the peer is open and the users exist, then, forever, one line per write whose awaitable
returned (the write is durable, DESIGN principle 2):

    ACK pref <user> <key> <value>       # preference values only grow, per (user, key)
    ACK event <user> <event id>
    ACK place <object> <n>              # the object now belongs on region shelf-<n>

Counters resume from what the store holds, so values keep growing across kills.  Several
writer tasks run at once so that the peer's group commit batches their writes.
"""

from __future__ import annotations

import asyncio
import random
import sys

from hearthsync.peer import Peer

USERS = ("alice", "bob")
KEYS = tuple(f"crash/k{i}" for i in range(5))
OBJECTS = tuple(f"mug-{i}" for i in range(4))
TASKS = 8
WORDS = ("kettle", "oat", "latte", "blanket", "jazz", "window", "lamp", "towel", "keys", "tea")


def ack(line: str) -> None:
    sys.stdout.write(f"ACK {line}\n")
    sys.stdout.flush()


def shelf_number(region: str | None) -> int:
    return int(region.removeprefix("shelf-")) if region else 0


async def writer(
    peer: Peer, rng: random.Random, prefs: dict[tuple[str, str], int], places: dict[str, int]
) -> None:
    while True:
        roll = rng.random()
        user = rng.choice(USERS)
        if roll < 0.45:
            key = rng.choice(KEYS)
            # Take the value and call the peer with no await in between: values then grow in
            # the order of the writes' hybrid logical timestamps.
            value = prefs[user, key] = prefs[user, key] + 1
            await peer.set_preference(user, key, value)
            ack(f"pref {user} {key} {value}")
        elif roll < 0.8:
            text = " ".join(rng.choices(WORDS, k=8)) + f" {rng.getrandbits(40):x}"
            event = await peer.record_event(user, "OBSERVATION", "crash", text=text)
            ack(f"event {user} {event.id}")
        elif roll < 0.995:
            obj = rng.choice(OBJECTS)
            n = places[obj] = places[obj] + 1
            await peer.place(obj, "a mug", region=f"shelf-{n}")
            ack(f"place {obj} {n}")
        else:
            await peer.compact()


async def main(folder: str, seed: int, synchronous: str) -> None:
    print("BOOT", flush=True)
    async with Peer.open(folder, device="crash", synchronous=synchronous) as peer:  # type: ignore[arg-type]
        for user in USERS:
            if user not in peer.users():
                await peer.add_user(user, name=user.title())
        prefs: dict[tuple[str, str], int] = {}
        for user in USERS:
            for key in KEYS:
                found = peer.preference(user, key)
                prefs[user, key] = int(found.value) if found else 0
        places: dict[str, int] = {}
        for obj in OBJECTS:
            found_place = peer.placement(obj)
            places[obj] = shelf_number(found_place.region) if found_place else 0
        print("READY", flush=True)
        rngs = [random.Random(f"{seed}-{i}") for i in range(TASKS)]
        await asyncio.gather(*(writer(peer, rng, prefs, places) for rng in rngs))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
