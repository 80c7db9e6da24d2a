"""Registry mirrors: pulls try each mirror of a registry in order, then the registry."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme

from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import (
    PASSWORD,
    USER,
    Registry,
    fixture_registry,
)

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Registry]:
    """A second real registry, standing in for a pull-through cache."""
    with fixture_registry(tmp_path_factory, "mirror") as mirror:
        yield mirror


@pytest.fixture(scope="module")
def tls_mirror(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Registry]:
    """A mirror over HTTPS (anonymous), its certificate from the test CA."""
    with fixture_registry(tmp_path_factory, "tls-mirror", tls=ca) as mirror:
        yield mirror


def _manifest_gets(registry: Registry, repository: str) -> int:
    return registry.requests("GET", f"/v2/{repository}/manifests/")


def test_an_image_the_mirror_has_is_pulled_from_the_mirror(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=401)])
    seed(mirror, layout, "latest", "mirrored/app:v1")  # only the mirror has it
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})

    messages = daemon.pull(f"{registry.host}/mirrored/app:v1")

    assert errors(messages) == []
    assert daemon.inspect(f"{registry.host}/mirrored/app:v1")["Id"] == built.config_digest
    assert mirror.blob_gets(built.layers[0].digest) == 1
    assert _manifest_gets(registry, "mirrored/app") == 0
    [pulled] = daemon.log_events("image.pull")
    assert pulled["mirror"] == mirror.url


def test_the_mirror_is_asked_before_the_registry(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The same tag, different images: the one pulled tells who served it.
    at_mirror = build_image(tmp_path / "mirror", layers=[LayerSpec(size=4000, seed=409)])
    seed(mirror, tmp_path / "mirror", "latest", "both/app:v1")
    build_image(tmp_path / "origin", layers=[LayerSpec(size=4000, seed=410)])
    seed(registry, tmp_path / "origin", "latest", "both/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})
    asked = _manifest_gets(registry, "both/app")  # seeding reads it back

    assert errors(daemon.pull(f"{registry.host}/both/app:v1")) == []

    assert daemon.inspect(f"{registry.host}/both/app:v1")["Id"] == at_mirror.config_digest
    assert _manifest_gets(registry, "both/app") == asked
    assert daemon.log_events("registry.mirror_failed") == []


def test_an_image_the_mirror_lacks_comes_from_the_registry(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=402)])
    seed(registry, layout, "latest", "origin-only/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/origin-only/app:v1")) == []

    assert daemon.inspect(f"{registry.host}/origin-only/app:v1")["Id"] == built.config_digest
    assert _manifest_gets(mirror, "origin-only/app") == 1  # asked, said 404
    assert registry.blob_gets(built.layers[0].digest) == 1
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == mirror.url
    assert skipped["reference"] == f"{registry.host}/origin-only/app:v1"
    assert "not found" in skipped["error"]
    [pulled] = daemon.log_events("image.pull")
    assert "mirror" not in pulled


def test_a_pull_the_registry_served_does_not_make_the_next_skip_the_mirror(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    build_image(tmp_path / "origin", layers=[LayerSpec(size=4000, seed=418)])
    seed(registry, tmp_path / "origin", "latest", "sticky/origin:v1")
    at_mirror = build_image(tmp_path / "mirror", layers=[LayerSpec(size=4000, seed=419)])
    seed(mirror, tmp_path / "mirror", "latest", "sticky/mirrored:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})
    assert errors(daemon.pull(f"{registry.host}/sticky/origin:v1")) == []  # mirror: 404

    assert errors(daemon.pull(f"{registry.host}/sticky/mirrored:v1")) == []

    assert mirror.blob_gets(at_mirror.layers[0].digest) == 1
    assert [e.get("mirror") for e in daemon.log_events("image.pull")] == [None, mirror.url]


def test_mirrors_are_tried_in_order(
    registry: Registry,
    mirror: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    refused_port: int,
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=403)])
    seed(mirror, layout, "latest", "ordered/app:v1")
    down = f"http://127.0.0.1:{refused_port}"
    daemon = start_daemon(registry_mirrors={registry.host: [down, mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/ordered/app:v1")) == []

    assert mirror.blob_gets(built.layers[0].digest) == 1
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == down


def test_an_unreachable_mirror_falls_back_to_the_registry(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, refused_port: int
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=404)])
    seed(registry, layout, "latest", "fallback/app:v1")
    down = f"http://127.0.0.1:{refused_port}"
    daemon = start_daemon(registry_mirrors={registry.host: [down]})

    assert errors(daemon.pull(f"{registry.host}/fallback/app:v1")) == []
    assert daemon.inspect(f"{registry.host}/fallback/app:v1")["Id"] == built.config_digest


def test_mirrors_of_another_registry_are_not_used(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=4000, seed=405)])
    seed(registry, layout, "latest", "unmirrored/app:v1")
    daemon = start_daemon(registry_mirrors={"other.example:5000": [mirror.url]})

    assert errors(daemon.pull(f"{registry.host}/unmirrored/app:v1")) == []
    assert _manifest_gets(mirror, "unmirrored/app") == 0


@pytest.mark.parametrize("trusted_by", ["certs.d", "insecure_registries"])
def test_an_https_mirror_is_trusted_by_its_own_host(
    registry: Registry,
    tls_mirror: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
    trusted_by: str,
) -> None:
    layer = LayerSpec(size=4000, seed=414 if trusted_by == "certs.d" else 416)
    built = build_image(layout, layers=[layer])
    seed(tls_mirror, layout, "latest", f"tls-mirrored-{trusted_by}/app:v1")
    # Only the registry itself is insecure, unless the mirror's host is listed too.
    insecure = [registry.host] + ([tls_mirror.host] if trusted_by != "certs.d" else [])
    mirrors = {registry.host: [tls_mirror.url]}
    daemon = start_daemon(insecure_registries=insecure, registry_mirrors=mirrors)
    if trusted_by == "certs.d":
        daemon.trust(tls_mirror.host, ca)
    reference = f"{registry.host}/tls-mirrored-{trusted_by}/app:v1"

    assert errors(daemon.pull(reference)) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    assert tls_mirror.blob_gets(built.layers[0].digest) == 1


def test_an_https_mirror_nothing_vouches_for_is_skipped_for_the_registry(
    registry: Registry, tls_mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=415)])
    seed(registry, layout, "latest", "untrusted-mirror/app:v1")
    daemon = start_daemon(
        insecure_registries=[registry.host], registry_mirrors={registry.host: [tls_mirror.url]}
    )
    reference = f"{registry.host}/untrusted-mirror/app:v1"

    assert errors(daemon.pull(reference)) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == tls_mirror.url
    assert "TLS certificate verification failed" in skipped["error"]
    assert f"certs.d/{tls_mirror.host}/ca.crt" in skipped["error"]


def test_a_push_goes_to_the_registry_not_its_mirror(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=4000, seed=406)])
    seed(mirror, layout, "latest", "pushed-origin/app:v1")
    daemon = start_daemon(registry_mirrors={registry.host: [mirror.url]})
    assert errors(daemon.pull(f"{registry.host}/pushed-origin/app:v1")) == []
    mirror_puts = mirror.requests("PUT", "/v2/pushed-origin/app/")

    pushed = list(
        daemon.client().stream(
            "POST", f"/images/{registry.host}/pushed-origin/app/push", {"tag": "v1"}
        )
    )

    assert errors(pushed) == []
    assert registry.requests("PUT", "/v2/pushed-origin/app/manifests/v1") == 1
    assert mirror.requests("PUT", "/v2/pushed-origin/app/") == mirror_puts


Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[str, dict[str, str]], Answer]


class FakeMirror:
    """A mirror on loopback that answers every GET as `respond(path, headers)` says and
    records each request's path and headers (lower-case names). It runs in a thread:
    the daemon under test is another process, and the test waits on it synchronously.
    """

    def __init__(self, respond: Responder) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {name.lower(): value for name, value in self.headers.items()}
                fake.requests.append((self.path, headers))
                status, reply_headers, body = respond(self.path, headers)
                self.send_response(status)
                for name, value in reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # Polled often: shutdown() waits for the loop to look (every 0.5 s by default).
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake_mirror() -> Iterator[Callable[[Responder], FakeMirror]]:
    started: list[FakeMirror] = []

    def start(respond: Responder) -> FakeMirror:
        started.append(FakeMirror(respond))
        return started[-1]

    yield start
    for mirror in started:
        mirror.close()


_JSON = {"Content-Type": "application/json"}


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
    return status, {**_JSON, **(headers or {})}, body


def _refusing(status: int, code: str, challenge: str = "") -> Responder:
    """A mirror whose ping works (or asks for a login) and that refuses everything else."""
    headers = {"WWW-Authenticate": challenge} if challenge else {}

    def respond(path: str, _headers: dict[str, str]) -> Answer:
        if path == "/v2/" and not challenge:
            return 200, _JSON, b"{}"
        return _error(status, code, headers)

    return respond


def _proxy(registry: Registry, prefix: str = "", corrupt: str = "") -> Responder:
    """A mirror serving `registry`'s answers under the path `prefix`, with the bytes of
    blob `corrupt` (if given) changed on the way."""

    def respond(path: str, headers: dict[str, str]) -> Answer:
        if not path.startswith(f"{prefix}/v2/"):
            return _error(404, "NOT_FOUND")
        upstream = httpx.get(
            f"{registry.url}{path.removeprefix(prefix)}",
            headers={"Accept": headers.get("accept", "*/*")},
        )
        body = upstream.content
        if corrupt and path.endswith(f"/blobs/{corrupt}"):
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        kept = ("content-type", "docker-content-digest", "www-authenticate")
        return (
            upstream.status_code,
            {name: upstream.headers[name] for name in kept if name in upstream.headers},
            body,
        )

    return respond


def _not_a_manifest(path: str, _headers: dict[str, str]) -> Answer:
    """Every manifest asked for is answered with bytes that are not it."""
    if path == "/v2/":
        return 200, _JSON, b"{}"
    kind = "application/vnd.oci.image.manifest.v1+json"
    return 200, {"Content-Type": kind}, b'{"schemaVersion": 2, "lies": true}'


@pytest.mark.parametrize(
    ("status", "code", "challenge", "reason"),
    [
        (500, "UNKNOWN", "", "HTTP 500"),
        (503, "UNAVAILABLE", "", "HTTP 503"),
        (403, "DENIED", "", "denied"),
        (429, "TOOMANYREQUESTS", "", "too many requests"),
        (401, "UNAUTHORIZED", 'Basic realm="mirror"', "mirror {url} requires authentication"),
    ],
)
def test_a_mirror_that_refuses_is_skipped_for_the_registry(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    fake_mirror: Callable[[Responder], FakeMirror],
    status: int,
    code: str,
    challenge: str,
    reason: str,
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=411)])
    seed(registry, layout, "latest", f"refused-{status}/app:v1")
    refusing = fake_mirror(_refusing(status, code, challenge))
    daemon = start_daemon(registry_mirrors={registry.host: [refusing.url]})
    reference = f"{registry.host}/refused-{status}/app:v1"

    assert errors(daemon.pull(reference)) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == refusing.url
    assert reason.format(url=refusing.url) in skipped["error"]


@pytest.mark.parametrize("by", ["digest", "tag"])
def test_a_mirror_serving_something_else_than_the_manifest_is_skipped_for_the_registry(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    fake_mirror: Callable[[Responder], FakeMirror],
    by: str,
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=407)])
    digest = seed(registry, layout, "latest", f"lied-to-by-{by}/app:v1")
    lying = fake_mirror(_not_a_manifest)
    daemon = start_daemon(registry_mirrors={registry.host: [lying.url]})
    reference = f"{registry.host}/lied-to-by-{by}/app" + (f"@{digest}" if by == "digest" else ":v1")

    assert errors(daemon.pull(reference)) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == lying.url
    # By digest the bytes must hash to it; by tag they must at least be a manifest.
    assert ("digest" if by == "digest" else "malformed image manifest") in skipped["error"]


def test_a_mirror_under_a_path_prefix_is_asked_under_it(
    registry: Registry,
    mirror: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    fake_mirror: Callable[[Responder], FakeMirror],
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=417)])
    seed(mirror, layout, "latest", "prefixed/app:v1")
    prefixed = fake_mirror(_proxy(mirror, prefix="/cache/docker"))
    daemon = start_daemon(registry_mirrors={registry.host: [f"{prefixed.url}/cache/docker/"]})

    assert errors(daemon.pull(f"{registry.host}/prefixed/app:v1")) == []

    assert daemon.inspect(f"{registry.host}/prefixed/app:v1")["Id"] == built.config_digest
    assert {path.split("/v2/")[0] for path, _ in prefixed.requests} == {"/cache/docker"}
    assert daemon.log_events("registry.mirror_failed") == []


def test_a_layer_a_mirror_corrupts_fails_the_pull_and_names_the_mirror(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    fake_mirror: Callable[[Responder], FakeMirror],
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=40_000, seed=412)])
    seed(registry, layout, "latest", "corrupted/app:v1")
    layer = built.layers[0].digest
    corrupt = fake_mirror(_proxy(registry, corrupt=layer))
    daemon = start_daemon(registry_mirrors={registry.host: [corrupt.url]})

    [error] = errors(daemon.pull(f"{registry.host}/corrupted/app:v1"))

    assert f"verification failed for digest {layer}" in error
    assert error.endswith(f"(served by mirror {corrupt.url})")
    assert daemon.images() == []
    # The manifest chose the mirror: the registry saw the layer asked for only through
    # it, and bad bytes are not worth a retry.
    through_mirror = [path for path, _ in corrupt.requests if path.endswith(layer)]
    assert len(through_mirror) == registry.blob_gets(layer) == 1
    assert daemon.log_events("registry.mirror_failed") == []


@pytest.mark.parametrize(
    "challenge",
    ['Basic realm="mirror"', 'Bearer realm="{url}/token",service="mirror"'],
)
def test_the_clients_login_for_the_registry_never_reaches_its_mirror(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
    fake_mirror: Callable[[Responder], FakeMirror],
    challenge: str,
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=413)])
    seed(tls_registry, layout, "latest", "private-mirrored/app:v1")

    def asking_for_a_login(path: str, _headers: dict[str, str]) -> Answer:
        if path.startswith("/token"):
            return 401, _JSON, b"{}"  # no token for anonymous
        realm = challenge.format(url=login_wanted.url)
        return _error(401, "UNAUTHORIZED", {"WWW-Authenticate": realm})

    login_wanted = fake_mirror(asking_for_a_login)
    # The registry is not insecure; the mirror is plain HTTP all the same, as written.
    daemon = start_daemon(
        insecure_registries=[], registry_mirrors={tls_registry.host: [login_wanted.url]}
    )
    daemon.trust(tls_registry.host, ca)
    login = json.dumps({"username": USER, "password": PASSWORD}).encode()
    reference = f"{tls_registry.host}/private-mirrored/app:v1"

    assert errors(daemon.pull(reference, auth=base64.urlsafe_b64encode(login).decode())) == []

    assert daemon.inspect(reference)["Id"] == built.config_digest
    asked = [path.split("?")[0] for path, _ in login_wanted.requests]
    # It was asked (its token service too, for a Bearer challenge), anonymously.
    assert asked[0] == "/v2/private-mirrored/app/manifests/v1"
    assert ("/token" in asked) == challenge.startswith("Bearer")
    assert all("authorization" not in headers for _path, headers in login_wanted.requests)
    [skipped] = daemon.log_events("registry.mirror_failed")
    assert skipped["mirror"] == login_wanted.url


def test_mirrors_added_by_a_reload_are_used_by_the_next_pull(
    registry: Registry, mirror: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=4000, seed=408)])
    seed(mirror, layout, "latest", "reloaded-mirror/app:v1")
    daemon = start_daemon()
    reference = f"{registry.host}/reloaded-mirror/app:v1"
    assert errors(daemon.pull(reference)) != []  # the registry itself does not have it

    event = daemon.reload(registry_mirrors={registry.host: [mirror.url]})

    assert event["changed"] == ["registry_mirrors"]
    assert errors(daemon.pull(reference)) == []
    assert daemon.inspect(reference)["Id"] == built.config_digest
