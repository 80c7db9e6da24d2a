"""Times in filters (`until=`) as dockerd reads them (its `timestamp.Parse`).

In order: a Go duration ago (`10m`, `1h30m`, `-1.5h`; `0` alone is not one), an RFC 3339
time or a shortened one (`2024-01-02`, `2024-01-02T15`, `2024-01-02T15:04`, with or
without seconds, fraction and zone; without a zone it is the daemon's local time), then
Unix seconds with an optional fraction (`1700000000.5`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

# A number is `\d+(?:\.\d*)?`, never `\d+\.?\d*`: that splits a run of digits between
# its two `\d`s in every way, and a long one with no unit took seconds per 10,000
# digits (a quadratic backtrack) on the event loop.
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"(?P<sign>[-+]?)(?P<parts>(?:{_NUMBER}{_UNIT})+)")
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DATE = r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"
_ZONE = r"(?P<zone>Z|[+-]\d{2}:\d{2})"
_CLOCK = {
    0: r"T(?P<hour>\d{1,2})",
    1: r"T(?P<hour>\d{1,2}):(?P<minute>\d{2})",
    2: r"T(?P<hour>\d{1,2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d+))?",
}
# Go's layouts, named in messages as dockerd names them.
_LAYOUTS = {
    (0, True): "2006-01-02T15",
    (1, True): "2006-01-02T15:04",
    (2, True): "2006-01-02T15:04:05.999999999",
    (0, False): "2006-01-02T15Z07:00",
    (1, False): "2006-01-02T15:04Z07:00",
    (2, False): "2006-01-02T15:04:05.999999999Z07:00",
}
_UNIX = re.compile(r"(?P<seconds>[-+]?\d+)(?:\.(?P<nanos>\d*))?")


class TimestampError(ValueError):
    """A value that is none of the forms dockerd reads; `str()` says why."""


def parse_timestamp(value: str, now: datetime) -> datetime:
    """`value` as an aware UTC datetime; durations count back from `now` (aware), and a
    time without a zone is in `now`'s zone."""
    if not value.strip():
        raise TimestampError("failed to parse value as time or duration: value is empty")
    duration = _GO_DURATION.fullmatch(value)
    if duration is not None and value != "0":
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit]
            for amount, unit in _DURATION_PART.findall(duration["parts"])
        )
        sign = -1 if duration["sign"] == "-" else 1
        try:
            return (now - timedelta(seconds=sign * seconds)).astimezone(UTC)
        except OverflowError:
            raise TimestampError(f"duration {value} is out of range") from None
    local = not any(c in value for c in "zZ+") and value.count("-") != 3
    zone: tzinfo | None = now.tzinfo if local else None
    pattern, layout = _layout(value, local)
    match = re.fullmatch(pattern, value)
    if match is not None:
        try:
            return _moment(match, zone)
        except OverflowError:  # year 1 or 9999 moved out of range by its zone
            raise TimestampError(f'parsing time "{value}": out of range') from None
        except ValueError as exc:
            raise TimestampError(f'parsing time "{value}" as "{layout}": {exc}') from None
    if "-" in value:  # it was meant as a date
        raise TimestampError(f'parsing time "{value}" as "{layout}": cannot parse')
    return _unix(value)


def _layout(value: str, local: bool) -> tuple[str, str]:
    """The pattern dockerd picks for `value` (by its dots, `T` and colons), and the Go
    layout it is called in messages."""
    zone = "" if local else _ZONE
    if "." in value or "T" in value:
        colons = value.count(":")
        if not local and not any(c in value for c in "zZ") and colons > 0:
            colons -= 1  # the zone's own colon
        colons = 2 if "." in value else min(colons, 2)
        return _DATE + _CLOCK[colons] + zone, _LAYOUTS[(colons, local)]
    return _DATE + zone, "2006-01-02" if local else "2006-01-02Z07:00"


def _moment(match: re.Match[str], zone: tzinfo | None) -> datetime:
    parts = match.groupdict()
    if parts.get("zone") is not None:
        text = parts["zone"]
        if text == "Z":
            zone = UTC
        else:
            sign = -1 if text[0] == "-" else 1
            hours, minutes = int(text[1:3]), int(text[4:6])
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    fraction = (parts.get("fraction") or "")[:6].ljust(6, "0")
    moment = datetime(
        int(parts["year"]),
        int(parts["month"]),
        int(parts["day"]),
        int(parts.get("hour") or 0),
        int(parts.get("minute") or 0),
        int(parts.get("second") or 0),
        int(fraction),
        tzinfo=zone or UTC,
    )
    return moment.astimezone(UTC)


def _unix(value: str) -> datetime:
    """`seconds[.fraction]`: the fraction is nanoseconds, padded or cut to nine digits."""
    match = _UNIX.fullmatch(value)
    if match is None:
        seconds = value.partition(".")[0]
        raise TimestampError(
            f'failed to parse value as time or duration: invalid seconds "{seconds}"'
            if not seconds.lstrip("+-").isdigit()
            else f'failed to parse value as time or duration: invalid nanoseconds in "{value}"'
        )
    nanos = int((match["nanos"] or "")[:9].ljust(9, "0"))
    try:
        moment = datetime.fromtimestamp(int(match["seconds"]), UTC)
    except (OverflowError, OSError, ValueError):
        raise TimestampError(f"timestamp {value} is out of range") from None
    return moment + timedelta(microseconds=nanos // 1000)
