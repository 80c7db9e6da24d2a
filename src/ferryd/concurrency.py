"""Small helpers around anyio task groups."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Generic, TypeVar

import anyio

from ferryd.errors import FerrydError

# What a task sees when another task of its group failed and closed the stream between
# them: a consequence, never the reason.
_CONSEQUENCES = (anyio.BrokenResourceError, anyio.ClosedResourceError)

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """One holder per key at a time. A key's lock lives only while some task holds it
    or waits for it, so keys that come and go (blobs, repositories) cost nothing after."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise the real error of an exception group on its own.

    anyio task groups always raise groups; callers of a transfer want the registry or
    content error that ended it, to report it and to decide whether to retry. A ferryd
    error wins over any other, and any other over a broken stream (the stage that died
    first closes its end: the stage writing to it then fails too, but only because of
    it).
    """
    try:
        yield
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves = list(_leaves(group))
    ranked = sorted(range(len(leaves)), key=lambda i: (_rank(leaves[i]), i))
    return leaves[ranked[0]] if leaves else group


def _rank(exc: BaseException) -> int:
    """Lower is truer: ferryd's errors, other errors, broken streams, then the rest
    (cancellation)."""
    if isinstance(exc, FerrydError):
        return 0
    if isinstance(exc, Exception):
        return 2 if isinstance(exc, _CONSEQUENCES) else 1
    return 3


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
