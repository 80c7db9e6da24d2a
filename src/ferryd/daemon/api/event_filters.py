"""`GET /events` parameters as dockerd reads them: `filters` JSON and Unix timestamps."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ferryd.daemon.api.filters import Filters
from ferryd.distribution.events import Event
from ferryd.errors import InvalidFilterError

# Every filter dockerd knows. ferryd only has image events, so filters on other kinds
# of object (container=, network=, …) match nothing, as they would on dockerd.
_IMAGE_KEYS = {"type", "event", "image", "scope", "label"}
_OTHER_KEYS = {
    "config",
    "container",
    "daemon",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "volume",
}
# Seconds as dockerd's int64 has them: more digits would be over Python's limit on
# reading an int (4300 digits), a ValueError, not a refusal.
_TIMESTAMP = re.compile(r"(?P<seconds>-?\d{1,19})(?:\.(?P<nanos>\d{1,9}))?")


@dataclass(frozen=True, slots=True)
class EventFilter:
    filters: dict[str, set[str]]

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        """`{"type":["image"],"event":["pull"]}`, or the older `{"type":{"image":true}}`."""
        parsed = Filters.parse(text, _IMAGE_KEYS | _OTHER_KEYS)
        return cls({key: set(values) for key, values in parsed.fields.items() if values})

    def matches(self, event: Event) -> bool:
        if any(key in _OTHER_KEYS for key in self.filters):
            return False
        if "label" in self.filters:  # image labels are not part of ferryd's events
            return False
        checks = {
            "type": {"image"},
            "scope": {"local"},
            "event": {event.action},
            "image": _image_names(event),
        }
        return all(values & checks[key] for key, values in self.filters.items())


def _image_names(event: Event) -> set[str]:
    """What an `image=` filter may name: the ID, the reference, the repository."""
    names = {event.actor_id, event.name}
    for name in (event.actor_id, event.name):
        repository, at, _digest = name.partition("@")
        if at:  # busybox@sha256:… → busybox
            names.add(repository)
            continue
        repository, colon, tag = name.rpartition(":")
        if colon and "/" not in tag:
            names.add(repository)
    return names


def parse_time(text: str, name: str) -> int:
    """`1700000000` or `1700000000.5` (what the docker CLI sends) → nanoseconds."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise InvalidFilterError(
            f"invalid {name} value {text!r}: expected Unix seconds such as 1700000000.000000000"
        )
    nanos = (match["nanos"] or "").ljust(9, "0")
    return int(match["seconds"]) * 1_000_000_000 + int(nanos)
