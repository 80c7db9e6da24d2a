"""A URL a registry points us at, checked before anything connects to it."""

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
