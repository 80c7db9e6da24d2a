"""Registries and token services whose headers, tokens and bodies are built to break the
parsers that read them: numbers that `str.isdigit` takes and `int()` refuses, or of more
digits than `int()` converts; header bytes past ASCII; tokens that would forge a header;
a Link header that made a regular expression quadratic; an endless stream of empty gzip
members; JSON nested deeper than the parser recurses; ports past 65535.

Each must end in a FerrydError that names the problem (or be read as if the header were
absent, where a malformed value always was), never in a traceback or a hang.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from ferryd.errors import (
    AuthenticationError,
    ConfigError,
    CredentialHelperError,
    InvalidRegistryAuthError,
    NotFoundError,
    RegistryProtocolError,
    TooLargeError,
    TransientRegistryError,
)
from ferryd.oci.digest import Digest
from ferryd.oci.manifest import MAX_MANIFEST_SIZE
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry import credentials as credentials_module
from ferryd.registry import requestlog
from ferryd.registry.auth import ANONYMOUS, Credentials, _token_from, decode_registry_auth
from ferryd.registry.bodies import content_length
from ferryd.registry.client import ReadBlob, RegistryClient, retry_after
from ferryd.registry.connector import Connector
from ferryd.registry.credentials import CredentialStore
from ferryd.registry.endpoints import RegistryService
from ferryd.registry.errcode import refusal
from ferryd.registry.login import check_login
from ferryd.untrusted import decimal
from support.fakes import FakeRegistry, FakeServer, Reply, Request, serve_registry

REPO = "team/app"
MANIFEST_PATH = f"/v2/{REPO}/manifests/.+"
BLOB_PATH = f"/v2/{REPO}/blobs/.+"
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
BLOB = bytes(range(256)) * 12
LOGIN = Credentials("ferry", "s3cret")

# Past int()'s 4300 digits; "²" is a digit to str.isdigit, and no number to int().
HUGE = "9" * 5000
SUPERSCRIPT = "\N{SUPERSCRIPT TWO}"
# Deeper than json.loads recurses: RecursionError, not the ValueError of other bad JSON.
DEEP_JSON = b"[" * 50_000  # past any recursion limit, under the 64 KiB of a token answer
# A gzip member of nothing: 20 bytes on the wire, not one byte decoded.
EMPTY_GZIP = zlib.compressobj(9, zlib.DEFLATED, 31).flush()
BAD_PORT = "70000"


@pytest.fixture
async def connector() -> AsyncIterator[Connector]:
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    yield connector
    await connector.aclose()


def registry(*, auth: str = "none") -> tuple[FakeRegistry, Digest]:
    """A registry with tag v1 and one small blob (read in a worker thread)."""
    fake = FakeRegistry(auth=auth)  # type: ignore[arg-type]
    fake.add_manifest(MANIFEST, OCI_MANIFEST, "v1")
    return fake, fake.add_blob(BLOB)


async def open_client(
    connector: Connector, server: FakeServer, credentials: Credentials = ANONYMOUS
) -> RegistryClient:
    return await connector.open(server.host, REPO, credentials)


async def chosen(connector: Connector, server: FakeServer) -> RegistryClient:
    """A client whose endpoint is chosen (its manifest fetched), so that a small blob is
    read in a worker thread (`registry/blocking.py`), as a pull's layers are."""
    client = await open_client(connector, server)
    await client.get_manifest("v1")
    assert client.reads_in_worker()
    return client


async def read_whole(client: RegistryClient, digest: Digest) -> tuple[type, bytes]:
    async with client.open_blob(digest, whole=len(BLOB)) as blob:
        return type(blob), b"".join([chunk async for chunk in blob.chunks()])


def token_answer(body: bytes) -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, body)


# -- numbers: ASCII digits of a sane length, or none at all ---------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("1234", 1234),
        ("9" * 19, int("9" * 19)),
        ("9" * 20, None),
        (HUGE, None),
        (SUPERSCRIPT, None),
        ("\N{ARABIC-INDIC DIGIT THREE}", None),
        ("", None),
        ("-1", None),
        (" 1", None),
    ],
)
def test_a_number_in_a_header_is_ascii_digits_of_a_sane_length(
    text: str, number: int | None
) -> None:
    assert decimal(text) == number


def test_a_content_length_that_is_no_ascii_number_is_taken_as_absent() -> None:
    assert content_length({"content-length": SUPERSCRIPT}) is None
    assert content_length({"content-length": HUGE}) is None


