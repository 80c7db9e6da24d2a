"""A TCP proxy on loopback that slows both directions, so that an upload (a push) lasts
long enough for a test to act inside it: `throttle.py`'s proxy, `both_ways`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .throttle import ThrottledProxy, throttled


@contextlib.contextmanager
def slow_link(target: str, rate: float) -> Iterator[ThrottledProxy]:
    """Forwards 127.0.0.1:port to `target`, each direction of each connection at `rate`
    bytes per second."""
    with throttled(target, rate, both_ways=True) as link:
        yield link
