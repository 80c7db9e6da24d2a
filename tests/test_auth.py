"""Registry credentials and challenges: parsing, and the auth flows against fake registries."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode

import anyio
import pytest

from ferryd.errors import (
    AuthenticationError,
    RegistryUnreachableError,
    TransientRegistryError,
)
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry.auth import (
    ANONYMOUS,
    Challenge,
    Credentials,
    decode_registry_auth,
    parse_challenge,
    parse_challenges,
)
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from support.digests import sha256
from support.fakes import (
    FakeRegistry,
    Reply,
    Request,
    UploadRegistry,
    UploadSession,
    registry_error,
    serve_registry,
)
from support.waiting import await_until

REPO = "team/app"
MANIFEST_PATH = f"/v2/{REPO}/manifests/.+"
USER, PASSWORD = "ferry", "s3cret"
LOGIN = Credentials(USER, PASSWORD)


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    yield connector
    await connector.aclose()


def manifest() -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": "sha256:" + "0" * 64, "size": 2},
            "layers": [],
        }
    ).encode()


def with_manifest(registry: FakeRegistry) -> FakeRegistry:
    registry.add_manifest(manifest(), OCI_MANIFEST, "v1")
    return registry


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- parse_challenge ------------------------------------------------------------------


def test_challenge_bearer_with_quoted_commas() -> None:
    header = (
        'Bearer realm="https://auth.example/token?a=1,b=2",service="registry.example",'
        'scope="repository:team/app:pull,push"'
    )
    assert parse_challenge(header) == Challenge(
        "bearer",
        {
            "realm": "https://auth.example/token?a=1,b=2",
            "service": "registry.example",
            "scope": "repository:team/app:pull,push",
        },
    )


def test_challenge_escaped_quotes_and_bare_values() -> None:
    header = r'BASIC Realm="say \"hi\", then go" , charset=UTF-8'
    assert parse_challenge(header) == Challenge(
        "basic", {"realm": 'say "hi", then go', "charset": "UTF-8"}
    )


def test_challenge_spaces_and_empty_elements() -> None:
    header = 'Bearer  realm = "https://a/t" ,, service=reg,error="invalid_token"'
    assert parse_challenge(header) == Challenge(
        "bearer", {"realm": "https://a/t", "service": "reg", "error": "invalid_token"}
    )


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Negotiate abc==", 'Digest realm="r", nonce="n"', 'Mutual realm="x"'],
)
def test_challenge_absent_or_unknown_scheme_is_none(header: str | None) -> None:
    assert parse_challenge(header) is None


def test_challenge_without_parameters() -> None:
    assert parse_challenge("Bearer") == Challenge("bearer", {})


def test_several_challenges_in_one_value_keep_their_own_parameters() -> None:
    # httpx joins two WWW-Authenticate headers with ", ": the second challenge's realm
    # must not overwrite the first's.
    header = 'Bearer realm="https://auth/token",service="reg", Basic realm="registry"'
    assert parse_challenges(header) == [
        Challenge("bearer", {"realm": "https://auth/token", "service": "reg"}),
        Challenge("basic", {"realm": "registry"}),
    ]
    assert parse_challenge(header) == Challenge(
        "bearer", {"realm": "https://auth/token", "service": "reg"}
    )


def test_bearer_is_preferred_over_basic_as_docker_does() -> None:
    header = 'Basic realm="registry", Bearer realm="https://auth/token",service="reg"'
    assert parse_challenge(header) == Challenge(
        "bearer", {"realm": "https://auth/token", "service": "reg"}
    )
    assert parse_challenge('Negotiate, Basic realm="r"') == Challenge("basic", {"realm": "r"})


# -- decode_registry_auth -------------------------------------------------------------


def encode(obj: object, *, padding: bool = True) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()
    return encoded if padding else encoded.rstrip("=")


def test_registry_auth_as_the_docker_cli_sends_it() -> None:
    # "?>" in the password makes base64url differ from standard base64 ("_" for "/").
    creds = {"username": "ann", "password": "pa??>>ss", "serveraddress": "reg:5000"}
    header = encode(creds)
    assert "_" in header or "-" in header
    assert decode_registry_auth(header) == Credentials("ann", "pa??>>ss")


def test_registry_auth_without_padding() -> None:
    header = encode({"username": "ann", "password": "pw"}, padding=False)
    assert len(header) % 4 != 0
    assert decode_registry_auth(header) == Credentials("ann", "pw")


def test_registry_auth_with_an_auth_field() -> None:
    auth = base64.b64encode(b"bob:pass:with:colons").decode()
    assert decode_registry_auth(encode({"auth": auth})) == Credentials("bob", "pass:with:colons")


def test_registry_auth_tokens() -> None:
    header = encode({"identitytoken": "refresh-me", "registrytoken": "bearer-me"})
    creds = decode_registry_auth(header)
    assert creds.identity_token == "refresh-me"
    assert creds.registry_token == "bearer-me"
    assert not creds.anonymous


@pytest.mark.parametrize("header", ["", "  ", encode({}), encode({}, padding=False)])
def test_registry_auth_empty_is_anonymous(header: str) -> None:
    assert decode_registry_auth(header) == ANONYMOUS
    assert decode_registry_auth(header).anonymous


@pytest.mark.parametrize(
    "header",
    [
        "!!!not base64 at all",
        base64.urlsafe_b64encode(b"{not json").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe\xfa").decode(),
        encode(["a", "list"]),
        encode("a string"),
        encode({"auth": base64.b64encode(b"no-colon").decode()}),
    ],
)
def test_registry_auth_garbage_is_a_clear_error(header: str) -> None:
    with pytest.raises(AuthenticationError, match="X-Registry-Auth"):
        decode_registry_auth(header)


def test_credentials_repr_never_shows_secrets() -> None:
    creds = Credentials("ann", "hunter2-secret", "identity-secret", "registry-secret")
    for text in (repr(creds), str(creds), repr([creds]), repr({"c": creds})):
        assert "ann" in text
        assert "secret" not in text


# -- auth flows against a fake registry ---------------------------------------------


async def test_anonymous_registry_gets_no_authorization(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="none"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, LOGIN)
        await client.get_manifest("v1")
    assert [r.path for r in registry.requests] == [f"/v2/{REPO}/manifests/v1"]
    assert all("authorization" not in r.headers for r in registry.requests)


async def test_basic_challenge_is_answered(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="basic", username=USER, password=PASSWORD))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, LOGIN)
        await client.get_manifest("v1")
        await client.get_manifest("v1")
    # The first request, sent without a login, is what teaches the challenge.
    first, *gets = registry.requests
    assert "authorization" not in first.headers
    assert [r.headers["authorization"] for r in gets] == [basic(USER, PASSWORD)] * 2
    assert registry.token_requests == []


async def test_basic_wrong_password(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="basic", username=USER, password=PASSWORD))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, Credentials(USER, "wrong"))
        with pytest.raises(AuthenticationError, match=server.host) as caught:
            await client.get_manifest("v1")
    assert "wrong" not in str(caught.value)
    # The first request learns the challenge; then the same challenge again: retrying
    # with the same password cannot help.
    assert len(registry.seen("GET", MANIFEST_PATH)) == 2


async def test_basic_without_credentials(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="basic"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(AuthenticationError, match="requires authentication"):
            await client.get_manifest("v1")


async def test_bearer_token_from_the_realm(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer", username=USER, password=PASSWORD))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, LOGIN)
        await client.get_manifest("v1")
    (token_request,) = registry.token_requests
    assert token_request.query == {
        "service": "fake.registry",
        "scope": f"repository:{REPO}:pull",
        "account": USER,
    }
    assert token_request.headers["authorization"] == basic(USER, PASSWORD)
    first, get = registry.seen("GET", MANIFEST_PATH)
    assert "authorization" not in first.headers  # it learns the challenge
    assert get.headers["authorization"] == "Bearer token-1"


async def test_bearer_anonymous_token(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
    (token_request,) = registry.token_requests
    assert "authorization" not in token_request.headers
    assert "account" not in token_request.query


async def test_bearer_token_is_cached_per_scope(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
        await client.get_manifest("v1")
        assert len(registry.token_requests) == 1
        # Another client for the same repository shares the authenticator and its token.
        again = await connector.open(server.host, REPO, ANONYMOUS)
        await again.get_manifest("v1")
        assert len(registry.token_requests) == 1
        # Another repository is another scope (the fake serves any repository's tags).
        other = await connector.open(server.host, "team/other", ANONYMOUS)
        await other.get_manifest("v1")
    scopes = [r.query["scope"] for r in registry.token_requests]
    assert scopes == [f"repository:{REPO}:pull", "repository:team/other:pull"]
    # Only the very first request went without a token: the challenge is learnt once.
    anonymous = [r for r in registry.requests if "authorization" not in r.headers]
    assert [r.path for r in anonymous if r.path != "/token"] == [f"/v2/{REPO}/manifests/v1"]


async def test_rejected_cached_token_is_fetched_again_once(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
        registry.revoke_tokens()
        await client.get_manifest("v1")
    gets = registry.seen("GET", MANIFEST_PATH)
    assert [r.headers.get("authorization") for r in gets] == [
        None,  # the first request learns the challenge
        "Bearer token-1",
        "Bearer token-1",
        "Bearer token-2",
    ]
    assert len(registry.token_requests) == 2


async def test_token_that_keeps_being_rejected_fails_after_one_retry(
    connector: Connector,
) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))

    def reject(request: Request) -> Reply:
        registry.revoke_tokens()
        return registry.answer(request)

    registry.on("GET", MANIFEST_PATH, reject)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(AuthenticationError, match=server.host):
            await client.get_manifest("v1")
    # Without a login (which learns the challenge), with a token, once more with another.
    assert len(registry.seen("GET", MANIFEST_PATH)) == 3
    assert len(registry.token_requests) == 2


async def test_token_service_refusing_names_the_registry(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer", username=USER, password=PASSWORD))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, Credentials(USER, "wrong"))
        with pytest.raises(AuthenticationError) as caught:
            await client.get_manifest("v1")
    message = str(caught.value)
    assert server.host in message
    assert "token service refused the credentials of ferry (HTTP 401)" in message
    assert "wrong" not in message
    # Only the first request, which learns the challenge: none after the refusal.
    assert [r.headers.get("authorization") for r in registry.seen("GET", MANIFEST_PATH)] == [None]


async def test_token_service_refusing_anonymous_access(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.refuse_tokens = True
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(AuthenticationError, match="refused anonymous access"):
            await client.get_manifest("v1")


async def test_token_service_failing_is_worth_retrying(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.on("GET", "/token", Reply(503, body=b"down for a moment"), times=1)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(TransientRegistryError, match="token service answered HTTP 503"):
            await client.get_manifest("v1")
        await client.get_manifest("v1")  # and the next attempt works


async def test_unreachable_token_service_is_worth_retrying(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))

    def elsewhere(request: Request) -> Reply | None:
        reply = registry.answer(request)
        challenge = reply.headers.get("WWW-Authenticate")
        if challenge:
            # Port 1 on loopback: nothing listens there.
            reply.headers["WWW-Authenticate"] = challenge.replace(
                registry.base_url, "http://127.0.0.1:1"
            )
        return reply

    registry.on("GET", "/v2/.*", elsewhere)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        with pytest.raises(RegistryUnreachableError, match="token service") as caught:
            await client.get_manifest("v1")
    assert caught.value.retryable


async def test_realm_with_a_query_keeps_it(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))

    def realm_with_query(request: Request) -> Reply:
        reply = registry.answer(request)
        challenge = reply.headers.get("WWW-Authenticate")
        if challenge:
            reply.headers["WWW-Authenticate"] = challenge.replace("/token", "/token?tenant=blue")
        return reply

    registry.on("GET", "/v2/.*", realm_with_query)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
    (token_request,) = registry.token_requests
    assert token_request.query == {
        "tenant": "blue",
        "service": "fake.registry",
        "scope": f"repository:{REPO}:pull",
    }


async def test_identity_token_is_exchanged_with_oauth(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.on(
        "POST",
        "/token",
        lambda request: Reply(
            200,
            {"Content-Type": "application/json"},
            json.dumps({"access_token": "oauth-token", "expires_in": 300}).encode(),
        ),
    )
    registry.tokens["oauth-token"] = "all"
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, Credentials(identity_token="refresh"))
        await client.get_manifest("v1")
    (post,) = registry.seen("POST", "/token")
    assert dict(_form(post.body)) == {
        "grant_type": "refresh_token",
        "refresh_token": "refresh",
        "service": "fake.registry",
        "scope": f"repository:{REPO}:pull",
        "client_id": "ferryd",
    }
    _first, get = registry.seen("GET", MANIFEST_PATH)
    assert get.headers["authorization"] == "Bearer oauth-token"


async def test_registry_token_is_sent_as_is(connector: Connector) -> None:
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.tokens["given-token"] = "all"
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, Credentials(registry_token="given-token"))
        await client.get_manifest("v1")
    assert registry.token_requests == []
    _first, get = registry.seen("GET", MANIFEST_PATH)
    assert get.headers["authorization"] == "Bearer given-token"


async def test_open_registry_that_challenges_later(connector: Connector) -> None:
    # /v2/ answers 200, the repository wants a token: the first 401 teaches the scheme.
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.on("GET", "/v2/", Reply(200, body=b"{}"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
    gets = registry.seen("GET", MANIFEST_PATH)
    assert ["authorization" in r.headers for r in gets] == [False, True]
    assert len(registry.token_requests) == 1


async def test_token_refused_under_concurrent_requests(connector: Connector) -> None:
    # Three requests in flight when the registry stops accepting the token: all of them
    # retry, and they share one new token.
    registry = with_manifest(FakeRegistry(auth="bearer"))

    def refused_three() -> bool:
        """The first GET and three more with its token: all three are in flight."""
        gets = registry.seen("GET", MANIFEST_PATH)
        return sum(r.headers.get("authorization") == "Bearer token-1" for r in gets) == 4

    async def token_once_all_three_are_refused(request: Request) -> Reply:
        if registry.token_requests[1:]:  # not the first token: a new one
            await await_until(refused_three)
        return registry.answer(request)

    registry.on("GET", "/token", token_once_all_three_are_refused)
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        await client.get_manifest("v1")
        registry.revoke_tokens()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.get_manifest, "v1")
    assert len(registry.token_requests) == 2
    gets = registry.seen("GET", MANIFEST_PATH)
    # gets[:2]: the first request, without a login and then with token-1.
    assert sorted(r.headers["authorization"] for r in gets[2:]) == (
        ["Bearer token-1"] * 3 + ["Bearer token-2"] * 3
    )


async def test_challenge_learnt_under_concurrent_requests(connector: Connector) -> None:
    # /v2/ is open, the repository is not: three first requests, one learns the
    # challenge while the others wait for it.
    registry = with_manifest(FakeRegistry(auth="bearer"))
    registry.on("GET", "/v2/", Reply(200, body=b"{}"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, ANONYMOUS)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.get_manifest, "v1")
    assert len(registry.token_requests) == 1
    assert len(registry.seen("GET", MANIFEST_PATH)) == 4


async def test_a_first_401_without_a_challenge_is_not_retried(connector: Connector) -> None:
    # Nothing to learn from it: the request fails at once, naming what it asked for.
    registry = with_manifest(FakeRegistry())
    registry.on("GET", MANIFEST_PATH, registry_error(401, "UNAUTHORIZED", "who are you"))
    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, LOGIN)
        with pytest.raises(AuthenticationError) as caught:
            await client.get_manifest("v1")
    assert f"{server.host}: authentication required for manifest for" in str(caught.value)
    assert len(registry.seen("GET", MANIFEST_PATH)) == 1


async def test_a_streamed_body_is_never_what_learns_the_login(connector: Connector) -> None:
    # An upload's PATCH as a client's very first request: a ping learns the endpoint
    # and the challenge, so that the stream is sent once, with the login.
    registry = UploadRegistry(auth="basic")
    registry.sessions["s1"] = UploadSession(REPO)
    data = b"streamed " * 100
    opened = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal opened
        opened += 1
        yield data

    async with serve_registry(registry) as server:
        client = await connector.open(server.host, REPO, Credentials("ferry", "s3cret"))
        state = urlencode({"_state": registry.sessions["s1"].token})
        location = f"{client.endpoint.base_url}/v2/{REPO}/blobs/uploads/s1?{state}"
        await client.upload_blob(sha256(data), len(data), body, location)
    assert [(r.method, r.path, "authorization" in r.headers) for r in registry.requests] == [
        ("GET", "/v2/", False),
        ("GET", "/v2/", True),
        ("PATCH", f"/v2/{REPO}/blobs/uploads/s1", True),
        ("PUT", f"/v2/{REPO}/blobs/uploads/s1", True),
    ]
    assert opened == 1
    assert registry.repo_blobs(REPO) == {sha256(data): data}


def _form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode())
