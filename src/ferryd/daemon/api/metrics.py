"""`GET /metrics` (ferryd's own, permission `read`), and the count of API requests.

The scrape reads what is running from the managers on the event loop (a few `len()`s),
then measures the store and renders the text format in one worker thread. Requests are
counted by route *template* (`/images/{name}/json`), never by path: a label per image
name would grow without bound.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ferryd.daemon.state import DaemonState
from ferryd.distribution.service import ImageService
from ferryd.metrics import Live, Metrics

UNMATCHED = "other"  # no route serves the path (a 404)
UNSUPPORTED = "unsupported"  # what ferryd does not do (containers, builds…): a 501

_CONVERTER = re.compile(r"\{(\w+):\w+\}")


async def metrics(request: Request) -> Response:
    service: ImageService = request.app.state.service
    state: DaemonState = request.app.state.daemon
    transfers = {"download": service.downloads.active, "upload": service.uploads.active}
    jobs = Counter(job.action for job in service.jobs.jobs())

    def render() -> bytes:
        size, count = service.store.blobs.usage()
        lag = state.loop_lag
        return state.metrics.render(
            Live(transfers, jobs, size, count, loop_lag=lag.latest, loop_lag_max=lag.largest)
        )

    body = await anyio.to_thread.run_sync(render)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def route_template(routes: Sequence[BaseRoute], method: str, path: str) -> str:
    """The template of the route that serves `method path` (`path` without `/v1.NN`),
    as the router picks it: the first full match, else the first route that serves the
    path with another method (a 405); `UNSUPPORTED` or `UNMATCHED` otherwise."""
    scope: Scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    other_method: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _template(route)
        if match is Match.PARTIAL and other_method is None:
            other_method = route
    return _template(other_method) if other_method is not None else UNMATCHED


def _template(route: BaseRoute) -> str:
    if isinstance(route, Route):
        return _CONVERTER.sub(r"{\1}", route.path)  # `{name:path}` → `{name}`
    return UNSUPPORTED


class RequestMetrics:
    """ASGI middleware, outermost: counts every request once its answer is sent (or
    it ended without one: status 0), by method, route template and status. A refused
    request (403) counts under the route it asked for."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        routes: Sequence[BaseRoute],
        route_path: Callable[[str], str] = lambda path: path,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._routes = routes
        self._route_path = route_path
        # The paths without parameters, looked up at once (matching every route takes
        # 10-30 µs); each worked out as a request would be, so that they agree.
        self._fixed = {
            (method, route.path): route_template(routes, method, route.path)
            for route in routes
            if isinstance(route, Route) and "{" not in route.path
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 0

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, answer)
        finally:
            method, path = scope["method"], self._route_path(scope["path"])
            route = self._fixed.get((method, path)) or route_template(self._routes, method, path)
            self._metrics.api_requests.labels(method, route, str(status)).inc()
