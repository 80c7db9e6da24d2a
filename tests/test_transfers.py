"""TransferPool (shared transfers, their watchers, slots) and with_retries.

In-process and deterministic: the work of a transfer is a coroutine the test drives
with events; watchers read their progress from memory streams; "nothing happened"
is checked once every task is blocked (`anyio.wait_all_tasks_blocked`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import structlog.testing
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ferryd.distribution import transfers
from ferryd.distribution.progress import Broadcast, Message
from ferryd.distribution.transfers import RetryPolicy, TransferPool, TransferState, with_retries
from ferryd.errors import (
    FerrydError,
    InternalError,
    NotFoundError,
    TransferCancelledError,
    TransientRegistryError,
)

LAYER = "registry.test/library/alpine@sha256:" + "ab" * 32
LAYER_ID = "abababababab"


@dataclass(frozen=True)
class Moved:
    """What a transfer's work returns: the pool reads what it moved."""

    size: int
    by: str = ""

    @property
    def transferred(self) -> int:
        return self.size

    @property
    def resumed(self) -> int:
        return 0


class Work:
    """One transfer's work, driven by the test.

    Writes `before`, sets `started`, waits for `finish`, writes `after`, then returns
    `Moved(size, by=label)` or raises `error`. When cancelled, it sets `cancelled`;
    with `wind_down` it then keeps going, shielded, until that event is set (a worker
    thread still writing), and re-raises, or returns if `finish_anyway`.
    """

    def __init__(
        self,
        label: str = "work",
        *,
        before: Iterable[Message] = (),
        after: Iterable[Message] = (),
        error: BaseException | None = None,
        wind_down: anyio.Event | None = None,
        finish_anyway: bool = False,
        log: list[str] | None = None,
    ) -> None:
        self.label = label
        self.before = list(before)
        self.after = list(after)
        self.error = error
        self.wind_down = wind_down
        self.finish_anyway = finish_anyway
        self.log = log if log is not None else []
        self.calls = 0
        self.started = anyio.Event()
        self.finish = anyio.Event()
        self.cancelled = anyio.Event()

    async def __call__(self, progress: Broadcast) -> Moved:
        self.calls += 1
        self.log.append(f"{self.label} started")
        for message in self.before:
            progress.write(message)
        self.started.set()
        try:
            await self.finish.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            self.log.append(f"{self.label} cancelled")
            if self.wind_down is None:
                raise
            with anyio.CancelScope(shield=True):
                await self.wind_down.wait()
            if not self.finish_anyway:
                raise
        for message in self.after:
            progress.write(message)
        self.log.append(f"{self.label} finished")
        if self.error is not None:
            raise self.error
        return Moved(10, by=self.label)


@dataclass
class Watcher:
    """A request waiting on a transfer: what it saw, and how its join ended."""

    send: MemoryObjectSendStream[Message]
    receive: MemoryObjectReceiveStream[Message]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)
    result: Moved | None = None
    error: Exception | None = None
    unread: list[Message] = field(default_factory=list)
    closed: bool = False

    async def next(self) -> Message:
        """The next progress message; waits for it."""
        return await self.receive.receive()

    def rest(self) -> list[Message]:
        """The messages not read with `next` (once the watcher finished)."""
        assert self.finished.is_set()
        self._collect()
        return self.unread

    def close(self) -> None:
        self._collect()
        self.receive.close()
        self.closed = True

    def _collect(self) -> None:
        while not self.closed:
            try:
                self.unread.append(self.receive.receive_nowait())
            except (anyio.EndOfStream, anyio.WouldBlock):
                return

    async def go_away(self) -> None:
        """Cancel the join (the client hung up) and wait until it returned."""
        self.scope.cancel()
        await self.finished.wait()


@dataclass
class Pool:
    """A TransferPool whose transfers run in a task group of their own (the daemon's),
    and the watchers' task group."""

    pool: TransferPool[str, Moved]
    transfers_group: TaskGroup
    watchers_group: TaskGroup
    watchers: list[Watcher] = field(default_factory=list)
    works: list[Work] = field(default_factory=list)

    def watch(self, key: str, work: Work, **names: str) -> Watcher:
        send, receive = anyio.create_memory_object_stream[Message](math.inf)
        watcher = Watcher(send, receive)
        self.watchers.append(watcher)
        self.works.append(work)
        self.watchers_group.start_soon(self._join, watcher, key, work, names)
        return watcher

    async def _join(
        self, watcher: Watcher, key: str, work: Callable[[Broadcast], Any], names: dict[str, str]
    ) -> None:
        with watcher.send, watcher.scope:
            try:
                watcher.result = await self.pool.join(
                    key,
                    _Into(watcher.send),
                    work,
                    name=names.get("name", LAYER),
                    progress_id=names.get("progress_id", LAYER_ID),
                )
            except Exception as exc:
                watcher.error = exc
        watcher.finished.set()


