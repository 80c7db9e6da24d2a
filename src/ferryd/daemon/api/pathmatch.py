"""Go's `path.Match`, which dockerd's `reference` filter uses: `*` is any run of
characters but `/`, `?` one character but `/`, `[a-z]`/`[^a-z]` a class, `\\c` the
character c. The whole name must match. A malformed pattern is an error even where an
earlier part already failed to match, as in Go.

A port of Go's algorithm rather than a translation to `re` or `fnmatch` (whose `*`
crosses `/`), so that odd patterns match exactly what they match for dockerd.
"""

from __future__ import annotations


class BadPatternError(ValueError):
    """Go's ErrBadPattern."""

    def __init__(self) -> None:
        super().__init__("syntax error in pattern")


def path_match(pattern: str, name: str) -> bool:
    """Does `name` match the shell pattern `pattern` (Go's path.Match)?"""
    while pattern:
        star, chunk, pattern = _scan_chunk(pattern)
        if star and not chunk:
            return "/" not in name  # a trailing * matches the rest unless it has a /
        rest = _match_chunk(chunk, name)
        # The last chunk must use up the name; an earlier one may leave some for a star.
        if rest is not None and (not rest or pattern):
            name = rest
            continue
        if star:
            matched = False
            for i in range(len(name)):
                if name[i] == "/":  # a star cannot skip a /
                    break
                rest = _match_chunk(chunk, name[i + 1 :])
                if rest is not None:
                    if not pattern and rest:
                        continue
                    name = rest
                    matched = True
                    break
            if matched:
                continue
        while pattern:  # the rest of the pattern must be well formed, matched or not
            _, chunk, pattern = _scan_chunk(pattern)
            _match_chunk(chunk, "")
        return False
    return not name


def _scan_chunk(pattern: str) -> tuple[bool, str, str]:
    """(a star came first, the run up to the next star outside a class, what follows)."""
    star = False
    while pattern.startswith("*"):
        pattern = pattern[1:]
        star = True
    in_range = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 < len(pattern):
                i += 1
        elif c == "[":
            in_range = True
        elif c == "]":
            in_range = False
        elif c == "*" and not in_range:
            break
        i += 1
    return star, pattern[:i], pattern[i:]


def _match_chunk(chunk: str, s: str) -> str | None:
    """What is left of `s` after `chunk` (no stars) matches its start, or None. The
    chunk is read to its end even after a mismatch, to find a malformed one."""
    failed = False
    while chunk:
        if not failed and not s:
            failed = True
        c = chunk[0]
        if c == "[":
            r = ""
            if not failed:
                r, s = s[0], s[1:]
            chunk = chunk[1:]
            negated = chunk.startswith("^")
            if negated:
                chunk = chunk[1:]
            match = False
            ranges = 0
            while True:
                if chunk.startswith("]") and ranges > 0:
                    chunk = chunk[1:]
                    break
                lo, chunk = _class_char(chunk)
                hi = lo
                if chunk[0] == "-":
                    hi, chunk = _class_char(chunk[1:])
                if lo <= r <= hi:
                    match = True
                ranges += 1
            if match == negated:
                failed = True
        elif c == "?":
            if not failed:
                if s[0] == "/":
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
        else:
            if c == "\\":
                chunk = chunk[1:]
                if not chunk:
                    raise BadPatternError
            if not failed:
                if chunk[0] != s[0]:
                    failed = True
                s = s[1:]
            chunk = chunk[1:]
    return None if failed else s


def _class_char(chunk: str) -> tuple[str, str]:
    """One character of a class (`\\` escapes), and what follows it; a class must not
    end there."""
    if not chunk or chunk[0] in "-]":
        raise BadPatternError
    if chunk[0] == "\\":
        chunk = chunk[1:]
        if not chunk:
            raise BadPatternError
    rest = chunk[1:]
    if not rest:
        raise BadPatternError
    return chunk[0], rest
