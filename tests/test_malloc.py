"""The daemon keeps 1 MiB pieces on the heap (glibc's mallopt), elsewhere it does nothing."""

from __future__ import annotations

import ctypes
import platform

import pytest

from ferryd.daemon import malloc

GLIBC = platform.libc_ver()[0] == "glibc"


class Mallinfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (<malloc.h>, glibc 2.33 and later)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",  # chunks allocated with mmap
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_allocator_is_tuned_on_glibc() -> None:
    assert malloc.tune() is True


def test_tuning_is_harmless_to_call_twice() -> None:
    first, second = malloc.tune(), malloc.tune()
    assert first == second
    if not GLIBC:
        return
    assert second is True  # mallopt took every setting again
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        return
    # The process still allocates, and a piece below MMAP_THRESHOLD still comes from
    # the heap, not from an mmap of its own.
    libc.malloc.argtypes, libc.malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
    libc.free.argtypes, libc.free.restype = (ctypes.c_void_p,), None
    libc.mallinfo2.restype = Mallinfo2
    mapped = libc.mallinfo2().hblks
    piece = libc.malloc(16 << 20)
    try:
        assert piece
        assert libc.mallinfo2().hblks == mapped
    finally:
        libc.free(piece)