@dataclass
class _Into:
    """A watcher's output: its messages into its stream, until the stream is closed."""

    send: MemoryObjectSendStream[Message]

    def write(self, message: Message) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.send.send_nowait(message)


async def _transfers_group(*, task_status: TaskStatus[TaskGroup]) -> None:
    async with anyio.create_task_group() as group:
        task_status.started(group)
        await anyio.sleep_forever()


@asynccontextmanager
async def running_pool(slots: int = 4) -> AsyncIterator[Pool]:
    with anyio.fail_after(5):  # a safety net against a hang, not a wait
        async with anyio.create_task_group() as watchers_group:
            transfers_group = await watchers_group.start(_transfers_group)
            pool = Pool(
                TransferPool(transfers_group, slots, "download"), transfers_group, watchers_group
            )
            try:
                yield pool
                for watcher in pool.watchers:
                    await watcher.finished.wait()
            finally:
                for work in pool.works:  # after a failed test, nothing may stay shielded
                    if work.wind_down is not None:
                        work.wind_down.set()
                transfers_group.cancel_scope.cancel()
                for watcher in pool.watchers:
                    watcher.close()


def downloading(current: int, total: int = 10) -> Message:
    return Message("Downloading", LAYER_ID, current, total)


# -- one transfer, several watchers --------------------------------------------------


async def test_two_joins_of_one_key_run_the_work_once_and_share_its_result() -> None:
    async with running_pool() as pool:
        first_work, second_work = Work("first"), Work("second")
        first = pool.watch("layer", first_work)
        second = pool.watch("layer", second_work)
        await first_work.started.wait()
        first_work.finish.set()
        await first.finished.wait()
        await second.finished.wait()
    assert (first_work.calls, second_work.calls) == (1, 0)
    assert first.result == Moved(10, by="first")
    assert second.result is first.result


async def test_every_watcher_sees_the_progress_the_work_writes() -> None:
    async with running_pool() as pool:
        before = [downloading(3), downloading(6)]
        after = [Message("Download complete", LAYER_ID)]
        work = Work(before=before, after=after)
        watchers = [pool.watch("layer", work), pool.watch("layer", work)]
        await work.started.wait()
        work.finish.set()
    assert [watcher.rest() for watcher in watchers] == [before + after, before + after]


async def test_watcher_that_joins_late_first_sees_the_latest_message() -> None:
    async with running_pool() as pool:
        work = Work(before=[downloading(3), downloading(6)], after=[downloading(10)])
        early = pool.watch("layer", work)
        await work.started.wait()
        late = pool.watch("layer", work)
        assert await late.next() == downloading(6)
        work.finish.set()
    assert early.rest() == [downloading(3), downloading(6), downloading(10)]
    assert late.rest() == [downloading(10)]
    assert late.result is early.result is not None


async def test_transfer_is_cancelled_when_its_last_watcher_goes_away() -> None:
    async with running_pool() as pool:
        work = Work()
        watcher = pool.watch("layer", work)
        await work.started.wait()
        await watcher.go_away()
        await work.cancelled.wait()
        await anyio.wait_all_tasks_blocked()
        assert pool.pool.active == 0
        assert pool.pool.states() == []
    assert watcher.result is None
    assert watcher.error is None  # cancelled: the join does not report an error


async def test_transfer_goes_on_while_another_watcher_remains() -> None:
    async with running_pool() as pool:
        work = Work(after=[Message("Download complete", LAYER_ID)])
        leaving = pool.watch("layer", work)
        staying = pool.watch("layer", work)
        await work.started.wait()
        await leaving.go_away()
        await anyio.wait_all_tasks_blocked()
        assert not work.cancelled.is_set()
        assert [state.watchers for state in pool.pool.states()] == [1]
        work.finish.set()
    assert not work.cancelled.is_set()
    assert staying.result == Moved(10, by="work")
    assert staying.rest() == [Message("Download complete", LAYER_ID)]
    assert leaving.rest() == []