async def test_a_blob_read_in_a_worker_with_a_superscript_content_length_is_read_to_its_end(
    connector: Connector,
) -> None:
    # h11 refuses such a header; urllib3 (http.client) takes it, as a length unknown.
    fake, digest = registry()
    fake.on("GET", BLOB_PATH, Reply(200, {"Content-Length": SUPERSCRIPT}, BLOB, framing="close"))
    async with serve_registry(fake) as server:
        client = await chosen(connector, server)
        assert await read_whole(client, digest) == (ReadBlob, BLOB)


@pytest.mark.parametrize("value", [SUPERSCRIPT, HUGE])
def test_a_retry_after_that_is_no_ascii_number_asks_for_no_wait(value: str) -> None:
    assert retry_after(value) is None
    assert retry_after("120") == 120.0


async def test_a_503_with_a_superscript_retry_after_is_a_transient_error_without_a_wait(
    connector: Connector,
) -> None:
    fake, _ = registry()
    fake.on("GET", MANIFEST_PATH, Reply(503, {"Retry-After": SUPERSCRIPT}, b"busy"))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(TransientRegistryError, match="HTTP 503") as caught:
            await client.get_manifest("v1")
    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    "content_range",
    [f"bytes 100-{len(BLOB) - 1}/{HUGE}", f"bytes {HUGE}-{len(BLOB) - 1}/{len(BLOB)}"],
)
async def test_a_content_range_of_more_digits_than_any_size_is_a_protocol_error(
    connector: Connector, content_range: str
) -> None:
    fake, digest = registry()
    fake.on("GET", BLOB_PATH, Reply(206, {"Content-Range": content_range}, BLOB[100:]))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match="206 without a valid Content-Range"):
            async with client.open_blob(digest, 100):
                pass


@pytest.mark.parametrize(
    ("limit", "remaining"), [(HUGE, "1"), ("100", HUGE), (f"100;w={HUGE}", "1")]
)
async def test_a_rate_limit_of_more_digits_than_any_count_is_ignored(
    connector: Connector, limit: str, remaining: str
) -> None:
    fake, _ = registry()
    headers = {"RateLimit-Limit": limit, "RateLimit-Remaining": remaining}
    fake.on("GET", MANIFEST_PATH, Reply(200, {"Content-Type": OCI_MANIFEST, **headers}, MANIFEST))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with structlog.testing.capture_logs() as logs:
            assert (await client.get_manifest("v1")).raw == MANIFEST
    warnings = [log for log in logs if log["event"] == "registry.rate_limit_low"]
    # A window of too many digits is no window; the limit and what is left still count.
    assert [log["window_seconds"] for log in warnings] == ([None] if "w=" in limit else [])


def test_a_rate_limit_that_is_spent_is_still_worth_a_warning() -> None:
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "5;w=21600"}
    with structlog.testing.capture_logs() as logs:
        requestlog.answered("GET", "hub", "/v2/", 200, headers, 0.1)
    (warning,) = [log for log in logs if log["event"] == "registry.rate_limit_low"]
    assert (warning["remaining"], warning["limit"], warning["window_seconds"]) == (5, 100, 21600)


# -- header bytes past ASCII, on an error answer read in a worker thread --------------


async def test_an_error_answer_to_a_blob_read_in_a_worker_may_carry_latin1_header_bytes(
    connector: Connector,
) -> None:
    fake, digest = registry()
    headers = {
        "Content-Type": "text/plain",
        "X-Served-By": "caf\N{LATIN SMALL LETTER E WITH ACUTE}",
    }
    fake.on("GET", BLOB_PATH, Reply(404, headers, b"no such blob"))
    async with serve_registry(fake) as server:
        client = await chosen(connector, server)
        with pytest.raises(NotFoundError, match=f"blob {digest} not found"):
            await read_whole(client, digest)


# -- tokens: the form of a bearer token, a lifetime that ends -------------------------

FORGED = "s3cr3t-t0ken\r\nX-Injected: yes"


@pytest.mark.parametrize(
    "token",
    [FORGED, "s3cr3t-t0ken\n", "s3cr3t t0ken", "s3cr3t-t\N{LATIN SMALL LETTER E WITH ACUTE}ken"],
)
async def test_a_token_not_of_the_bearer_form_is_refused_without_quoting_it(
    connector: Connector, token: str
) -> None:
    fake, _ = registry(auth="bearer")
    fake.on("GET", "/token", token_answer(json.dumps({"token": token}).encode()))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(RegistryProtocolError) as caught,
        ):
            await client.get_manifest("v1")
    assert "not a bearer token" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert "s3cr3t" not in repr(logs)
    assert not [r for r in fake.requests if "authorization" in r.headers and r.path != "/token"]


