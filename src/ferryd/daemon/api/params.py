"""What several routes read from a request the same way: the image service, dockerd's
boolean query parameters, the `X-Meta-*` headers passed on to registries, the client's
registry login, and JSON from a query parameter or body."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ferryd.distribution.service import ImageService
from ferryd.registry.auth import Credentials, decode_registry_auth
from ferryd.untrusted import has_lone_surrogate, loads


def service(request: Request) -> ImageService:
    found: ImageService = request.app.state.service
    return found


def flag(value: str) -> bool:
    """dockerd's BoolValue: anything but empty, `0`, `no`, `false` or `none` is true."""
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def meta_headers(request: Request) -> dict[str, str]:
    """The client's `X-Meta-*` headers, which dockerd sends on to the registry."""
    return {k: v for k, v in request.headers.items() if k.lower().startswith("x-meta-")}


class LoneSurrogateError(ValueError):
    """JSON text with a `\\ud800`-style escape that pairs with nothing: Python keeps it
    as a lone surrogate, which no UTF-8 text (an answer, a log line, a request to a
    registry) can hold, so every use of the value would fail later, as a crash."""

    def __init__(self) -> None:
        super().__init__("a \\u escape is an unpaired UTF-16 surrogate (not a character)")


def load_json(text: str | bytes | bytearray) -> Any:
    """`json.loads`, refusing lone surrogates (LoneSurrogateError, a ValueError: callers
    already answer a ValueError from json.loads with their 400)."""
    value = loads(text)
    if _has_lone_surrogate(value):
        raise LoneSurrogateError
    return value


def _has_lone_surrogate(value: object) -> bool:
    # A loop, not recursion: json.loads takes nesting nearly as deep as the stack.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def registry_auth(header: str | None) -> Credentials:
    """The client's `X-Registry-Auth` login (none: anonymous), refused with
    InvalidRegistryAuthError when a field could not be sent to a registry."""
    return decode_registry_auth(header or "")  # each field checked: it can be sent
