"""A thread-safe counter of who is using what: pins on blobs, holds on layers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Watch(Generic[K]):
    """The keys in use when a watch began, and every key acquired since (`watching`)."""

    def __init__(self, in_use: set[K]) -> None:
        self.touched = in_use


class RefCounter(Generic[K]):
    """Counts uses of each key from the event loop and worker threads alike; garbage
    collection skips a key while its count is above zero.

    A user acquires a key first, then looks for what it names (a blob file, a row), and
    releases it once a row that needs it is committed. What removes a thing the rows no
    longer need therefore watches (`watching`) from before it reads the rows until it
    has removed it, and removes only what nobody used meanwhile (`unless_used`): a user
    that looked before the removal is seen, one that looks after it finds nothing."""

    def __init__(self) -> None:
        self._counts: Counter[K] = Counter()
        self._lock = threading.Lock()
        self._watches: list[Watch[K]] = []

    def acquire(self, key: K) -> None:
        with self._lock:
            self._counts[key] += 1
            for watch in self._watches:
                watch.touched.add(key)

    def release(self, key: K) -> None:
        with self._lock:
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._counts

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._counts)

    @contextmanager
    def watching(self) -> Iterator[Watch[K]]:
        """While the block runs, note every key acquired (and those in use at its start):
        begin it before reading what the rows need, and remove inside it."""
        with self._lock:
            watch = Watch(set(self._counts))
            self._watches.append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._watches = [other for other in self._watches if other is not watch]

    def used_since(self, key: K, watch: Watch[K]) -> bool:
        """Whether `key` is in use, or was at any moment since `watch` began."""
        with self._lock:
            return key in self._counts or key in watch.touched

    @contextmanager
    def unless_used(self, key: K, watch: Watch[K]) -> Iterator[bool]:
        """Whether nobody has used `key` since `watch` began (True: it may go); while the
        block runs nobody can acquire it, so remove it inside the block (quickly: the
        event loop acquires keys too)."""
        with self._lock:
            yield key not in self._counts and key not in watch.touched
