"""A thread-safe counter of who is using what: pins on blobs, holds on layers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RefCounter(Generic[K]):
    """Counts uses of each key from the event loop and worker threads alike; garbage
    collection skips a key while its count is above zero."""

    def __init__(self) -> None:
        self._counts: Counter[K] = Counter()
        self._lock = threading.Lock()

    def acquire(self, key: K) -> None:
        with self._lock:
            self._counts[key] += 1

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