@pytest.mark.parametrize(
    "token", ["abc", "a.b-c_d~e+f/g", "dG9rZW4=", "dG9rZQ==", "eyJhbGciOi.eyJzdWIiOi.c2ln"]
)
def test_a_token_of_the_bearer_form_is_taken(token: str) -> None:
    assert _token_from(json.dumps({"token": token}).encode(), "reg").value == token


@pytest.mark.parametrize(
    "expires_in", [b"NaN", b"Infinity", b"1e999", b'"nan"', b'"inf"', b'"-inf"', b"-5"]
)
def test_a_token_that_claims_a_lifetime_without_end_expires_after_the_least_one(
    expires_in: bytes,
) -> None:
    before = time.monotonic()
    token = _token_from(b'{"token": "abc", "expires_in": %s}' % expires_in, "reg")
    assert math.isfinite(token.expires_at)
    assert before < token.expires_at <= time.monotonic() + 60


def test_a_token_that_claims_years_is_asked_for_again_within_a_day() -> None:
    token = _token_from(b'{"token": "abc", "expires_in": 315360000}', "reg")
    assert token.expires_at <= time.monotonic() + 24 * 3600


def test_a_token_with_an_expiry_past_any_float_is_no_token() -> None:
    with pytest.raises(AuthenticationError, match="sent no token"):
        _token_from(b'{"token": "abc", "expires_in": 1%s}' % (b"0" * 400), "reg")


async def test_a_login_whose_token_is_not_of_the_bearer_form_is_refused_without_quoting_it(
    connector: Connector,
) -> None:
    fake, _ = registry(auth="bearer")
    fake.on("GET", "/token", token_answer(json.dumps({"token": FORGED}).encode()))
    async with serve_registry(fake) as server:
        with pytest.raises(RegistryProtocolError, match="not a bearer token") as caught:
            await check_login(connector, server.host, LOGIN)
    assert "s3cr3t" not in str(caught.value)
    assert not fake.seen("GET", "/v2/")[1:]  # the token never went back to the registry


# -- the next page's Link: no regular expression backtracking -------------------------


