"""Text from outside that ferryd reads by hand, which a hostile sender fills with
anything: a number in a header or a tar record, JSON nested past Python's recursion
limit, JSON escapes that no UTF-8 can carry."""

from __future__ import annotations

import json
import re
from typing import Any

# 19 digits pass every size, count or number of seconds a sender has reason to send
# (2**63 has 19), and keep int() cheap and within Python's own limit (4300 digits).
MAX_DIGITS = 19


def decimal(text: str) -> int | None:
    """`text` as a non-negative decimal integer, or None when it is not one: ASCII digits
    only (str.isdigit accepts "²", which int() refuses), at most MAX_DIGITS of them."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)
    return None


def loads(text: str | bytes | bytearray) -> Any:
    """`json.loads` whose every refusal is a ValueError: a few KB of `[` nest past
    Python's recursion limit, and json raises RecursionError for them, which callers
    that answer bad JSON with their own error would let through as a crash."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: str) -> bool:
    """JSON's `\\ud800`-style escape that pairs with nothing: Python keeps it as a lone
    surrogate, which no UTF-8 text (an answer, a log line, a request) can hold."""
    return not text.isascii() and _SURROGATE.search(text) is not None
