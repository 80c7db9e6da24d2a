"""The API version a request asks for by its `/v1.NN` prefix (moby v28
api/server/middleware/version.go): routes answer clients of older versions with the
fields dockerd still writes for them (`shapes.with_legacy_inspect_fields`)."""

from __future__ import annotations

from starlette.requests import Request

from ferryd.daemon.api.system import API_VERSION, MIN_API_VERSION

# Where the version prefix's reader leaves the asked version for the routes.
SCOPE_KEY = "ferryd.api_version"

Version = tuple[int, int]


def _version(text: str) -> Version:
    major, minor = text.split(".")
    return int(major), int(minor)


CURRENT = _version(API_VERSION)
MINIMUM = _version(MIN_API_VERSION)


def asked_version(request: Request) -> Version:
    """The version of the request's prefix; without one the newest, as dockerd."""
    version: Version = request.scope.get(SCOPE_KEY, CURRENT)
    return version
