"""Image events, the event logger of moby's distribution Config.

Every pull, push, tag, untag and delete, and each image prune, is reported to an
`ImageEventLogger`. The daemon's is the `EventHub`: each event becomes one structured
log line (`image.<action>`) and one docker-shaped event; the last `keep` events stay in
memory so that `docker events --since` can replay them, as dockerd's in-memory event
log does. A pull or push that fails is one `image.<action>_failed` line
(`failure_logged`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ferryd.errors import FerrydError, InvalidReferenceError
from ferryd.oci.reference import parse_reference

log = structlog.get_logger("ferryd.events")


class ImageEventLogger(Protocol):
    """moby's ImageEventLogger: (image id, reference, action) plus what it cost."""

    def __call__(self, image_id: str, name: str, action: str, **fields: object) -> None: ...


def log_image_event(image_id: str, name: str, action: str, **fields: object) -> None:
    """One structured log line per image action: an ImageEventLogger on its own."""
    log.info(f"image.{action}", action=action, image_id=image_id, reference=name, **fields)


@contextlib.contextmanager
def failure_logged(action: str, reference: str) -> Iterator[None]:
    """One `image.<action>_failed` line when the block fails or is cancelled (the client
    left, the daemon stopped); the exception goes on."""
    started = time.monotonic()

    def failed(error: str) -> None:
        log.warning(
            f"image.{action}_failed",
            action=action,
            reference=reference,
            error=error,
            seconds=round(time.monotonic() - started, 3),
        )

    try:
        yield
    except FerrydError as exc:
        failed(str(exc))
        raise
    except anyio.get_cancelled_exc_class():
        failed("cancelled")
        raise


# A watcher that falls this far behind is dropped rather than slowing the others.
_WATCHER_BUFFER = 256


@dataclass(frozen=True, slots=True)
class Event:
    action: str  # pull, push, tag, untag, delete, prune
    actor_id: str  # the image ID, or for pull/push the reference (as dockerd); prune: ""
    name: str  # the reference the action was about, familiar form; prune: ""
    time_nano: int
    reclaimed: int | None = None  # prune: the bytes it freed

    def to_docker(self) -> dict[str, Any]:
        """The JSON dockerd sends for an image event, legacy fields included (`id` is
        left out when empty, as Go's omitempty does for a prune)."""
        if self.reclaimed is not None:
            attributes = {"reclaimed": str(self.reclaimed)}
        else:
            attributes = {"name": self.name}
        legacy = {"status": self.action} | ({"id": self.actor_id} if self.actor_id else {})
        return {
            **legacy,
            "Type": "image",
            "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": attributes},
            "scope": "local",
            "time": self.time_nano // 1_000_000_000,
            "timeNano": self.time_nano,
        }


@dataclass
class EventHub:
    """The daemon's ImageEventLogger: logs each event, keeps the latest, feeds watchers."""

    keep: int = 1024
    _recent: collections.deque[Event] = field(init=False)
    _watchers: set[MemoryObjectSendStream[Event]] = field(init=False, default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = field(init=False, default=None)
    _loop_thread: int | None = field(init=False, default=None)
    _closed: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._recent = collections.deque(maxlen=self.keep)

    def bind(self) -> None:
        """Remember the event loop: actions that run in worker threads (tag, rmi)
        report from there, and watchers live on the loop."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def __call__(self, image_id: str, name: str, action: str, **fields: object) -> None:
        log_image_event(image_id, name, action, **fields)
        # dockerd's choices: pull/push name the reference (ID) and its repository
        # (name); tag/untag name the image ID and the reference; delete names the ID
        # twice, whatever name (a short ID, a tag) the removal was asked by; a prune
        # names nothing and says what it freed.
        if action == "prune":
            freed = fields.get("reclaimed")
            reclaimed = freed if isinstance(freed, int) else 0
            event = Event(action, "", "", time.time_ns(), reclaimed=reclaimed)
        elif action in ("pull", "push"):
            event = Event(action, _familiar(name), _familiar(name, repository=True), time.time_ns())
        elif action == "delete":
            event = Event(action, image_id, image_id, time.time_ns())
        else:
            event = Event(action, image_id, _familiar(name), time.time_ns())
        if self._loop is None or threading.get_ident() == self._loop_thread:
            self._publish(event)
        else:
            self._loop.call_soon_threadsafe(self._publish, event)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def _publish(self, event: Event) -> None:
        self._recent.append(event)
        for watcher in list(self._watchers):
            try:
                watcher.send_nowait(event)
            except anyio.WouldBlock:
                watcher.close()
                self._watchers.discard(watcher)
                log.warning(
                    "events.watcher_dropped", reason="it fell behind", buffer=_WATCHER_BUFFER
                )
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._watchers.discard(watcher)

    @contextlib.contextmanager
    def watch(self) -> Iterator[tuple[list[Event], MemoryObjectReceiveStream[Event]]]:
        """The events kept so far, and a stream of those that follow (no gap, no overlap:
        both are taken in one step on the loop). The stream ends when the hub closes, at
        once for a watcher that comes after (a request that slipped in as the daemon
        began to stop must not hold the stop up)."""
        sender, receiver = anyio.create_memory_object_stream[Event](_WATCHER_BUFFER)
        if self._closed:
            sender.close()
        else:
            self._watchers.add(sender)
        try:
            yield list(self._recent), receiver
        finally:
            self._watchers.discard(sender)
            sender.close()
            receiver.close()

    def close(self) -> None:
        """End every watcher's stream, and those of later ones (the daemon is stopping)."""
        self._closed = True
        for watcher in self._watchers:
            watcher.close()
        self._watchers.clear()


def _familiar(name: str, *, repository: bool = False) -> str:
    """`docker.io/library/busybox:latest` → `busybox:latest` (or `busybox`, the
    repository); an image ID stays as it is."""
    if name.startswith("sha256:"):
        return name
    try:
        reference = parse_reference(name, default_tag=False)
    except InvalidReferenceError:
        return name
    return reference.familiar_name if repository else reference.familiar
