"""Sizes as docker prints them."""

from __future__ import annotations


def human_size(size: float, precision: int = 4) -> str:
    """Decimal units, `precision` significant digits: `3.624MB`, as docker's units.HumanSize."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.{precision}g}{unit}"
        size /= 1000
    raise AssertionError("unreachable")
