"""Python's cycle collector, kept off the objects the daemon made while starting.

A full collection walks every tracked object. The daemon starts with ~60,000 (its
modules, the API's routes, the store, the clients), and they live as long as it does:
each full collection walked them again, holding the GIL 11-16 ms on this machine, and it
came in the middle of a pull (the event loop stopped that long; the 5-layer pull's
largest loop lag was 23 ms). Frozen once the daemon is ready, they are no longer walked:
a full collection then costs what the pulls themselves left behind. The price: a frozen
object that later becomes part of an unreachable cycle (settings a reload replaced, say)
is never collected; reference counting still frees the rest, and such leftovers are few
and made once. What the first request would build lazily on the event loop is built
just before, and frozen with the rest.
"""

from __future__ import annotations

import gc
import urllib.parse


def freeze_startup_heap() -> int:
    """Build what the first request would build on the event loop, collect what
    starting left over, then exempt every surviving object from later collections;
    returns how many are exempt."""
    # urllib's table of %-escapes (484 entries, ~0.4 ms), made by the first query
    # string with one: the docker CLI's `fromImage=127.0.0.1%3A5000%2Fapp`. A new
    # daemon's first pull of an image it has takes ~16 ms here.
    urllib.parse.unquote("%2F")
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
