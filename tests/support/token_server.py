"""A registry with token auth and its token server: what Docker Hub looks like, on loopback.

Debian's ``docker-registry`` (distribution 2.8) runs with ``auth: token``: it answers
``401`` with ``Bearer realm=…,service=…,scope=…`` and accepts ES256 JWTs whose header
carries the signing certificate (``x5c``), trusted through ``rootcertbundle``.

`TokenServer` is the realm, over TLS from the tests' CA, as the distribution token spec
and Docker Hub serve it:

- ``GET /token?service=&scope=&account=[&offline_token=true&client_id=]`` with Basic
  auth: a token for the scopes the user may have (every action on every repository);
  without auth, an anonymous token that grants only pulls of ``public/*``, as Hub gives
  anonymous tokens that the registry then refuses (``insufficient_scope``); a wrong
  password is ``401 {"details": "incorrect username or password"}`` as Hub says it.
  With ``offline_token=true`` and a login, the answer carries a ``refresh_token``.
- ``POST /token`` (OAuth2 form): ``grant_type=refresh_token`` exchanges a refresh token
  (docker's identity token) for an access token, ``grant_type=password`` a login;
  an unknown refresh token is ``400 {"error": "invalid_grant"}``.

Every request is recorded (`requests`), without secrets, so tests can tell how a
client logged in.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .registry import (
    PASSWORD,
    REGISTRY_BIN,
    USER,
    Registry,
    have_registry_tools,
    registry_config,
    start_on_a_free_port,
    write_tls,
)

SERVICE = "ferryd-token-registry"
ISSUER = "ferryd-test-token-issuer"
TOKEN_LIFETIME = 300  # seconds
PUBLIC_NAMESPACE = "public/"  # anonymous tokens may pull these


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (no secrets)."""

    method: str
    grant_type: str  # "basic" (GET with a login), "anonymous", "refresh_token", "password"
    user: str | None  # who it was for, when it knew
    scopes: tuple[str, ...]
    offline_token: bool
    client_id: str
    status: int


