"""Registry credentials and the answer to a registry's `WWW-Authenticate` challenge.

Anonymous, Basic, and Bearer (the token flow of the distribution spec: ask the realm
for a token for a scope, cache it until it expires, fetch a new one on a 401).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import structlog

from ferryd.errors import (
    AuthenticationError,
    AuthorizationError,
    InvalidRegistryAuthError,
    RegistryProtocolError,
    RegistryUnreachableError,
    TooManyRequestsError,
    TransientRegistryError,
)
from ferryd.oci.reference import DEFAULT_DOMAIN
from ferryd.registry.bodies import read_body, read_error_body, release
from ferryd.registry.errcode import Refusal, refusal
from ferryd.registry.heads import head_error
from ferryd.registry.wire import check_port
from ferryd.untrusted import has_lone_surrogate, loads

log = structlog.get_logger("ferryd.registry")

# A token answer and the token in it: Docker Hub's are a few KB, and a token goes back
# in every request's Authorization header, which servers cap at 8-64 KiB.
MAX_TOKEN_ANSWER = 64 * 1024
MAX_TOKEN = 16 * 1024
_TOKEN_MIN_LIFETIME = 60.0  # seconds, as the token spec says when expires_in is absent
# A token is asked for again after a day at the most, whatever its expires_in says: an
# answer of 1e999 (infinity) must not make one token last forever.
_TOKEN_MAX_LIFETIME = 24 * 3600.0
# RFC 6750's b64token, the form of a Bearer credential: it goes into a header as it is,
# so anything else (a CR or LF, a non-ASCII letter) would break or forge the request.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
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
        data = loads(raw) if raw.strip() else {}
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


# The fields of a docker login entry (config.json `auths`, X-Registry-Auth): all strings.
_ENTRY_FIELDS = (
    "username",
    "password",
    "auth",
    "email",
    "serveraddress",
    "identitytoken",
    "registrytoken",
)


def credentials_from_entry(entry: dict[str, Any], where: str) -> Credentials:
    for key in _ENTRY_FIELDS:
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRegistryAuthError(
                f"{where}: {key!r} must be a string, not {type(value).__name__}"
            )
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    encoded = entry.get("auth")
    if encoded and not username:
        try:
            username, sep, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise InvalidRegistryAuthError(f"{where}: 'auth' is not base64 of user:password")
    return sendable(
        Credentials(
            username=username,
            password=password,
            identity_token=entry.get("identitytoken") or "",
            registry_token=entry.get("registrytoken") or "",
        ),
        where,
    )


# A registry token goes into an Authorization header as it is: only visible ASCII and
# spaces can (a CR or LF is refused by the HTTP library, reported as a connection error).
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


def sendable(credentials: Credentials, where: str) -> Credentials:
    """`credentials` when each field can be sent to a registry; InvalidRegistryAuthError
    naming the first that cannot (it would otherwise fail mid-pull, as a daemon bug)."""
    fields = {
        "username": credentials.username,
        "password": credentials.password,
        "identitytoken": credentials.identity_token,
        "registrytoken": credentials.registry_token,
    }
    for name, value in fields.items():
        if has_lone_surrogate(value):
            raise InvalidRegistryAuthError(
                f"{where}: {name!r} holds an unpaired UTF-16 surrogate, not text"
            )
    if not _HEADER_SAFE.fullmatch(credentials.registry_token):
        raise InvalidRegistryAuthError(
            f"{where}: 'registrytoken' must be printable ASCII (it is sent as an HTTP header)"
        )
    return credentials


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Answers one registry's challenges with one set of credentials.

    Shared by every request to that registry with those credentials, so that a bearer
    token fetched for a scope serves all of them until it expires.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        registry: str,
        credentials: Credentials,
        *,
        host: str = "",
        insecure: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self._http = http
        self._registry = registry
        self._credentials = credentials
        self._host = host  # the registry's host[:port]: a realm elsewhere is another host
        self._insecure = insecure  # may this host have credentials over plain HTTP?
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
            return {"Authorization": self._basic()}
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
            error = AuthorizationError(
                f"{self._registry} requires authentication: give a username and password"
            )
            error.reason = "no basic auth credentials"  # dockerd's words
            raise error
        return basic_authorization(creds.username, creds.password)

    async def _token(self, scope: str) -> str:
        lock = self._locks.setdefault(scope, anyio.Lock())
        async with lock:
            cached = self._tokens.get(scope)
            fresh = cached is None or cached.expires_at <= time.monotonic()
            realm = self._challenge.params.get("realm", "") if self._challenge else ""
            log.debug(
                "registry.token",
                registry=self._registry,
                realm=host_of(realm),
                scope=scope,
                cached=not fresh,
            )
            if cached is not None and not fresh:
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
            url = httpx.URL(realm)
            check_port(realm)
            if not creds.anonymous:
                await check_realm(url, self._registry, self._host, self._insecure)
            if creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "scope": scope,  # space-separated, as OAuth2 writes several
                    "client_id": "ferryd",
                }
                request = self._http.build_request("POST", url, data=form)
            else:
                # Several scopes (a push that mounts from another repository) are
                # several `scope` parameters, as the token spec has it.
                query: dict[str, str | list[str]] = {"scope": scope.split()}
                if service:
                    query["service"] = service
                if creds.username:
                    query["account"] = creds.username
                # Merged, not `params=`: that would drop a query the realm already has.
                request = self._http.build_request("GET", url.copy_merge_params(query))
                if creds.username:
                    request.headers["Authorization"] = self._basic()
            if not creds.anonymous:
                log.info(
                    "registry.credentials_sent", registry=self._registry, host=url.netloc.decode()
                )
            response, body = await token_answer(self._http, request, self._registry, realm)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise RegistryProtocolError(
                f"{self._registry}: cannot use the token realm {realm!r}: {exc}"
            ) from None
        status = response.status_code
        reason = "" if status == 200 else response_refusal(response, body).text
        _check_token_status(status, self._registry, creds, reason)
        return _token_from(body, self._registry)


async def token_answer(
    client: httpx.AsyncClient, request: httpx.Request, registry: str, realm: str
) -> tuple[httpx.Response, bytes]:
    """A token service's answer to `request` and its body (a token answer's up to
    MAX_TOKEN_ANSWER, a refusal's for its message). A service that cannot be reached, or
    whose answer fails, is a RegistryUnreachableError: worth retrying, as any other
    failure to reach a registry is."""
    what = f"{registry}: the token service's answer"
    try:
        response = await client.send(request, stream=True)
        try:
            if response.status_code == 200:
                body = await read_body(response, MAX_TOKEN_ANSWER, what)
            else:
                body = await read_error_body(response, what)
        finally:
            await release(response)
    except httpx.UnsupportedProtocol:
        raise  # the realm's fault, which the caller words
    except httpx.HTTPError as exc:
        failed_head = head_error(exc, what)
        if failed_head is not None:
            raise failed_head from None
        raise RegistryUnreachableError(
            f"cannot reach the token service of {registry} at {realm}: "
            f"{str(exc) or type(exc).__name__}"
        ) from None
    return response, body


async def check_realm(
    url: httpx.URL,
    registry: str,
    registry_host: str,
    insecure: Callable[[str], Awaitable[bool]] | None,
) -> None:
    """Credentials go over plain HTTP only to the registry itself, or to a host the
    operator listed as insecure: a realm is the registry's to name, not to abuse."""
    host = url.netloc.decode()
    if url.scheme != "http" or host == registry_host:
        return
    if insecure is not None and await insecure(host):
        return
    raise AuthenticationError(
        f"{registry}: the token service {url.scheme}://{host} is plain HTTP on "
        f"another host than the registry; ferryd does not send credentials there "
        f"unless {host} is listed in insecure_registries"
    )


