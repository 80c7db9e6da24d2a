"""Shared transfers and retries, for downloads and uploads alike.

A transfer (one blob fetched, one layer uploaded) runs as its own task in the daemon's
task group, watched by every request that wants it. Each watcher sees its progress;
it is cancelled only when the last watcher goes away. At most `slots` run at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import anyio
import structlog
from anyio.abc import TaskGroup

from ferryd.distribution.progress import Broadcast, Message, ProgressOutput
from ferryd.errors import FerrydError, InternalError, TransferCancelledError
from ferryd.metrics import Metrics

log = structlog.get_logger("ferryd.transfers")


class Moved(Protocol):
    """What a finished transfer reports of the bytes it moved."""

    @property
    def transferred(self) -> int:
        """Bytes that crossed the network (every attempt's)."""
        ...

    @property
    def resumed(self) -> int:
        """Bytes taken from a partial file kept by an earlier attempt instead."""
        ...


K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Moved)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TransferState:
    """What `ferryd ps` shows of one running transfer."""

    action: str  # download, upload
    name: str
    id: str  # the short ID progress messages use
    status: str  # the latest progress message: Waiting, Downloading, Retrying in 2 seconds…
    current: int | None
    total: int | None
    watchers: int
    started: float  # Unix time


@dataclass(eq=False)
class Transfer(Generic[R]):
    name: str
    progress_id: str
    started: float = field(default_factory=time.time)
    progress: Broadcast = field(default_factory=Broadcast)
    done: anyio.Event = field(default_factory=anyio.Event)
    watchers: int = 0
    requests: list[str] = field(default_factory=list)  # IDs of the API requests waiting
    result: R | None = None
    error: BaseException | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class TransferPool(Generic[K, R]):
    def __init__(
        self,
        task_group: TaskGroup,
        slots: int,
        action: str,
        *,
        slow_after: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._task_group = task_group
        self._slow_after = slow_after  # seconds without progress before a warning
        self._metrics = metrics  # each transfer's outcome and time, once it ends
        self._slots = anyio.Semaphore(slots)
        self._action = action  # "download" or "upload", for logs and messages
        self._transfers: dict[K, Transfer[R]] = {}

    @property
    def active(self) -> int:
        return len(self._transfers)

    def running(self) -> list[K]:
        """The keys of the transfers running."""
        return list(self._transfers)

    def states(self) -> list[TransferState]:
        states = []
        for transfer in self._transfers.values():
            last = transfer.progress.last
            states.append(
                TransferState(
                    action=self._action,
                    name=transfer.name,
                    id=transfer.progress_id,
                    status=last.status if last is not None else "Starting",
                    current=last.current if last is not None else None,
                    total=last.total if last is not None else None,
                    watchers=transfer.watchers,
                    started=transfer.started,
                )
            )
        return states

    async def join(
        self,
        key: K,
        progress: ProgressOutput,
        work: Callable[[Broadcast], Awaitable[R]],
        *,
        name: str,
        progress_id: str,
    ) -> R:
        """Watch the transfer for `key`, starting it with `work` if none runs."""
        transfer = self._transfers.get(key)
        while transfer is not None and transfer.scope.cancel_called:
            # Its last watcher went away and it is winding down (a worker thread may
            # still be writing): joining it would fail with "cancelled". Wait, then
            # start afresh.
            await transfer.done.wait()
            if transfer.result is not None:
                return transfer.result
            transfer = self._transfers.get(key)
        if transfer is None:
            transfer = Transfer(name, progress_id)
            self._transfers[key] = transfer
            self._task_group.start_soon(self._run, key, transfer, work)
        transfer.watchers += 1
        request = structlog.contextvars.get_contextvars().get("request_id")
        if request is not None:
            transfer.requests.append(request)
        transfer.progress.attach(progress)
        try:
            await transfer.done.wait()
        finally:
            transfer.progress.detach(progress)
            transfer.watchers -= 1
            if transfer.watchers == 0 and not transfer.done.is_set():
                transfer.scope.cancel()
        if transfer.error is not None:
            raise transfer.error
        assert transfer.result is not None
        return transfer.result

    def _watch_for_stall(
        self, transfer: Transfer[R], fields: Callable[[], dict[str, object]]
    ) -> Callable[[], None]:
        """One `transfer.slow` warning each `slow_after` seconds without progress, from
        a timer of the event loop; returns what stops it. (A task cost each transfer a
        task group, the task and its cancellation: ~40 us, ~1 ms a pull of 24 layers.)"""
        if self._slow_after is None:
            return lambda: None
        slow_after = self._slow_after
        loop = asyncio.get_running_loop()
        moved, since = transfer.progress.moved, time.monotonic()
        timer: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal moved, since, timer
            if transfer.progress.moved != moved:
                moved, since = transfer.progress.moved, time.monotonic()
            elif time.monotonic() - since >= slow_after:
                log.warning(
                    "transfer.slow",
                    **fields(),
                    bytes=moved,
                    seconds_without_progress=round(time.monotonic() - since, 1),
                )
                since = time.monotonic()
            timer = loop.call_later(slow_after / 4, check)

        def stop() -> None:
            if timer is not None:
                timer.cancel()

        timer = loop.call_later(slow_after / 4, check)
        return stop

    async def _run(
        self,
        key: K,
        transfer: Transfer[R],
        work: Callable[[Broadcast], Awaitable[R]],
    ) -> None:
        """The transfer's own task, in the daemon's task group: never lets an error out.

        Its log lines name every request waiting on it (`requests`), not the one that
        happened to start it.
        """
        structlog.contextvars.unbind_contextvars("request_id")
        started = time.monotonic()
        running: float | None = None  # since it has had its slot
        name = transfer.name

        def fields() -> dict[str, object]:
            return {"action": self._action, "name": name, "requests": list(transfer.requests)}

        def so_far() -> dict[str, object]:
            """How far a transfer that did not finish got, for its log line."""
            moved = transfer.progress.moved
            return {"bytes": moved, "seconds": round(time.monotonic() - started, 3)}

        try:
            with transfer.scope:
                if self._slots.value == 0:
                    transfer.progress.write(Message("Waiting", transfer.progress_id))
                async with self._slots:
                    running = time.monotonic()
                    log.info("transfer.start", **fields())
                    stop_watching = self._watch_for_stall(transfer, fields)
                    try:
                        result = transfer.result = await work(transfer.progress)
                    finally:
                        stop_watching()
                elapsed = time.monotonic() - started
                moved, resumed = result.transferred, result.resumed
                log.info(
                    "transfer.done",
                    **fields(),
                    bytes=moved,
                    **({"resumed": True, "resumed_bytes": resumed} if resumed else {}),
                    seconds=round(elapsed, 3),
                    rate_mb_s=round(moved / 1e6 / max(elapsed, 1e-6), 1),
                )
            if transfer.result is None:
                # Every watcher went away; a download's partial file stays for later.
                transfer.error = TransferCancelledError(f"{self._action} of {name} was cancelled")
                log.info("transfer.cancelled", **fields(), **so_far())
        except FerrydError as exc:
            transfer.error = exc
            log.warning("transfer.failed", **fields(), error=str(exc), **so_far())
        except Exception as exc:  # a bug must fail this request, not the daemon
            transfer.error = InternalError(f"{self._action} of {name} failed: {exc!r}")
            log.exception("transfer.crashed", **fields())
        finally:
            if transfer.result is None and transfer.error is None:
                # Cancelled from outside (the daemon is stopping, maybe while the transfer
                # wound down from its watchers' cancel): say so to them, and in the log.
                transfer.error = TransferCancelledError(f"{self._action} of {name} was cancelled")
                log.info("transfer.cancelled", **fields(), **so_far())
            del self._transfers[key]
            transfer.done.set()
            if self._metrics is not None:
                seconds = time.monotonic() - running if running is not None else None
                self._metrics.transfer_finished(self._action, transfer.error, seconds)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to try again: `delay` times the attempt number, unless the
    registry asked for a wait (Retry-After), which is honoured up to `max_retry_after`.
    Each retry is counted in `metrics` by its cause."""

    attempts: int = 5
    delay: float = 5.0
    max_retry_after: float = 60.0
    metrics: Metrics | None = field(default=None, compare=False, repr=False)

    def wait(self, exc: FerrydError, number: int) -> float:
        asked = getattr(exc, "retry_after", None)
        if asked is not None:
            return min(float(asked), self.max_retry_after)
        return self.delay * number


def when_retryable(exc: FerrydError) -> bool:
    return exc.retryable


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    progress: ProgressOutput,
    progress_id: str | None,
    name: str,
    retry_on: Callable[[FerrydError], bool] = when_retryable,
) -> T:
    """Call `attempt` until it succeeds, at most `policy.attempts` times; only errors
    marked retryable (or those `retry_on` accepts) are retried, after the policy's wait."""
    for number in range(1, policy.attempts + 1):
        try:
            return await attempt()
        except FerrydError as exc:
            if not retry_on(exc) or number == policy.attempts:
                raise
            wait = policy.wait(exc, number)
            if policy.metrics is not None:
                policy.metrics.retried(exc)
            log.warning(
                "transfer.retry",
                name=name,
                attempt=number,
                cause=type(exc).__name__,
                error=str(exc),
                delay=wait,
            )
            await _count_down(wait, progress_id, progress)
    raise AssertionError("unreachable")


async def _count_down(delay: float, progress_id: str | None, progress: ProgressOutput) -> None:
    """Wait `delay` seconds, saying "Retrying in N seconds" each time N changes; once for
    a retry that has no progress line of its own (a config, an artifact's blob), which
    docker would print as a new line each second."""
    if progress_id is None:
        shown = math.ceil(delay)
        progress.write(Message(f"Retrying in {shown} second{'' if shown == 1 else 's'}"))
        await anyio.sleep(delay)
        return
    remaining = delay
    while remaining > 0:
        shown = math.ceil(remaining)
        unit = "second" if shown == 1 else "seconds"
        progress.write(Message(f"Retrying in {shown} {unit}", progress_id))
        step = remaining - (shown - 1)
        await anyio.sleep(step)
        remaining -= step
