"""Sizes as docker prints them."""

from __future__ import annotations

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, precision: int = 4) -> str:
    """Decimal units, `precision` significant digits: `3.624MB`, as docker's units.HumanSize
    (HumanSizeWithPrecision): 1000 → `1kB`, 1024 → `1.024kB`, 1e28 → `1e+04YB`.
    """
    unit = 0
    while size >= 1000 and unit < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        unit += 1
    return f"{size:.{precision}g}{_DECIMAL_UNITS[unit]}"
