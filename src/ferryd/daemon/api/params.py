"""What several routes read from a request the same way: the image service, dockerd's
boolean query parameters, the `X-Meta-*` headers passed on to registries, the client's
registry login, and JSON from a query parameter or body."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

from ferryd.distribution.service import ImageService
from ferryd.errors import InvalidRegistryAuthError
from ferryd.registry.auth import ANONYMOUS, Credentials, decode_registry_auth


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def load_json(text: str | bytes | bytearray) -> Any:
    """`json.loads`, refusing lone surrogates (LoneSurrogateError, a ValueError: callers
    already answer a ValueError from json.loads with their 400)."""
    value = json.loads(text)
    if _has_lone_surrogate(value):
        raise LoneSurrogateError
    return value


def has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


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


# A registry token goes into an Authorization header as it is: only visible ASCII and
# spaces can (a CR or LF would be refused by the HTTP library, as a connection failure).
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


def registry_auth(header: str | None) -> Credentials:
    """The client's `X-Registry-Auth` login (none: anonymous), refused with
    InvalidRegistryAuthError when a field could not be sent to a registry."""
    if not header:
        return ANONYMOUS
    return checked_credentials(decode_registry_auth(header), "X-Registry-Auth header")


def checked_credentials(credentials: Credentials, where: str) -> Credentials:
    """`credentials` when each field can be sent; InvalidRegistryAuthError naming the
    first that cannot (it would otherwise fail mid-pull, reported as a daemon bug)."""
    fields = {
        "username": credentials.username,
        "password": credentials.password,
        "identitytoken": credentials.identity_token,
        "registrytoken": credentials.registry_token,
    }
    for name, value in fields.items():
        if has_lone_surrogate(value):
            raise InvalidRegistryAuthError(
                f"invalid {where}: {name!r} holds an unpaired UTF-16 surrogate, not text"
            )
    if not _HEADER_SAFE.fullmatch(credentials.registry_token):
        raise InvalidRegistryAuthError(
            f"invalid {where}: 'registrytoken' must be printable ASCII (it is sent as an "
            "HTTP header)"
        )
    return credentials
