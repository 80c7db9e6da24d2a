"""Progress in docker's JSON message shape, and the outputs that carry it.

A message is what docker's `jsonmessage.JSONMessage` holds: `status`, `id`,
`progressDetail` {current, total}, `progress` (the bar), `aux`, or `error` +
`errorDetail`. Outputs never block: a slow client must not slow a transfer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferryd.units import human_size

_BAR_WIDTH = 50
UPDATE_INTERVAL = 0.1  # seconds between two "Downloading" updates of one layer


@dataclass(frozen=True, slots=True)
class Message:
    status: str = ""
    id: str | None = None
    current: int | None = None
    total: int | None = None
    aux: dict[str, Any] | None = None
    error: str | None = None
    # docker's progress.Update (layer states) carries an empty progressDetail;
    # progress.Message ("Pulling from …") does not.
    update: bool = True

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"errorDetail": {"message": self.error}, "error": self.error}
        if self.aux is not None:
            return {"aux": self.aux}
        out: dict[str, Any] = {"status": self.status}
        if self.current is not None:
            detail: dict[str, int] = {"current": self.current}
            if self.total:
                detail["total"] = self.total
            out["progressDetail"] = detail
            out["progress"] = progress_bar(self.current, self.total)
        elif self.id is not None and self.update:
            out["progressDetail"] = {}
        if self.id is not None:
            out["id"] = self.id
        return out


class ProgressOutput(Protocol):
    def write(self, message: Message) -> None: ...


class LayerOwners:
    """Several images of one pull reporting to one output: a layer they share is
    reported by the first of them that mentions it, and only by it.

    The platforms of an index are pulled at once, and a layer blob they share is one
    transfer they all wait on: without this, each would repeat its every line.
    """

    def __init__(self, output: ProgressOutput) -> None:
        self._output = output
        self._owners: dict[str, int] = {}

    def view(self, image: int) -> ProgressOutput:
        """The output for the `image`-th image of the pull."""
        return _OwnedView(self, image)

    def write(self, image: int, message: Message) -> None:
        if message.id is None or self._owners.setdefault(message.id, image) == image:
            self._output.write(message)


@dataclass(frozen=True, slots=True)
class _OwnedView:
    owners: LayerOwners
    image: int

    def write(self, message: Message) -> None:
        self.owners.write(self.image, message)


@dataclass
class Broadcast:
    """One transfer's progress, fanned out to every client waiting on it.

    A client that joins late first sees the transfer's latest message.
    """

    outputs: list[ProgressOutput] = field(default_factory=list)
    last: Message | None = None
    # The furthest progress (bytes) reported: a retry countdown or "Verifying Checksum"
    # that comes last does not undo it.
    moved: int = 0
    _last_update: float = 0.0

    def attach(self, output: ProgressOutput) -> None:
        self.outputs.append(output)
        if self.last is not None:
            output.write(self.last)

    def detach(self, output: ProgressOutput) -> None:
        self.outputs.remove(output)

    def write(self, message: Message) -> None:
        self._remember(message)
        for output in list(self.outputs):
            output.write(message)

    def _remember(self, message: Message) -> None:
        self.last = message
        if message.current is not None:
            self.moved = max(self.moved, message.current)

    def update(self, message: Message) -> None:
        """A progress update: sent at most every 100 ms, unless it is the last one."""
        now = time.monotonic()
        done = message.total is not None and message.current == message.total
        if done or now - self._last_update >= UPDATE_INTERVAL:
            self._last_update = now
            self.write(message)
        else:
            self._remember(message)


def progress_bar(current: int, total: int | None) -> str:
    """`[=====>      ]  1.049MB/3.624MB`, as docker's JSONProgress draws it: one `=` per
    2 %, the arrow always, the size right-aligned in 8 columns; the total only while the
    current size does not pass it."""
    size = f"{human_size(current):>8}"
    if not total:
        return size
    filled = min(_BAR_WIDTH, math.floor(_BAR_WIDTH * current / total))
    bar = "=" * filled + ">" + " " * (_BAR_WIDTH - filled)
    numbers = size if current > total else f"{size}/{human_size(total)}"
    return f"[{bar}] {numbers}"
