"""Waiting for a condition instead of sleeping for a guessed time: one helper each for
threads and for tasks, with a deadline that fails the test with a message.

A condition may raise to give up early (a process that has exited will never answer);
`what` names what was awaited, or is a function that says it when the time is up (a
log tail, the last error seen).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0

What = str | Callable[[], str]


def _timed_out(timeout: float, what: What, condition: Callable[[], object]) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g} s waiting for {said or condition}")


def wait_until(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: What = "",
    interval: float = 0.01,
) -> T:
    """Poll `condition` until it returns something true, and return that; fail the test
    when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what, condition)
        time.sleep(interval)


async def await_until(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: What = "",
    interval: float = 0.005,
) -> T:
    """`wait_until` for async tests: polls without blocking the event loop (for what
    has no event to wait on: files, a server's request log, another process). The
    condition may be a coroutine function (a request made in a worker thread)."""
    with anyio.move_on_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            await anyio.sleep(interval)
    raise _timed_out(timeout, what, condition)
