"""Registry credentials and the answer to a registry's `WWW-Authenticate` challenge.

Anonymous, Basic, and Bearer (the token flow of the distribution spec: ask the realm
for a token for a scope, cache it until it expires, fetch a new one on a 401).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from ferryd.errors import (
    AuthenticationError,
    InvalidRegistryAuthError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooManyRequestsError,
    TransientRegistryError,
)
from ferryd.oci.reference import DEFAULT_DOMAIN

_TOKEN_MIN_LIFETIME = 60.0  # seconds, as the token spec says when expires_in is absent
_EXPIRY_MARGIN = 5.0
# A challenge is `scheme param=value, ...`; several may share one header (httpx joins
# repeated WWW-Authenticate headers with ", "). A word followed by "=" is a parameter,
# any other word starts the next challenge.
_CHALLENGE_WORD = re.compile(r'[\s,]*([^\s,="]+)\s*')
_CHALLENGE_VALUE = re.compile(r'=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client gave us to log in with. `repr` never shows secrets."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.identity_token or self.registry_token)


ANONYMOUS = Credentials()


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lower case
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    """The challenge to answer in a `WWW-Authenticate` value: Bearer before Basic, as
    docker prefers it; None when absent or of no scheme we can answer.
    """
    challenges = parse_challenges(header or "")
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a `WWW-Authenticate` value, in order, schemes in lower case."""
    challenges: list[Challenge] = []
    params: dict[str, str] | None = None
    position = 0
    while word := _CHALLENGE_WORD.match(header, position):
        position = word.end()
        value = _CHALLENGE_VALUE.match(header, position)
        if value is None:
            params = {}
            challenges.append(Challenge(word.group(1).lower(), params))
            continue
        position = value.end()
        quoted, bare = value.group(1), value.group(2)
        if params is not None:
            params[word.group(1).lower()] = (
                re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
            )
    return challenges


def decode_registry_auth(header: str) -> Credentials:
    """Decode the `X-Registry-Auth` header the docker CLI sends (base64url JSON)."""
    header = header.strip()
    if not header:
        return ANONYMOUS
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        data = json.loads(raw) if raw.strip() else {}
    except (binascii.Error, ValueError) as exc:
        raise InvalidRegistryAuthError(
            f"invalid X-Registry-Auth header: expected base64url-encoded JSON ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRegistryAuthError("invalid X-Registry-Auth header: expected a JSON object")
    return credentials_from_entry(data, "X-Registry-Auth header")


def registry_domain(server: str) -> str:
    """`https://index.docker.io/v1/` → `docker.io`; `https://host:5000/` → `host:5000`."""
    host = server.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].lower()
    if host in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        return DEFAULT_DOMAIN
    return host


def credentials_from_entry(entry: dict[str, Any], where: str) -> Credentials:
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if encoded and not username:
        try:
            username, sep, password = base64.b64decode(str(encoded)).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise InvalidRegistryAuthError(f"{where}: 'auth' is not base64 of user:password")
    return Credentials(
        username=username,
        password=password,
        identity_token=str(entry.get("identitytoken") or ""),
        registry_token=str(entry.get("registrytoken") or ""),
    )


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Answers one registry's challenges with one set of credentials.

    Shared by every request to that registry with those credentials, so that a bearer
    token fetched for a scope serves all of them until it expires.
    """

    def __init__(self, http: httpx.AsyncClient, registry: str, credentials: Credentials) -> None:
        self._http = http
        self._registry = registry
        self._credentials = credentials
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, anyio.Lock] = {}

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    def set_challenge(self, challenge: Challenge | None) -> None:
        self._challenge = challenge

    async def headers(self, scope: str) -> dict[str, str]:
        """The Authorization header for a request in `scope`, fetching a token if needed."""
        challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            return {"Authorization": "Basic " + self._basic()}
        if self._credentials.registry_token:
            return {"Authorization": "Bearer " + self._credentials.registry_token}
        token = await self._token(scope)
        return {"Authorization": "Bearer " + token}

    def reject(self, scope: str, challenge: Challenge | None, sent: str | None) -> bool:
        """A request in `scope` that sent the Authorization `sent` (None: none) got a
        401 with `challenge`: forget the token it used; can a retry help?

        Requests refused together (a token the registry stopped accepting) all retry:
        the first drops the token, the others find theirs already gone or replaced, and
        all of them wait for the one new token.
        """
        cached = self._tokens.get(scope)
        if cached is not None and sent == f"Bearer {cached.value}":
            del self._tokens[scope]
        static = self._credentials.registry_token
        fetched = sent is not None and sent.startswith("Bearer ") and sent != f"Bearer {static}"
        if challenge is None:
            return False
        changed = challenge != self._challenge
        self._challenge = challenge
        # Sent nothing: we have just learnt that (and how) we must authenticate.
        return changed or fetched or sent is None

    def _basic(self) -> str:
        creds = self._credentials
        if not creds.username:
            raise AuthenticationError(
                f"{self._registry} requires authentication: give a username and password"
            )
        return base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()

    async def _token(self, scope: str) -> str:
        lock = self._locks.setdefault(scope, anyio.Lock())
        async with lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached.expires_at > time.monotonic():
                return cached.value
            token = await self._fetch_token(scope)
            self._tokens[scope] = token
            return token.value

    async def _fetch_token(self, scope: str) -> _Token:
        assert self._challenge is not None
        params = self._challenge.params
        realm = params.get("realm")
        if not realm:
            raise RegistryProtocolError(
                f"{self._registry} asked for a bearer token without a realm"
            )
        service = params.get("service", "")
        creds = self._credentials
        try:
            if creds.identity_token:
                response = await self._http.post(
                    realm,
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": creds.identity_token,
                        "service": service,
                        "scope": scope,  # space-separated, as OAuth2 writes several
                        "client_id": "ferryd",
                    },
                )
            else:
                # Several scopes (a push that mounts from another repository) are
                # several `scope` parameters, as the token spec has it.
                query: dict[str, str | list[str]] = {"scope": scope.split()}
                if service:
                    query["service"] = service
                if creds.username:
                    query["account"] = creds.username
                auth = (creds.username, creds.password) if creds.username else None
                # Merged, not `params=`: that would drop a query the realm already has.
                url = httpx.URL(realm).copy_merge_params(query)
                response = await self._http.get(url, auth=auth)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise RegistryProtocolError(
                f"{self._registry}: cannot use the token realm {realm!r}: {exc}"
            ) from None
        except httpx.HTTPError as exc:
            # Worth retrying, as any other failure to reach the registry is.
            raise RegistryUnreachableError(
                f"cannot reach the token service of {self._registry} at {realm}: "
                f"{str(exc) or type(exc).__name__}"
            ) from None
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationError(
                f"{self._registry}: the token service refused "
                + (
                    "anonymous access"
                    if creds.anonymous
                    else f"the credentials of {creds.username or 'the identity token'}"
                )
                + f" (HTTP {status})"
            )
        if status == 429:
            raise TooManyRequestsError(f"{self._registry}: the token service answered HTTP 429")
        if status >= 500:
            raise TransientRegistryError(
                f"{self._registry}: the token service answered HTTP {status}"
            )
        if status != 200:
            raise AuthenticationError(
                f"{self._registry}: the token service answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or _TOKEN_MIN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value, lifetime = None, 0.0
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"{self._registry}: the token service sent no token")
        lifetime = max(lifetime, _TOKEN_MIN_LIFETIME) - _EXPIRY_MARGIN
        return _Token(value, time.monotonic() + lifetime)