def test_a_megabyte_of_angle_brackets_in_a_link_header_is_parsed_at_once() -> None:
    # In a process of its own, which a quadratic search (hours, for a megabyte) cannot
    # hold past the timeout: the test fails instead of hanging. The bound is generous.
    script = textwrap.dedent(
        """
        from ferryd.registry.client import _next_page
        from ferryd.registry.endpoints import Endpoint

        endpoint = Endpoint("reg", "http://reg")
        junk = ["<" * 1_000_000, "<a" * 500_000, "<a> " * 250_000]
        then_next = "<" * 1_000_000 + '</v2/x/tags/list?last=a>; rel="next"'
        for link in [*junk, then_next]:
            print(_next_page(link, endpoint, "tags"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["None", "None", "None", "http://reg/v2/x/tags/list?last=a"]


# -- compressed answers: the bytes as sent are limited too ----------------------------


def endless_empty_gzip(status: int, size: int) -> Reply:
    """`size` bytes of empty gzip members, and then a connection that stays open: to a
    reader that counts only decoded bytes, a stream without end."""
    body = EMPTY_GZIP * (size // len(EMPTY_GZIP) + 1)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return Reply(status, headers, body, framing="chunked", stall_after=len(body))


async def test_a_manifest_of_endless_empty_gzip_members_is_cut_at_its_limit_as_sent(
    connector: Connector,
) -> None:
    fake, _ = registry()
    fake.on("GET", MANIFEST_PATH, endless_empty_gzip(200, MAX_MANIFEST_SIZE))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(
            TooLargeError, match=f"over the limit of {MAX_MANIFEST_SIZE} bytes as sent"
        ):
            await client.get_manifest("v1")


async def test_an_error_answer_of_endless_empty_gzip_members_is_read_only_to_its_limit(
    connector: Connector,
) -> None:
    fake, _ = registry()
    fake.on("GET", MANIFEST_PATH, endless_empty_gzip(404, 1024 * 1024))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(NotFoundError, match="not found"):
            await client.get_manifest("v1")


# -- JSON nested deeper than the parser recurses: as any other malformed JSON ---------


async def test_a_tag_page_of_deeply_nested_json_is_no_tag_list(connector: Connector) -> None:
    fake, _ = registry()
    fake.on(
        "GET", f"/v2/{REPO}/tags/list", Reply(200, {"Content-Type": "application/json"}, DEEP_JSON)
    )
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match="not a tag list"):
            await client.list_tags()


async def test_an_error_answer_of_deeply_nested_json_keeps_its_status(
    connector: Connector,
) -> None:
    fake, _ = registry()
    fake.on("GET", MANIFEST_PATH, Reply(404, {"Content-Type": "application/json"}, DEEP_JSON))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(NotFoundError, match="not found"):
            await client.get_manifest("v1")


def test_a_refusal_of_deeply_nested_json_is_quoted_as_an_unreadable_body() -> None:
    said = refusal(404, DEEP_JSON, "application/json")
    assert said.code == "UNKNOWN"
    assert said.text.startswith("error parsing HTTP 404 response body")


async def test_a_token_answer_of_deeply_nested_json_is_no_token(connector: Connector) -> None:
    fake, _ = registry(auth="bearer")
    fake.on("GET", "/token", token_answer(DEEP_JSON))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(AuthenticationError, match="sent no token"):
            await client.get_manifest("v1")


async def test_a_login_token_answer_of_deeply_nested_json_is_no_token(
    connector: Connector,
) -> None:
    fake, _ = registry(auth="bearer")
    fake.on("GET", "/token", token_answer(DEEP_JSON))
    async with serve_registry(fake) as server:
        with pytest.raises(AuthenticationError, match="sent no token"):
            await check_login(connector, server.host, LOGIN)


def test_an_x_registry_auth_of_deeply_nested_json_is_invalid() -> None:
    header = base64.urlsafe_b64encode(DEEP_JSON).decode()
    with pytest.raises(InvalidRegistryAuthError, match="invalid X-Registry-Auth header"):
        decode_registry_auth(header)


def test_a_credentials_file_of_deeply_nested_json_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(DEEP_JSON)
    with pytest.raises(ConfigError, match=f"cannot read credentials file {path}"):
        CredentialStore.from_file(path)


def test_a_credential_helper_answer_of_deeply_nested_json_is_refused() -> None:
    done = subprocess.CompletedProcess(["docker-credential-x", "get"], 0, DEEP_JSON, b"")
    with pytest.raises(CredentialHelperError, match="something other than"):
        credentials_module._answer(done, "x", "reg")


# -- ports past 65535: an invalid URL, named --------------------------------------------


async def test_a_redirect_to_a_port_past_65535_is_an_invalid_location(
    connector: Connector,
) -> None:
    fake, _ = registry()
    location = f"http://127.0.0.1:{BAD_PORT}/elsewhere"
    fake.on("GET", MANIFEST_PATH, Reply(307, {"Location": location}))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(
            RegistryProtocolError, match="redirect to an invalid Location"
        ) as caught:
            await client.get_manifest("v1")
    assert location in str(caught.value)


def bad_realm(fake: FakeRegistry) -> str:
    """Every /v2/ request is answered with a challenge whose realm's port is past 65535."""
    realm = f"http://127.0.0.1:{BAD_PORT}/token"
    challenge = f'Bearer realm="{realm}",service="fake"'

    def challenged(request: Request) -> Reply:
        return Reply(401, {"WWW-Authenticate": challenge}, b"")

    fake.on("GET", "/v2/.*", challenged)
    return realm


async def test_a_token_realm_with_a_port_past_65535_is_refused_naming_it(
    connector: Connector,
) -> None:
    fake, _ = registry()
    realm = bad_realm(fake)
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match="cannot use the token realm") as caught:
            await client.get_manifest("v1")
    assert realm in str(caught.value)


async def test_a_login_whose_realm_has_a_port_past_65535_is_refused_naming_it(
    connector: Connector,
) -> None:
    fake, _ = registry()
    realm = bad_realm(fake)
    async with serve_registry(fake) as server:
        with pytest.raises(RegistryProtocolError, match="which is no URL") as caught:
            await check_login(connector, server.host, LOGIN)
    assert realm in str(caught.value)


async def test_an_upload_location_with_a_port_past_65535_is_refused_naming_it(
    connector: Connector,
) -> None:
    fake, _ = registry()
    location = f"http://127.0.0.1:{BAD_PORT}/upload/1"
    fake.on("POST", f"/v2/{REPO}/blobs/uploads/", Reply(202, {"Location": location}))
    async with serve_registry(fake) as server:
        client = await open_client(connector, server)
        with pytest.raises(RegistryProtocolError, match="invalid upload Location") as caught:
            await client.upload_blob(Digest("sha256:" + "0" * 64), 3, b"abc")
    assert location in str(caught.value)
