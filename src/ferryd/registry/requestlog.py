"""What each registry answer leaves in the log: a debug line (never a header: they carry
secrets), and a warning when the registry says its rate limit is nearly spent."""

from __future__ import annotations

import re
from collections.abc import Mapping

import structlog

from ferryd.registry.bodies import content_length
from ferryd.untrusted import decimal

log = structlog.get_logger("ferryd.registry")

# Below this share of its limit left, a registry's rate limit is worth a warning.
_RATE_LIMIT_LOW = 0.1
_RATE_LIMIT = re.compile(r"\s*([0-9]+)(?:\s*;\s*w=([0-9]+))?")


def answered(
    method: str, host: str, path: str, status: int, headers: Mapping[str, str], seconds: float
) -> None:
    """One request's answer came (`headers`: case-insensitive, as httpx's and urllib3's are)."""
    log.debug(
        "registry.request",
        method=method,
        host=host,
        path=path,
        status=status,
        seconds=round(seconds, 3),
        bytes=content_length(headers),
    )
    _check_rate_limit(host, headers)


def _check_rate_limit(host: str, headers: Mapping[str, str]) -> None:
    """Docker Hub's `ratelimit-remaining: 12;w=21600` against `ratelimit-limit`; a
    number that is none (too many digits to be one) is as good as no header."""
    remaining = _RATE_LIMIT.match(headers.get("ratelimit-remaining", ""))
    limit = _RATE_LIMIT.match(headers.get("ratelimit-limit", ""))
    if remaining is None or limit is None:
        return
    left, of = decimal(remaining[1]), decimal(limit[1])
    if left is None or not of:
        return
    if left <= of * _RATE_LIMIT_LOW:
        log.warning(
            "registry.rate_limit_low",
            host=host,
            remaining=left,
            limit=of,
            window_seconds=decimal(limit[2]) if limit[2] else None,
        )
