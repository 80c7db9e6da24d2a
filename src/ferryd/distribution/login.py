"""`docker login` through the daemon: check a client's login against its registry.

dockerd's `AuthenticateToRegistry`: the server address names the registry (a URL or
`host[:port]`; empty or Docker Hub's `https://index.docker.io/v1/` is Docker Hub), and
the login is checked against the registry's own endpoints, never a mirror. Nothing is
stored: the client keeps its login (the docker CLI in its `config.json`). Only the
client's own login is sent, never the daemon's `credentials_file`.
"""

from __future__ import annotations

import re
import time

import structlog

from ferryd.errors import BadRequestError, FerrydError
from ferryd.oci.reference import DEFAULT_DOMAIN
from ferryd.registry.auth import Credentials, registry_domain
from ferryd.registry.connector import Connector
from ferryd.registry.login import check_login

log = structlog.get_logger("ferryd.login")

_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(\d+))?")


def login_domain(server: str) -> str:
    """The registry a server address names (`docker.io` for none), or BadRequestError."""
    if not server.strip():
        return DEFAULT_DOMAIN
    domain = registry_domain(server)
    match = _HOST.fullmatch(domain)
    if match is None or (match.group(1) is not None and not 0 < int(match.group(1)) <= 65535):
        raise BadRequestError(f"unable to parse server address: {server!r} names no registry")
    return domain


async def login(connector: Connector, credentials: Credentials, server: str) -> str:
    """Check `credentials` against the registry `server` names; the identity token the
    client should keep in place of its password ("" when there is none).

    One `registry.login` line (or `registry.login_failed`, with the reason) says who
    logged in where; the password and tokens are never logged.
    """
    domain = login_domain(server)
    started = time.monotonic()
    try:
        identity_token = await check_login(connector, domain, credentials)
    except FerrydError as exc:
        log.warning(
            "registry.login_failed",
            registry=domain,
            username=credentials.username,
            error=str(exc),
            seconds=round(time.monotonic() - started, 3),
        )
        raise
    log.info(
        "registry.login",
        registry=domain,
        username=credentials.username,
        identity_token=bool(identity_token),
        seconds=round(time.monotonic() - started, 3),
    )
    return identity_token
