"""How late the event loop runs: the daemon's one loop must only move bytes, and a
callback that hogs it delays every client and transfer. A task asks to wake every
`INTERVAL` seconds and measures by how much it wakes late."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio

INTERVAL = 0.05  # seconds between two looks: fine enough to see a 20 ms stall


@dataclass
class LoopLag:
    """The latest lag and the largest seen since the daemon started, in seconds."""

    latest: float = 0.0
    largest: float = 0.0

    async def watch(self) -> None:
        """Measure until cancelled (run it in the daemon's task group)."""
        while True:
            asked = time.monotonic()
            await anyio.sleep(INTERVAL)
            self.latest = max(0.0, time.monotonic() - asked - INTERVAL)
            self.largest = max(self.largest, self.latest)
