"""glibc's allocator, tuned for a daemon that moves bytes in ~1 MiB pieces.

Every piece a pull reads from a socket or inflates is a fresh 1 MiB object. By default
glibc serves such sizes with mmap, then unmaps them when freed, so each MiB costs page
faults to map and zero it again: on a 160 MB layer that was a third of the daemon's
system time (0.15-0.21 s of CPU against 0.08-0.12 s tuned, measured here), and the
pull's CPU went from 1.55x to 1.25x the unavoidable hashing and inflating. Keeping such
pieces on the heap, and not trimming it back after every burst, lets them reuse the
same pages.

Each thread that allocates is also given an arena of its own (up to 8 per core), which
keeps the pieces freed in it for itself: with a pull's worker threads taking turns,
every arena held its own spare MiBs. Two arenas let them share: the 5-layer benchmark
pull's peak RSS went from 128 to 111 MiB, its CPU unchanged (2.24 against 2.25 s).
Elsewhere than glibc, this does nothing.
"""

from __future__ import annotations

import ctypes

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 << 20  # below this, an allocation comes from the heap
TRIM_THRESHOLD = 64 << 20  # free heap kept before any is given back to the system
ARENA_MAX = 2  # heaps the threads share


def tune() -> bool:
    """Apply the settings above; False where the C library has no `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
