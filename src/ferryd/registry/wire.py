"""Values from outside that ferryd reads by hand, which a hostile sender fills with
anything: a number in a header, the port of a URL a registry points us at, text from
JSON that no UTF-8 can carry."""

from __future__ import annotations

import re
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """JSON's `\\ud800`-style escape that pairs with nothing: Python keeps it as a lone
    surrogate, which no UTF-8 text (an answer, a log line, a request) can hold."""
    return not text.isascii() and _SURROGATE.search(text) is not None
