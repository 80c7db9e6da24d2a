"""Routes with dockerd's answers for what the route table does not serve.

- `OwnMethodsRoute`: `DELETE /images/{name}` takes every path under `/images/` (a
  repository may be called `x/get` or `x/history`), so as a plain route it turned
  `GET /images/x/unknown` into a 405 "method not allowed". It matches its own
  methods only: a path no route serves with any method is a 404, while a path that
  another route serves with another method (`POST /images/json`) is still a 405. It
  goes last among the image routes so that every specific one is tried first.
- `NotSupported`: what dockerd serves and ferryd does not (containers, exec, volumes,
  networks, builds, swarm, plugins, registry search) answers 501 with one sentence
  (`docker run` prints it), instead of a 404 that reads like a bug.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import URLPath
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from ferryd.errors import NotSupportedError


class OwnMethodsRoute(Route):
    """A route that does not claim paths it serves with none of the asked method."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.PARTIAL:
            return Match.NONE, {}
        return match, child_scope


# (path, methods or None for every method, what ferryd does not do): a path matches
# itself and everything under it.
UNSUPPORTED: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("/containers", None, "running containers"),
    ("/exec", None, "running commands in containers"),
    ("/commit", None, "committing containers"),
    ("/volumes", None, "managing volumes"),
    ("/networks", None, "managing networks"),
    ("/build", None, "building images"),
    ("/session", None, "building images"),
    ("/grpc", None, "building images"),
    ("/swarm", None, "swarm mode"),
    ("/services", None, "swarm mode"),
    ("/nodes", None, "swarm mode"),
    ("/tasks", None, "swarm mode"),
    ("/secrets", None, "swarm mode"),
    ("/configs", None, "swarm mode"),
    ("/plugins", None, "managing plugins"),
    # Only GET: `DELETE /images/search` removes an image called `search`.
    ("/images/search", frozenset({"GET", "HEAD"}), "searching registries"),
)


def not_supported_message(what: str) -> str:
    return f"ferryd manages images only: {what} is not supported"


class NotSupported(BaseRoute):
    """Every path of `UNSUPPORTED`: 501 with `not_supported_message`."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        what = unsupported(scope["method"], scope["path"])
        if what is None:
            return Match.NONE, {}
        return Match.FULL, {"ferryd.unsupported": what}

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotSupportedError(not_supported_message(scope["ferryd.unsupported"]))


def unsupported(method: str, path: str) -> str | None:
    """What `method path` asks that ferryd does not do, or None."""
    for prefix, methods, what in UNSUPPORTED:
        if (path == prefix or path.startswith(prefix + "/")) and (
            methods is None or method in methods
        ):
            return what
    return None
