"""Small helpers around anyio task groups."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise the first real error of an exception group on its own.

    anyio task groups always raise groups; callers of a transfer want the registry or
    content error that ended it, to report it and to decide whether to retry.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        raise _first(group) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if isinstance(exc, Exception):
            return exc
    return group.exceptions[0]