async def test_join_while_a_cancelled_transfer_winds_down_waits_then_starts_afresh() -> None:
    async with running_pool() as pool:
        wind_down = anyio.Event()
        old_work, new_work = Work("old", wind_down=wind_down), Work("new")
        leaving = pool.watch("layer", old_work)
        await old_work.started.wait()
        await leaving.go_away()
        await old_work.cancelled.wait()  # the old transfer is still winding down
        newcomer = pool.watch("layer", new_work)
        await anyio.wait_all_tasks_blocked()
        assert new_work.calls == 0
        assert not newcomer.finished.is_set()
        assert pool.pool.active == 1
        wind_down.set()
        await new_work.started.wait()
        new_work.finish.set()
        await newcomer.finished.wait()
    assert (old_work.calls, new_work.calls) == (1, 1)
    assert newcomer.error is None
    assert newcomer.result == Moved(10, by="new")


async def test_join_while_a_cancelled_transfer_winds_down_takes_its_result_if_it_finished() -> None:
    async with running_pool() as pool:
        wind_down = anyio.Event()
        old_work = Work("old", wind_down=wind_down, finish_anyway=True)
        new_work = Work("new")
        leaving = pool.watch("layer", old_work)
        await old_work.started.wait()
        await leaving.go_away()
        await old_work.cancelled.wait()
        newcomer = pool.watch("layer", new_work)
        await anyio.wait_all_tasks_blocked()
        wind_down.set()
        await newcomer.finished.wait()
    assert new_work.calls == 0
    assert newcomer.result == Moved(10, by="old")


# -- slots ---------------------------------------------------------------------------


async def test_with_one_slot_a_second_key_waits_until_the_first_finishes() -> None:
    log: list[str] = []
    async with running_pool(slots=1) as pool:
        first_work, second_work = Work("a", log=log), Work("b", log=log)
        first = pool.watch("a", first_work, progress_id="aaaa")
        await first_work.started.wait()
        second = pool.watch("b", second_work, progress_id="bbbb")
        assert await second.next() == Message("Waiting", "bbbb")
        also_second = pool.watch("b", second_work, progress_id="bbbb")
        assert await also_second.next() == Message("Waiting", "bbbb")
        await anyio.wait_all_tasks_blocked()
        assert second_work.calls == 0
        assert [state.status for state in pool.pool.states()] == ["Starting", "Waiting"]
        first_work.finish.set()
        await second_work.started.wait()
        second_work.finish.set()
    assert log == ["a started", "a finished", "b started", "b finished"]
    assert first.rest() == []  # the first took a free slot: it never said "Waiting"
    assert second.result is also_second.result == Moved(10, by="b")


# -- states and active ---------------------------------------------------------------


async def test_states_reports_each_running_transfer() -> None:
    async with running_pool() as pool:
        work = Work(before=[downloading(4, 10)])
        fresh = Work()
        pool.watch("layer", work)
        pool.watch("layer", work)
        pool.watch("other", fresh, name="registry.test/other@sha256:cd", progress_id="cdcd")
        await work.started.wait()
        await fresh.started.wait()
        states = pool.pool.states()
        work.finish.set()
        fresh.finish.set()
    assert all(isinstance(state.started, float) for state in states)
    assert [dataclasses.replace(state, started=0.0) for state in states] == [
        TransferState(
            action="download",
            name=LAYER,
            id=LAYER_ID,
            status="Downloading",
            current=4,
            total=10,
            watchers=2,
            started=0.0,
        ),
        TransferState(
            action="download",
            name="registry.test/other@sha256:cd",
            id="cdcd",
            status="Starting",  # nothing written yet
            current=None,
            total=None,
            watchers=1,
            started=0.0,
        ),
    ]


async def test_active_counts_running_transfers_not_watchers() -> None:
    async with running_pool() as pool:
        assert pool.pool.active == 0
        first_work, second_work = Work("a"), Work("b")
        first = pool.watch("a", first_work)
        pool.watch("a", first_work)
        pool.watch("b", second_work)
        await first_work.started.wait()
        await second_work.started.wait()
        assert pool.pool.active == 2
        first_work.finish.set()
        await first.finished.wait()
        assert pool.pool.active == 1
        second_work.finish.set()
    assert pool.pool.active == 0


# -- errors --------------------------------------------------------------------------


async def test_ferryd_error_of_the_work_reaches_every_watcher_as_is() -> None:
    error = NotFoundError("blob unknown to registry")
    async with running_pool() as pool:
        work = Work(error=error)
        watchers = [pool.watch("layer", work), pool.watch("layer", work)]
        await work.started.wait()
        work.finish.set()
    assert [watcher.error for watcher in watchers] == [error, error]
    assert all(watcher.error is error for watcher in watchers)
    assert pool.pool.active == 0