def _signing_material() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    """An ES256 key and a self-signed certificate for it (DER, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferryd test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        key,
        cert.public_bytes(serialization.Encoding.DER),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@dataclass
class TokenServer:
    """The realm of a token-auth registry (start with `start`, stop with `stop`)."""

    users: dict[str, str]
    ca: trustme.CA
    workdir: Path
    requests: list[TokenRequest] = field(default_factory=list)
    port: int = 0
    _refresh: dict[str, str] = field(default_factory=dict)  # refresh token → user
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._key, self._cert_der, cert_pem = _signing_material()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root_bundle = self.workdir / "token-root.pem"
        self.root_bundle.write_bytes(cert_pem)

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(context)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- what it issues --------------------------------------------------------

    def token(self, user: str | None, scopes: list[str]) -> str:
        """A signed access token for `user` (None: anonymous) over `scopes`."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            if user is None:
                granted = ["pull"] if name.startswith(PUBLIC_NAMESPACE) and "pull" in wanted else []
            else:
                granted = wanted
            access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        headers = {"x5c": [base64.b64encode(self._cert_der).decode()]}
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    def new_refresh_token(self, user: str) -> str:
        token = "refresh-" + secrets.token_urlsafe(16)
        with self._lock:
            self._refresh[token] = user
        return token

    def revoke(self, refresh_token: str) -> None:
        with self._lock:
            self._refresh.pop(refresh_token, None)

    def user_of(self, refresh_token: str) -> str | None:
        with self._lock:
            return self._refresh.get(refresh_token)

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self, grant_type: str) -> list[TokenRequest]:
        with self._lock:
            return [r for r in self.requests if r.grant_type == grant_type]


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _issue(
            self, user: str | None, scopes: list[str], *, refresh: str | None, key: str
        ) -> None:
            answer: dict[str, Any] = {
                key: server.token(user, scopes),
                "expires_in": TOKEN_LIFETIME,
                "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
            if refresh:
                answer["refresh_token"] = refresh
            self._answer(200, answer)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/token":
                self._answer(404, {"details": "not found"})
                return
            query = parse_qs(url.query, keep_blank_values=True)
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            offline = query.get("offline_token", [""])[0] == "true"
            client_id = query.get("client_id", [""])[0]
            header = self.headers.get("Authorization", "")
            user: str | None = None
            if header.startswith("Basic "):
                try:
                    name, _, password = base64.b64decode(header[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    name, password = "", ""
                if server.users.get(name) != password or not name:
                    server.record(
                        TokenRequest("GET", "basic", name, (*scopes,), offline, client_id, 401)
                    )
                    self._answer(401, {"details": "incorrect username or password"})
                    return
                user = name
            refresh = server.new_refresh_token(user) if user is not None and offline else None
            status = 200
            server.record(
                TokenRequest(
                    "GET",
                    "basic" if user else "anonymous",
                    user,
                    (*scopes,),
                    offline,
                    client_id,
                    status,
                )
            )
            self._issue(user, scopes, refresh=refresh, key="token")

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
            if url.path != "/token":
                self._answer(404, {"details": "not found"})
                return

            def one(name: str) -> str:
                return form.get(name, [""])[0]

            grant = one("grant_type")
            scopes = [s for s in one("scope").split(" ") if s]
            client_id = one("client_id")
            user: str | None = None
            refresh: str | None = None
            if grant == "refresh_token":
                user = server.user_of(one("refresh_token"))
                refresh = one("refresh_token")
            elif grant == "password":
                name = one("username")
                if name and server.users.get(name) == one("password"):
                    user = name
                    if one("access_type") == "offline":
                        refresh = server.new_refresh_token(name)
            if user is None:
                server.record(TokenRequest("POST", grant, None, (*scopes,), False, client_id, 400))
                self._answer(400, {"error": "invalid_grant"})
                return
            server.record(TokenRequest("POST", grant, user, (*scopes,), False, client_id, 200))
            self._issue(user, scopes, refresh=refresh, key="access_token")

    return Handler


class BearerAuth(httpx.Auth):
    """httpx's side of the token flow, for the tests' own requests to the registry."""

    def __init__(self, username: str | None, password: str | None, verify: ssl.SSLContext) -> None:
        self._login = (username, password) if username is not None else None
        self._verify = verify

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        response = yield request
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or not challenge.startswith("Bearer "):
            return
        params = dict(
            part.split("=", 1) for part in _split_params(challenge.removeprefix("Bearer "))
        )
        params = {k: v.strip('"') for k, v in params.items()}
        query = {"service": params.get("service", "")}
        if params.get("scope"):
            query["scope"] = params["scope"]
        with httpx.Client(verify=self._verify, trust_env=False) as client:
            answer = client.get(params["realm"], params=query, auth=self._login)
        answer.raise_for_status()
        request.headers["Authorization"] = "Bearer " + answer.json()["token"]
        yield request


def _split_params(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


@dataclass
class TokenRegistry(Registry):
    """A `Registry` with token auth: the tests' own requests log in through the realm."""

    tokens: TokenServer | None = None

    def client(self, *, auth: bool = True, timeout: float = 30.0) -> httpx.Client:
        verify = self.ssl_context()
        assert isinstance(verify, ssl.SSLContext)
        login = (
            BearerAuth(self.username, self.password, verify)
            if auth
            else BearerAuth(None, None, verify)
        )
        return httpx.Client(
            base_url=self.url, verify=verify, auth=login, timeout=timeout, trust_env=False
        )


def start_token_registry(
    workdir: Path, ca: trustme.CA, users: dict[str, str], *, login: tuple[str, str]
) -> TokenRegistry:
    """A TLS registry with `auth: token` and its running token server (`.tokens`);
    `login` is what the tests themselves (skopeo, httpx) use."""
    if not have_registry_tools():
        raise RuntimeError(f"{REGISTRY_BIN} or skopeo is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = TokenServer(users, ca, workdir / "token-server")
    tokens.start()
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    cert_path, key_path, cert_dir = write_tls(workdir, ca)
    http: dict[str, object] = {
        "secret": "ferryd-tests-not-secret",
        "tls": {"certificate": str(cert_path), "key": str(key_path)},
    }
    config = registry_config(storage, http)
    config["auth"] = {
        "token": {
            "realm": tokens.realm,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(tokens.root_bundle),
        }
    }

    def make(host: str, config_path: Path) -> TokenRegistry:
        return TokenRegistry(
            host=host,
            url=f"https://{host}",
            storage=storage,
            config_path=config_path,
            log_path=workdir / "registry.log",
            ca_cert_pem=ca.cert_pem.bytes(),
            username=login[0],
            password=login[1],
            cert_dir=cert_dir,
            tokens=tokens,
        )

    try:
        return start_on_a_free_port(workdir, config, http, make)
    except BaseException:
        tokens.stop()
        raise


def stop_token_registry(registry: TokenRegistry) -> None:
    registry.stop()
    if registry.tokens is not None:
        registry.tokens.stop()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[TokenRegistry]:
    """A TLS registry with `auth: token` whose token server knows USER / PASSWORD (a
    module's fixture: import it into the test module that uses it)."""
    if not have_registry_tools():
        pytest.skip("Debian's docker-registry and skopeo are not installed")
    registry = start_token_registry(
        tmp_path_factory.mktemp("token-registry"), ca, {USER: PASSWORD}, login=(USER, PASSWORD)
    )
    yield registry
    stop_token_registry(registry)
