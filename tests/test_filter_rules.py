"""dockerd's rules for filter values, unit by unit: the `filters` JSON (both forms),
booleans and labels (filters.Args), Go's path.Match for `reference`, and the times
`until` takes (timestamp.Parse)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ferryd.daemon.api.filters import Filters
from ferryd.daemon.api.pathmatch import BadPatternError, path_match
from ferryd.daemon.api.timestamps import TimestampError, parse_timestamp
from ferryd.errors import InvalidFilterError

KEYS = {"dangling", "label", "reference"}


@pytest.mark.parametrize(
    "text",
    [
        '{"dangling": ["true"], "label": ["a=b", "c"]}',
        '{"dangling": {"true": true}, "label": {"a=b": true, "c": true, "off": false}}',
    ],
    ids=["lists", "legacy-maps"],
)
def test_both_json_forms_read_the_same(text: str) -> None:
    filters = Filters.parse(text, KEYS)

    assert filters.get("dangling") == {"true"}
    assert filters.get("label") == {"a=b", "c"}
    assert "reference" not in filters


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid filter: '{not json' is not JSON"),
        ("[]", "expected a JSON object"),
        ('{"colour": ["red"]}', "invalid filter 'colour'"),
        ('{"label": "a"}', "invalid filter 'label': expected a list of strings"),
    ],
)
def test_unreadable_filters_and_unknown_names_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        Filters.parse(text, KEYS)


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["true"], True), (["1"], True), (["false"], False), (["0"], False)],
)
def test_a_boolean_filter_takes_true_false_1_and_0(values: list[str], expected: bool) -> None:
    filters = Filters({"dangling": frozenset(values)})

    assert filters.boolean("dangling", not expected) is expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["maybe"], r"invalid filter 'dangling=\[maybe\]'"),
        (["true", "false"], r"invalid filter 'dangling=\[false true\]'"),
        ([], r"invalid filter 'dangling'$"),
    ],
)
def test_a_boolean_filter_refuses_other_or_conflicting_values(
    values: list[str], message: str
) -> None:
    filters = Filters({"dangling": frozenset(values)})

    with pytest.raises(InvalidFilterError, match=message):
        filters.boolean("dangling", False)


def test_an_absent_boolean_filter_is_its_default() -> None:
    assert Filters({}).boolean("dangling", True) is True


@pytest.mark.parametrize(
    ("wanted", "labels", "matches"),
    [
        (["team"], {"team": "x"}, True),
        (["team=x"], {"team": "x"}, True),
        (["team=y"], {"team": "x"}, False),
        (["team", "tier=web"], {"team": "x", "tier": "web"}, True),
        (["team", "tier=web"], {"team": "x"}, False),
        (["team"], {}, False),
        ([], {}, True),
    ],
)
def test_labels_match_every_key_or_key_value(
    wanted: list[str], labels: dict[str, str], matches: bool
) -> None:
    filters = Filters({"label": frozenset(wanted)}) if wanted else Filters({})

    assert filters.match_labels("label", labels) is matches


# Go's own table (src/path/match_test.go), as dockerd's reference filter sees it.
GO_MATCH_CASES = [
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", False),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "a*b", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("[a-ζ]*", "α", True),
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]
GO_BAD_PATTERNS = ["[]a]", "[-]", "[x-]", "[-x]", "\\", "[a-b-c]", "[", "[^", "[^bc", "a["]


@pytest.mark.parametrize(("pattern", "name", "matches"), GO_MATCH_CASES)
def test_reference_globs_match_as_go_path_match(pattern: str, name: str, matches: bool) -> None:
    assert path_match(pattern, name) is matches


@pytest.mark.parametrize("pattern", GO_BAD_PATTERNS)
def test_malformed_globs_are_errors_as_in_go(pattern: str) -> None:
    with pytest.raises(BadPatternError, match="syntax error in pattern"):
        path_match(pattern, "a")


NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10m", datetime(2024, 6, 1, 9, 50, tzinfo=UTC)),
        ("1h30m", datetime(2024, 6, 1, 8, 30, tzinfo=UTC)),
        ("1.5h", datetime(2024, 6, 1, 8, 30, tzinfo=UTC)),
        ("-1h", datetime(2024, 6, 1, 11, 0, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("1700000000.5", datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)),
        ("2024-01-02", datetime(2024, 1, 1, 22, 0, tzinfo=UTC)),  # local: NOW's +02:00
        ("2024-01-02T15", datetime(2024, 1, 2, 13, 0, tzinfo=UTC)),
        ("2024-01-02T15:04", datetime(2024, 1, 2, 13, 4, tzinfo=UTC)),
        ("2024-01-02T15:04:05", datetime(2024, 1, 2, 13, 4, 5, tzinfo=UTC)),
        ("2024-01-02T15:04:05.25", datetime(2024, 1, 2, 13, 4, 5, 250000, tzinfo=UTC)),
        ("2024-01-02T15:04:05Z", datetime(2024, 1, 2, 15, 4, 5, tzinfo=UTC)),
        ("2024-01-02T15:04:05.5Z", datetime(2024, 1, 2, 15, 4, 5, 500000, tzinfo=UTC)),
        ("2024-01-02T15:04:05-05:00", datetime(2024, 1, 2, 20, 4, 5, tzinfo=UTC)),
        ("2024-01-02T15:04+01:00", datetime(2024, 1, 2, 14, 4, tzinfo=UTC)),
        ("2024-01-02Z", datetime(2024, 1, 2, tzinfo=UTC)),
    ],
)
def test_until_takes_durations_rfc3339_and_unix_times_as_dockerd(
    value: str, expected: datetime
) -> None:
    assert parse_timestamp(value, NOW) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "value is empty"),
        ("yesterday", 'invalid seconds "yesterday"'),
        ("10x", 'invalid seconds "10x"'),
        ("2024-13-01", 'parsing time "2024-13-01"'),
        ("2024-01-02T25:00:00Z", 'parsing time "2024-01-02T25:00:00Z"'),
    ],
)
def test_until_refuses_what_dockerd_refuses(value: str, message: str) -> None:
    with pytest.raises(TimestampError, match=message):
        parse_timestamp(value, NOW)
