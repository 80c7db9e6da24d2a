"""A thread-safe counter of who is using what: pins on blobs, holds on layers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
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
    that looked before the removal is seen, one that looks after it finds nothing.

    A removal that leaves something only because its key is in use notes so (`in_use`);
    the release that ends the key's last use says so (`release`), for its caller to
    remove what nobody uses by then."""

    def __init__(self) -> None:
        self._counts: Counter[K] = Counter()
        self._lock = threading.Lock()
        self._watches: list[Watch[K]] = []
        # Keys a removal is taking (`unless_used`): their users wait for its end, on
        # this condition, which the other keys' users never do.
        self._taking: set[K] = set()
        self._taken = threading.Condition(self._lock)
        # Keys in use when a removal left what they name because of that (`in_use`).
        self._left: set[K] = set()

    def acquire(self, key: K) -> None:
        """Count a use of `key`; while a removal is taking it (`unless_used`), once the
        removal is done: the user then finds nothing there, never half of it."""
        with self._lock:
            while key in self._taking:
                self._taken.wait()
            self._counts[key] += 1
            for watch in self._watches:
                watch.touched.add(key)

    def release(self, key: K) -> bool:
        """Let go of a use of `key`. True when that was its last use and a removal left
        what `key` names because it was in use (`in_use`): the caller removes what
        nobody uses by then, as the removal would have."""
        with self._lock:
            self._counts[key] -= 1
            if self._counts[key] > 0:
                return False
            del self._counts[key]
            if key in self._left:
                self._left.discard(key)
                return True
            return False

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._counts

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._counts)

    def in_use(self, left: Callable[[K], bool]) -> list[K]:
        """The keys in use, as `keys`, noting those for which `left(key)` is true (the
        removal reading them leaves what they name only because they are in use) for
        the release that ends their last use. Noted as they are read, under the lock: a
        use that ends after the reading is told, one that ended before it was not seen.
        `left` runs under the lock: a lookup, nothing more."""
        with self._lock:
            keys = list(self._counts)
            self._left.update(key for key in keys if left(key))
            return keys

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
        """Whether nobody has used `key` since `watch` began (True: it may go); remove it
        inside the block. Until the block ends, whoever acquires `key` waits, then finds
        nothing there. Only `key`'s users wait: the lock is not held while the block
        runs, so that a slow removal (a rename under journal pressure) holds up nobody
        else, the event loop above all."""
        with self._lock:
            while key in self._taking:  # another removal's verdict on it comes first
                self._taken.wait()
            unused = key not in self._counts and key not in watch.touched
            if unused:
                self._taking.add(key)
        if not unused:
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                self._taking.discard(key)
                self._taken.notify_all()
