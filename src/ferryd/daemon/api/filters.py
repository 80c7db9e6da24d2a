"""The `filters` query parameter as dockerd reads it (its `filters.Args`).

Clients send a JSON object of filter names to values, in either of docker's two forms:
`{"dangling":["true"]}` (what docker-py and the docker CLI send today) or the older
`{"dangling":{"true":true}}`, where only the values set to true count. Each route
accepts its own names; any other is refused as dockerd refuses it ("invalid filter
'colour'").
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ferryd.daemon.api.params import LoneSurrogateError, load_json
from ferryd.errors import InvalidFilterError


@dataclass(frozen=True, slots=True)
class Filters:
    """Filter names and their values; a name may be given with no value at all."""

    fields: Mapping[str, frozenset[str]]

    @classmethod
    def parse(cls, text: str, accepted: Collection[str]) -> Filters:
        """Read `text` (empty: no filters); a name not in `accepted` is refused."""
        if not text:
            return cls({})
        try:
            raw = load_json(text)
        except LoneSurrogateError as exc:
            raise InvalidFilterError(f"invalid filter: {exc}") from None
        except ValueError:
            raise InvalidFilterError(f"invalid filter: {text!r} is not JSON") from None
        if not isinstance(raw, dict):
            raise InvalidFilterError("invalid filter: expected a JSON object of filter lists")
        fields: dict[str, frozenset[str]] = {}
        for key, values in raw.items():
            if key not in accepted:
                raise InvalidFilterError(f"invalid filter '{key}'")
            if isinstance(values, dict):
                values = [value for value, on in values.items() if on]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise InvalidFilterError(f"invalid filter '{key}': expected a list of strings")
            fields[key] = frozenset(values)
        return cls(fields)

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str) -> frozenset[str]:
        return self.fields.get(key, frozenset())

    def boolean(self, key: str, default: bool) -> bool:
        """`true`/`1` or `false`/`0` (dockerd's GetBoolOrDefault); `default` when the
        filter is not given; anything else, or both at once, is refused."""
        if key not in self.fields:
            return default
        values = self.fields[key]
        if not values:
            raise InvalidFilterError(f"invalid filter '{key}'")
        is_true = bool(values & {"1", "true"})
        is_false = bool(values & {"0", "false"})
        if is_true == is_false:
            raise InvalidFilterError(f"invalid filter '{key}={_go_list(values)}'")
        return is_true

    def match_labels(self, key: str, labels: Mapping[str, str] | None) -> bool:
        """Every `key` value (`name` or `name=value`) is among `labels` (dockerd's
        MatchKVList): true when the filter has no value, false when there are no
        labels to match."""
        wanted = self.fields.get(key)
        if not wanted:
            return True
        if not labels:
            return False
        for value in wanted:
            name, equals, expected = value.partition("=")
            if name not in labels or (equals and labels[name] != expected):
                return False
        return True


def _go_list(values: Collection[str]) -> str:
    """`[a b]`: how Go prints a list of strings in dockerd's messages."""
    return "[" + " ".join(sorted(values)) + "]"
