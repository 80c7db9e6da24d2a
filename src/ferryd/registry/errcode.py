"""A registry's (or token service's) refusal in its own words, as docker reads them.

docker's distribution client (`registry/client/errors.go`, `HandleErrorResponse`) turns
a 4xx answer into an error code and a message, and dockerd shows them as
`code: message` (`denied: requested access to the resource is denied`). Where it looks,
in order:

1. a Bearer challenge with `error="invalid_token"` (UNAUTHORIZED) or
   `error="insufficient_scope"` (DENIED), worded by its `error_description`;
2. a JSON body with `details` (Docker Hub's token service) or with the distribution
   spec's `errors` list (the first one counts, as dockerd's translatePullError takes it);
3. anything else: the status says the code (401 UNAUTHORIZED, 403 DENIED, 429
   TOOMANYREQUESTS, else UNKNOWN) and the body is the message.

A 5xx is no refusal: `received unexpected HTTP status: 500 Internal Server Error`.
"""

from __future__ import annotations

import http
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferryd.untrusted import loads

if TYPE_CHECKING:
    from ferryd.registry.auth import Challenge

# The default message of each code (distribution's errcode descriptors).
_MESSAGES = {
    "UNAUTHORIZED": "authentication required",
    "DENIED": "requested access to the resource is denied",
    "TOOMANYREQUESTS": "too many requests",
    "UNKNOWN": "unknown error",
    "UNSUPPORTED": "The operation is unsupported.",
    "NAME_UNKNOWN": "repository name not known to registry",
    "MANIFEST_UNKNOWN": "manifest unknown",
    "BLOB_UNKNOWN": "blob unknown to registry",
}
_BY_STATUS = {401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}
_CHALLENGE_ERRORS = {"invalid_token": "UNAUTHORIZED", "insufficient_scope": "DENIED"}
_MAX_MESSAGE = 1024  # a body quoted as the message is cut here


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a registry said no with: its error code and dockerd's text for it."""

    code: str  # UNAUTHORIZED, DENIED, MANIFEST_UNKNOWN, …; "" for a 5xx
    text: str  # `denied: requested access to the resource is denied`


def _render(code: str, message: str) -> str:
    return f"{code.lower().replace('_', ' ')}: {message}"


def refusal(
    status: int, body: bytes, content_type: str | None, challenges: Sequence[Challenge] = ()
) -> Refusal:
    """The code and text dockerd would give for an answer with `status`, `body` and the
    `WWW-Authenticate` `challenges` it came with (`parse_challenges`; see the module)."""
    if not 400 <= status < 500:
        phrase = _phrase(status)
        return Refusal("", f"received unexpected HTTP status: {status} {phrase}".rstrip())
    for challenge in challenges:
        code = _CHALLENGE_ERRORS.get(challenge.params.get("error", ""))
        if challenge.scheme == "bearer" and code is not None:
            message = challenge.params.get("error_description") or _MESSAGES[code]
            return Refusal(code, _render(code, message))
    text = body[:_MAX_MESSAGE].decode(errors="replace")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in ("application/json", "application/vnd.api+json"):
        return _by_status(status, text)
    try:
        data = loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        details = data.get("details")
        if isinstance(details, str) and details:
            return _by_status(status, details)
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("code") or "UNKNOWN").upper()
            said = first.get("message")
            message = said if isinstance(said, str) and said else _MESSAGES.get(code, "")
            return Refusal(code, _render(code, message or "unknown error"))
    if status == 401:
        return Refusal("UNAUTHORIZED", _render("UNAUTHORIZED", _MESSAGES["UNAUTHORIZED"]))
    return Refusal("UNKNOWN", f"error parsing HTTP {status} response body: {json.dumps(text)}")


def _by_status(status: int, message: str) -> Refusal:
    code = _BY_STATUS.get(status, "UNKNOWN")
    return Refusal(code, _render(code, message))


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
