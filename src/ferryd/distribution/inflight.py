"""Identical pulls asked for at once: one runs, the others follow it.

Eight clients pulling the same image at the same moment would each resolve the tag,
wait on the same layer transfers, then each register the image and write its rows: the
same work eight times, slower than the pulls one after another (where the later seven
find the image up to date). A pull asked for while an identical one runs (the same
reference, platforms, login and headers) follows it instead: its client sees the pull's
progress (the latest line of each layer first, then every line as it comes) and gets
its result. When the pull followed fails or is cancelled (its client went away), each
follower runs a pull of its own: a failure belongs to the request that met it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import structlog

from ferryd.distribution.jobs import Job
from ferryd.distribution.progress import Message, ProgressOutput

log = structlog.get_logger("ferryd.pull")

T = TypeVar("T")


@dataclass(eq=False)
class _Flight:
    """One pull running: the lines it wrote so far and the clients following it."""

    request_id: str | None
    # The latest line of each layer (by id), and each line without an id, in the order
    # they first came: what a client that follows late needs to draw the same screen.
    # Bounded by the pull's layers and status lines, not by its progress updates.
    lines: dict[object, Message] = field(default_factory=dict)
    followers: list[ProgressOutput] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    succeeded: bool = False

    def write(self, message: Message) -> None:
        self.lines[message.id if message.id is not None else object()] = message
        for output in list(self.followers):
            output.write(message)


@dataclass
class _Tee:
    """The leading pull's output: its own client's, and every follower's."""

    own: ProgressOutput
    flight: _Flight

    def write(self, message: Message) -> None:
        self.own.write(message)
        self.flight.write(message)


class InFlightPulls:
    """The pulls running now, by what they ask for."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    async def run(
        self,
        key: Hashable,
        job: Job,
        pull: Callable[[ProgressOutput], Awaitable[T]],
    ) -> T:
        """`pull(output)`'s result; or, when a pull with the same `key` is running, the
        result of that one, its progress shown on `job`'s output."""
        while (flight := self._flights.get(key)) is not None:
            log.info("pull.following", following_request=flight.request_id)
            job.phase = "following"
            flight.followers.append(job)
            try:
                for message in list(flight.lines.values()):
                    job.write(message)
                await flight.done.wait()
            finally:
                flight.followers.remove(job)
            if flight.succeeded:
                result: T = flight.result
                return result
        job.phase = "resolving"
        flight = self._flights[key] = _Flight(job.request_id)
        try:
            result = await pull(_Tee(job, flight))
            flight.result, flight.succeeded = result, True
            return result
        finally:
            del self._flights[key]
            flight.done.set()
