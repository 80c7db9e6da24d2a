"""Checking a login against a registry, as dockerd's registry service does (`loginV2`).

For each endpoint of the registry (never a mirror: a login is for the registry alone),
in order while they cannot be reached:

1. ping `GET /v2/`: 200 needs no login; a 401 names the scheme to answer;
2. Basic: `GET /v2/` with the username and password;
   Bearer: a token from the realm, asked as docker asks it with `offline_token=true`
   and `client_id=docker` (a GET with Basic auth, or, with an identity token, an OAuth2
   `refresh_token` grant), then `GET /v2/` with it;
3. 200 is a good login. A token service that answers with a `refresh_token` has given
   an identity token: docker stores it in place of the password.

Refusals are worded as dockerd words them: `login attempt to https://host/v2/ failed
with status: 401 Unauthorized` when the registry refuses, `Get "https://host/v2/":
unauthorized: incorrect username or password` when its token service does (both 401).
"""

from __future__ import annotations

import http

import httpx
import structlog

from ferryd.errors import (
    AuthenticationError,
    AuthorizationError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooLargeError,
    TransientRegistryError,
)
from ferryd.registry.auth import (
    MAX_TOKEN,
    Credentials,
    basic_authorization,
    check_realm,
    check_token,
    parse_challenges,
    response_refusal,
    token_answer,
)
from ferryd.registry.bodies import read_error_body
from ferryd.registry.client import transport_error
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import Endpoint
from ferryd.registry.wire import check_port
from ferryd.untrusted import loads

log = structlog.get_logger("ferryd.registry")

CLIENT_ID = "docker"  # what dockerd tells token services it is (AuthClientID)


async def check_login(connector: Connector, domain: str, credentials: Credentials) -> str:
    """Log in to the registry `domain` with `credentials`; the identity token to keep
    ("" when the token service gave none, the one given when it gave no new one)."""
    failures: list[str] = []
    for endpoint in await connector.service.endpoints(domain):
        try:
            return await _login(connector, endpoint, credentials)
        except RegistryUnreachableError as exc:
            failures.append(str(exc))
    raise RegistryUnreachableError("; ".join(failures) or f"no endpoint for {domain}")


async def _login(connector: Connector, endpoint: Endpoint, credentials: Credentials) -> str:
    client = connector.http_client(endpoint)
    base = f"{endpoint.base_url}/v2/"
    status, headers, _ = await _get(client, endpoint, base, {})
    if status == 200:
        return credentials.identity_token
    challenges = parse_challenges(headers.get("www-authenticate") or "") if status == 401 else []
    schemes = {challenge.scheme: challenge for challenge in challenges}
    identity = credentials.identity_token
    if "bearer" in schemes:
        token, identity = await _token(connector, endpoint, schemes["bearer"].params, credentials)
        authorization = f"Bearer {token}"
    elif "basic" in schemes and credentials.username and credentials.password:
        authorization = basic_authorization(credentials.username, credentials.password)
    elif "basic" in schemes:
        error = AuthorizationError(f'Get "{base}": no basic auth credentials')
        error.reason = "no basic auth credentials"
        raise error
    else:
        raise _failed(base, status)
    status, _, _ = await _get(client, endpoint, base, {"Authorization": authorization})
    if status != 200:
        raise _failed(base, status)
    return identity


def _failed(url: str, status: int) -> RegistryError:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    message = f"login attempt to {url} failed with status: {status} {phrase}".rstrip()
    return AuthenticationError(message) if status == 401 else RegistryError(message)


async def _get(
    client: httpx.AsyncClient, endpoint: Endpoint, url: str, headers: dict[str, str]
) -> tuple[int, httpx.Headers, bytes]:
    try:
        async with client.stream("GET", url, headers=headers) as response:
            body = await read_error_body(response, "the registry's answer to a login")
    except httpx.TransportError as exc:
        raise transport_error(exc, endpoint, "the answer to a login") from None
    return response.status_code, response.headers, body


async def _token(
    connector: Connector, endpoint: Endpoint, params: dict[str, str], credentials: Credentials
) -> tuple[str, str]:
    """A token for no scope at all (a login asks for none) and the identity token to
    keep; a refusal is the login's failure."""
    base = f"{endpoint.base_url}/v2/"
    realm = params.get("realm", "")
    try:
        url = httpx.URL(realm)
        if url.scheme not in ("http", "https") or not url.host:
            raise httpx.InvalidURL(realm)
        check_port(realm)
    except httpx.InvalidURL:
        raise RegistryProtocolError(
            f"{endpoint.domain} asked for a bearer token from {realm!r}, which is no URL"
        ) from None
    # As every credential ferryd sends (see `Authenticator`).
    await check_realm(url, endpoint.domain, endpoint.host, connector.service.is_insecure)
    client = connector.http_client(endpoint)
    service = params.get("service", "")
    if credentials.identity_token:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": credentials.identity_token,
            "service": service,
            "scope": "",
            "client_id": CLIENT_ID,
        }
        request = client.build_request("POST", url, data=form)
    else:
        query = {"offline_token": "true", "client_id": CLIENT_ID}
        if service:
            query["service"] = service
        if credentials.username and credentials.password:
            query["account"] = credentials.username
        request = client.build_request("GET", url.copy_merge_params(query))
        if credentials.username and credentials.password:
            request.headers["Authorization"] = basic_authorization(
                credentials.username, credentials.password
            )
    if not credentials.anonymous:
        log.info("registry.credentials_sent", registry=endpoint.domain, host=url.netloc.decode())
    response, body = await token_answer(client, request, endpoint.domain, realm)
    status = response.status_code
    if status != 200:
        said = response_refusal(response, body)
        if status >= 500:
            raise TransientRegistryError(f'Get "{base}": {said.text}')
        error = AuthorizationError(f'Get "{base}": {said.text}')
        error.reason = said.text
        raise error
    return _read_token(body, endpoint.domain, credentials.identity_token)


def _read_token(body: bytes, domain: str, identity: str) -> tuple[str, str]:
    try:
        answer = loads(body)
        token = answer.get("token") or answer.get("access_token")
        refresh = answer.get("refresh_token") or identity
    except (ValueError, AttributeError):
        token = refresh = None
    if not isinstance(token, str) or not token or not isinstance(refresh, str):
        raise AuthenticationError(f"{domain}: the token service sent no token")
    if len(token) > MAX_TOKEN or len(refresh) > MAX_TOKEN:
        raise TooLargeError(
            f"{domain}: the token service sent a token over the limit of {MAX_TOKEN} characters"
        )
    check_token(token, domain)  # it goes into the next request's Authorization header
    return token, refresh
