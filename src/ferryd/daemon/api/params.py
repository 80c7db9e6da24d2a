"""What several routes read from a request the same way: the image service, dockerd's
boolean query parameters, and the `X-Meta-*` headers passed on to registries."""

from __future__ import annotations

from starlette.requests import Request

from ferryd.distribution.service import ImageService


def service(request: Request) -> ImageService:
    found: ImageService = request.app.state.service
    return found


def flag(value: str) -> bool:
    """dockerd's BoolValue: anything but empty, `0`, `no`, `false` or `none` is true."""
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def meta_headers(request: Request) -> dict[str, str]:
    """The client's `X-Meta-*` headers, which dockerd sends on to the registry."""
    return {k: v for k, v in request.headers.items() if k.lower().startswith("x-meta-")}