def basic_authorization(username: str, password: str) -> str:
    """The Authorization header's value for a Basic login."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def host_of(url: str) -> str:
    """The host of a URL, for logs: a realm's query may carry more than we want to show."""
    return url.split("://", 1)[-1].split("/", 1)[0]


def response_refusal(response: httpx.Response, body: bytes) -> Refusal:
    """A registry's or token service's refusal as dockerd reads and words it
    (`unauthorized: incorrect username or password`): `refusal` of the answer's status,
    body, content type and challenges."""
    headers = response.headers
    challenges = parse_challenges(headers.get("www-authenticate") or "")
    return refusal(response.status_code, body, headers.get("content-type"), challenges)


def _check_token_status(status: int, registry: str, creds: Credentials, reason: str) -> None:
    if status in (401, 403):
        error = AuthorizationError(
            f"{registry}: the token service refused "
            + (
                "anonymous access"
                if creds.anonymous
                else f"the credentials of {creds.username or 'the identity token'}"
            )
            + f" (HTTP {status})"
        )
        error.reason = reason
        raise error
    if status == 429:
        raise TooManyRequestsError(f"{registry}: the token service answered HTTP 429")
    if status >= 500:
        raise TransientRegistryError(f"{registry}: the token service answered HTTP {status}")
    if status != 200:
        raise AuthenticationError(f"{registry}: the token service answered HTTP {status}")


def _token_from(body: bytes, registry: str) -> _Token:
    try:
        answer = loads(body)
        value = answer.get("token") or answer.get("access_token")
        lifetime = float(answer.get("expires_in") or _TOKEN_MIN_LIFETIME)
    # OverflowError: an integer past any float.
    except (ValueError, AttributeError, TypeError, OverflowError):
        value, lifetime = None, 0.0
    if not isinstance(value, str) or not value:
        raise AuthenticationError(f"{registry}: the token service sent no token")
    if len(value) > MAX_TOKEN:
        raise AuthenticationError(
            f"{registry}: the token service sent a token of {len(value)} characters, "
            f"over the limit of {MAX_TOKEN}"
        )
    check_token(value, registry)
    return _Token(value, time.monotonic() + _lifetime(lifetime) - _EXPIRY_MARGIN)


def check_token(token: str, registry: str) -> None:
    """Refuse a token that is not of the form a Bearer credential has (`_B64TOKEN`),
    never quoting it: it is a secret, and what it holds could forge a log line."""
    if not _B64TOKEN.fullmatch(token):
        raise RegistryProtocolError(
            f"{registry}: the token service sent a token that is not a bearer token "
            "(RFC 6750: letters, digits and -._~+/ then any '=' padding); it is not used"
        )


def _lifetime(expires_in: float) -> float:
    """How long a token is used for: `expires_in`, from _TOKEN_MIN_LIFETIME (which a
    negative, NaN or infinite one gets too) to _TOKEN_MAX_LIFETIME."""
    if not math.isfinite(expires_in):
        return _TOKEN_MIN_LIFETIME
    return min(max(expires_in, _TOKEN_MIN_LIFETIME), _TOKEN_MAX_LIFETIME)
