"""Values a registry sends that ferryd reads by hand, which a hostile one fills with
anything: a number in a header, the port of a URL it points us at."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

# 19 digits pass every size, count or number of seconds a registry has reason to send
# (2**63 has 19), and keep int() cheap and within Python's own limit (4300 digits).
MAX_DIGITS = 19


def decimal(text: str) -> int | None:
    """`text` as a non-negative decimal integer, or None when it is not one: ASCII digits
    only (str.isdigit accepts "²", which int() refuses), at most MAX_DIGITS of them."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)
    return None


def check_port(url: str) -> None:
    """Raise httpx.InvalidURL when `url` has a port out of 0-65535: httpx takes 70000 or
    -1, and connecting then fails with an OverflowError (asyncio) or as an unreachable
    host (uvloop, a retryable error): neither says that the URL is what is wrong."""
    try:
        _ = urlsplit(url).port  # parsed only when asked for: out of range, ValueError
    except ValueError as exc:
        raise httpx.InvalidURL(str(exc)) from None
