"""What every registry request shares: a URL a registry points us at, checked before
anything connects to it; the read timeout requests run with."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx


def check_port(url: str) -> None:
    """Raise httpx.InvalidURL when `url` has a port out of 0-65535: httpx takes 70000 or
    -1, and connecting then fails with an OverflowError (asyncio) or as an unreachable
    host (uvloop, a retryable error): neither says that the URL is what is wrong."""
    try:
        _ = urlsplit(url).port  # parsed only when asked for: out of range, ValueError
    except ValueError as exc:
        raise httpx.InvalidURL(str(exc)) from None


DEFAULT_READ_TIMEOUT = 30.0
"""Seconds each read of a registry's answer may wait (the `read_timeout` setting's
default); the deadlines of whole heads and small bodies are multiples of it."""


def read_timeout(seconds: object) -> float:
    """`seconds` as the read timeout a request ran with (httpx keeps it in the request's
    `timeout` extension), or the default where it ran with none."""
    if isinstance(seconds, int | float) and seconds > 0:
        return float(seconds)
    return DEFAULT_READ_TIMEOUT
