"""Sizes printed as docker prints them (go-units HumanSize / HumanSizeWithPrecision)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryd.units import human_size

KB, MB, GB, TB, PB = 1000, 1000**2, 1000**3, 1000**4, 1000**5


@pytest.mark.parametrize(
    ("size", "text"),
    [
        # go-units' own TestHumanSize
        (1000, "1kB"),
        (1024, "1.024kB"),
        (1000000, "1MB"),
        (1048576, "1.049MB"),
        (2 * MB, "2MB"),
        (3.42 * GB, "3.42GB"),
        (5.372 * TB, "5.372TB"),
        (2.22 * PB, "2.22PB"),
        (10000000000000 * PB, "1e+04YB"),
        # and around the edges
        (0, "0B"),
        (1, "1B"),
        (1.5, "1.5B"),
        (999, "999B"),
        (999.9, "999.9B"),
        (999_999, "1000kB"),  # 999.999 rounds up to 4 digits but stays in kB, as in Go
        (7_340_032, "7.34MB"),
        (3_623_878, "3.624MB"),
        (1 * 1000**6, "1EB"),
        (1 * 1000**7, "1ZB"),
        (1 * 1000**8, "1YB"),
        # Go never divides a negative size
        (-1, "-1B"),
        (-1500, "-1500B"),
    ],
)
def test_human_size_like_docker(size: float, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("size", "precision", "text"),
    [
        (1234567, 3, "1.23MB"),
        (1234567, 2, "1.2MB"),
        (1234567, 1, "1MB"),
        (500, 2, "5e+02B"),  # %.2g, as Go prints it
        (7_340_032, 3, "7.34MB"),
        (999_500, 3, "1e+03kB"),
    ],
)
def test_human_size_with_precision(size: float, precision: int, text: str) -> None:
    assert human_size(size, precision) == text


def test_integer_and_float_sizes_print_the_same() -> None:
    assert human_size(2048) == human_size(2048.0) == "2.048kB"


@settings(derandomize=True, max_examples=300)
@given(st.integers(min_value=0, max_value=10**27))
def test_the_number_shown_is_below_1000_of_its_unit(size: int) -> None:
    text = human_size(size)
    number = text.rstrip("BkMGTPEZY")
    assert 0 <= float(number) <= 1000
    unit = text[len(number) :]
    assert unit in {"B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"}