async def test_other_exception_of_the_work_becomes_an_internal_error_for_every_watcher() -> None:
    async with running_pool() as pool:
        work = Work(error=RuntimeError("boom"))
        watchers = [pool.watch("layer", work), pool.watch("layer", work)]
        await work.started.wait()
        work.finish.set()
    first, second = (watcher.error for watcher in watchers)
    assert isinstance(first, InternalError)
    assert second is first
    assert str(first) == f"download of {LAYER} failed: RuntimeError('boom')"


async def test_transfer_stopped_from_outside_fails_its_watchers_as_cancelled() -> None:
    # The daemon stopping cancels its task group, where transfers run.
    with structlog.testing.capture_logs() as logs:
        async with running_pool() as pool:
            work = Work()
            watchers = [pool.watch("layer", work), pool.watch("layer", work)]
            await work.started.wait()
            pool.transfers_group.cancel_scope.cancel()
            for watcher in watchers:
                await watcher.finished.wait()
    assert [e["name"] for e in logs if e["event"] == "transfer.cancelled"] == [LAYER]
    assert work.cancelled.is_set()
    for watcher in watchers:
        assert isinstance(watcher.error, TransferCancelledError)
        assert str(watcher.error) == f"download of {LAYER} was cancelled"
    assert pool.pool.active == 0


# -- with_retries --------------------------------------------------------------------


class Attempts:
    """An attempt that raises each of `errors` in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def write(self, message: Message) -> None:
        self.messages.append(message)


async def retry(attempt: Attempts, output: Recorder, *, attempts: int, delay: float) -> str:
    return await with_retries(
        attempt,
        policy=RetryPolicy(attempts, delay),
        progress=output,
        progress_id=LAYER_ID,
        name=LAYER,
    )


async def test_with_retries_retries_a_retryable_error_until_it_succeeds() -> None:
    attempt = Attempts(TransientRegistryError("503"), TransientRegistryError("503"))
    output = Recorder()
    assert await retry(attempt, output, attempts=5, delay=0.01) == "done"
    assert attempt.calls == 3
    assert output.messages == [Message("Retrying in 1 second", LAYER_ID)] * 2


async def test_with_retries_does_not_retry_an_error_that_is_not_retryable() -> None:
    error = NotFoundError("manifest unknown")
    attempt, output = Attempts(error), Recorder()
    with pytest.raises(NotFoundError) as raised:
        await retry(attempt, output, attempts=5, delay=0.01)
    assert raised.value is error
    assert attempt.calls == 1
    assert output.messages == []


async def test_with_retries_does_not_retry_an_exception_that_is_not_a_ferryd_error() -> None:
    attempt, output = Attempts(ValueError("bug")), Recorder()
    with pytest.raises(ValueError, match="bug"):
        await retry(attempt, output, attempts=5, delay=0.01)
    assert attempt.calls == 1
    assert output.messages == []


async def test_with_retries_tries_at_most_attempts_times_and_raises_the_last_error() -> None:
    errors = [TransientRegistryError(f"503, try {n}") for n in (1, 2, 3)]
    attempt, output = Attempts(*errors), Recorder()
    with pytest.raises(TransientRegistryError) as raised:
        await retry(attempt, output, attempts=3, delay=0.01)
    assert raised.value is errors[-1]
    assert attempt.calls == 3
    assert output.messages == [Message("Retrying in 1 second", LAYER_ID)] * 2


async def test_with_retries_with_one_attempt_never_retries() -> None:
    attempt, output = Attempts(TransientRegistryError("503")), Recorder()
    with pytest.raises(TransientRegistryError):
        await retry(attempt, output, attempts=1, delay=0.01)
    assert attempt.calls == 1
    assert output.messages == []


class FastAnyio:
    """Stands in for the `anyio` module of transfers.py: `sleep` records and returns at
    once; everything else is anyio's."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(anyio, name)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await checkpoint()


async def test_with_retries_counts_down_each_second_and_waits_longer_each_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = FastAnyio()
    monkeypatch.setattr(transfers, "anyio", fast)
    error = TransientRegistryError("503")
    attempt, output = Attempts(error, error, error), Recorder()
    with pytest.raises(FerrydError):
        await retry(attempt, output, attempts=3, delay=1.5)
    # Attempt 1 waits 1.5 s (shown as 2, then 1), attempt 2 waits 3 s (3, 2, 1).
    assert [message.status for message in output.messages] == [
        "Retrying in 2 seconds",
        "Retrying in 1 second",
        "Retrying in 3 seconds",
        "Retrying in 2 seconds",
        "Retrying in 1 second",
    ]
    assert {message.id for message in output.messages} == {LAYER_ID}
    assert fast.slept == [0.5, 1.0, 1.0, 1.0, 1.0]
