"""Waiting for a condition instead of sleeping for a guessed time: one helper each for
threads and for tasks, with a deadline that fails the test with a message."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import anyio

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0


def wait_until(
    condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, *, what: str = ""
) -> T:
    """Poll `condition` until it returns something true, and return that; fail the test
    when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(0.01)


async def await_until(
    condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, *, what: str = ""
) -> T:
    """`wait_until` for async tests: polls without blocking the event loop."""
    with anyio.fail_after(timeout):
        while True:
            result = condition()
            if result:
                return result
            await anyio.sleep(0.005)
    raise AssertionError(f"unreachable: {what}")
