"""A robot in another process: advertise, print ``ready``, then run until killed.

Usage: ``python advertise_child.py SERVICE_TYPE DEVICE_ID PORT TAG``.  The test SIGKILLs it,
so it never sends a goodbye: that is the case of a robot losing power.
"""

from __future__ import annotations

import asyncio
import sys

from hearthsync.discovery import Discovery


async def main(service_type: str, device_id: str, port: str, tag: str) -> None:
    async with Discovery(
        device_id, int(port), tag, service_type=service_type, interfaces=["127.0.0.1"]
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
