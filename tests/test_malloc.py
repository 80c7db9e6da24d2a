"""The daemon keeps 1 MiB pieces on the heap (glibc's mallopt), elsewhere it does nothing."""

from __future__ import annotations

import platform

import pytest

from ferryd.daemon import malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_allocator_is_tuned_on_glibc() -> None:
    assert malloc.tune() is True


def test_tuning_is_harmless_to_call_twice() -> None:
    first, second = malloc.tune(), malloc.tune()
    assert first == second
