"""Pulls through the real daemon from real registries (Debian's docker-registry)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

from support.daemon import Daemon, errors, statuses
from support.digests import short
from support.images import LayerSpec, PlatformSpec, build_image, build_index, seed
from support.registry import PASSWORD, USER, Registry, start_registry
from support.throttle import throttled
from support.waiting import wait_until

pytestmark = pytest.mark.registry
MB = 1_000_000


def registry_auth(username: str, password: str) -> str:
    payload = {"username": username, "password": password}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def registry_blob_path(registry: Registry, digest: str) -> Path:
    hex_ = digest.removeprefix("sha256:")
    return registry.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@pytest.mark.parametrize("media", ["oci", "docker"])
def test_pull_stores_the_image_with_its_layers_and_lists_it(
    registry: Registry, daemon: Daemon, layout: Path, media: str
) -> None:
    built = build_image(
        layout, media=media, layers=[LayerSpec(size=300_000, seed=1), LayerSpec(size=1000, seed=2)]
    )
    ref = f"{registry.host}/pull/{media}:v1"
    seed(registry, layout, "latest", f"pull/{media}:v1")

    messages = daemon.pull(ref)

    assert errors(messages) == []
    assert messages[0] == {"status": "Pulling from pull/" + media, "id": "v1"}
    layer_ids = [short(layer.digest) for layer in built.layers]
    assert statuses(messages, "Pulling fs layer") == layer_ids
    assert sorted(statuses(messages, "Download complete")) == sorted(layer_ids)
    assert statuses(messages, "Pull complete") == layer_ids  # registered in chain order
    assert {"status": f"Digest: {built.manifest_digest}"} in messages
    assert messages[-1] == {"status": f"Status: Downloaded newer image for {ref}"}
    image = daemon.inspect(ref)
    assert image["Id"] == built.config_digest
    assert image["RootFS"] == {"Type": "layers", "Layers": built.diff_ids}
    assert image["RepoTags"] == [ref]
    assert image["RepoDigests"] == [f"{registry.host}/pull/{media}@{built.manifest_digest}"]
    assert image["Os"] == "linux"
    assert image["Size"] == sum(layer.uncompressed_size for layer in built.layers)
    [listed] = [row for row in daemon.images() if row["Id"] == built.config_digest]
    assert listed["RepoTags"] == [ref]
    blobs = {p.name for p in daemon.blob_files()}
    assert {
        d.removeprefix("sha256:") for d in [built.config_digest, *(x.digest for x in built.layers)]
    } <= blobs


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_pull_computes_diff_ids_of_gzip_zstd_and_plain_layers(
    registry: Registry, daemon: Daemon, layout: Path, compression: str
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=2_500_000, seed=3, compression=compression)])  # type: ignore[arg-type]
    seed(registry, layout, "latest", f"compress/{compression}:v1")

    messages = daemon.pull(f"{registry.host}/compress/{compression}:v1")

    assert errors(messages) == []
    assert (
        daemon.inspect(f"{registry.host}/compress/{compression}:v1")["RootFS"]["Layers"]
        == built.diff_ids
    )


def test_second_pull_of_the_same_tag_is_up_to_date_and_fetches_nothing(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=10_000, seed=4)])
    seed(registry, layout, "latest", "again/app:v1")
    ref = f"{registry.host}/again/app:v1"
    assert errors(daemon.pull(ref)) == []

    messages = daemon.pull(ref)

    assert messages[-1] == {"status": f"Status: Image is up to date for {ref}"}
    assert registry.blob_gets(built.layers[0].digest) == 1


def test_image_sharing_base_layers_reports_them_as_already_existing(
    registry: Registry, daemon: Daemon, tmp_path: Path
) -> None:
    base = [LayerSpec(size=50_000, seed=10), LayerSpec(size=20_000, seed=11)]
    first = build_image(tmp_path / "a", layers=base)
    second = build_image(tmp_path / "b", layers=[*base, LayerSpec(size=5_000, seed=12)])
    seed(registry, tmp_path / "a", "latest", "shared/first:v1")
    seed(registry, tmp_path / "b", "latest", "shared/second:v1")
    assert errors(daemon.pull(f"{registry.host}/shared/first:v1")) == []

    messages = daemon.pull(f"{registry.host}/shared/second:v1")

    assert errors(messages) == []
    assert statuses(messages, "Already exists") == [short(x.digest) for x in first.layers]
    assert statuses(messages, "Pull complete") == [short(second.layers[2].digest)]
    for layer in first.layers:
        assert registry.blob_gets(layer.digest) == 1


def test_concurrent_pulls_of_one_image_fetch_each_blob_once(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(
        layout, layers=[LayerSpec(size=20_000_000, seed=20), LayerSpec(size=8_000_000, seed=21)]
    )
    seed(registry, layout, "latest", "concurrent/app:v1")
    ref = f"{registry.host}/concurrent/app:v1"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: daemon.pull(ref), range(4)))

    for messages in results:
        assert errors(messages) == []
        assert messages[-1]["status"].startswith("Status: ")
    for layer in built.layers:
        assert registry.blob_gets(layer.digest) == 1
    assert daemon.inspect(ref)["Id"] == built.config_digest


def test_pull_by_digest_verifies_and_records_the_digest(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=1000, seed=30)])
    seed(registry, layout, "latest", "bydigest/app:v1")
    ref = f"{registry.host}/bydigest/app@{built.manifest_digest}"

    messages = daemon.pull(ref)

    assert errors(messages) == []
    assert messages[0]["id"] == built.manifest_digest
    assert messages[-1] == {"status": f"Status: Downloaded newer image for {ref}"}
    image = daemon.inspect(ref)
    assert image["RepoTags"] == []
    assert image["RepoDigests"] == [ref]


def test_pull_by_unknown_digest_is_a_clear_error(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    build_image(layout, layers=[LayerSpec(size=1000, seed=31)])
    seed(registry, layout, "latest", "bydigest/other:v1")

    messages = daemon.pull(f"{registry.host}/bydigest/other@sha256:{'0' * 64}")

    [error] = errors(messages)
    assert "not found" in error
    assert daemon.alive


@pytest.mark.parametrize(
    ("platform", "arch", "variant"),
    [("linux/arm64", "arm64", "v8"), ("linux/arm/v7", "arm", "v7"), ("linux/amd64", "amd64", None)],
)
def test_pull_from_an_index_takes_the_platform_asked_for(
    registry: Registry, daemon: Daemon, layout: Path, platform: str, arch: str, variant: str | None
) -> None:
    index = build_index(
        layout,
        [
            PlatformSpec([LayerSpec(size=1000, seed=40)], architecture="amd64"),
            PlatformSpec([LayerSpec(size=1000, seed=41)], architecture="arm64", variant="v8"),
            PlatformSpec(
                [LayerSpec(size=1000, seed=42, compression="zstd")],
                architecture="arm",
                variant="v7",
            ),
        ],
    )
    seed(registry, layout, "latest", "multi/app:v1")
    ref = f"{registry.host}/multi/app:v1"

    messages = daemon.pull(ref, platform=platform)

    assert errors(messages) == []
    wanted = index.image(arch, variant)
    image = daemon.inspect(ref)
    assert image["Id"] == wanted.config_digest
    assert image["Architecture"] == arch
    assert image["RepoDigests"] == [f"{registry.host}/multi/app@{index.digest}"]
    assert {"status": f"Digest: {index.digest}"} in messages


def test_pull_of_a_platform_the_index_lacks_names_what_it_has(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    build_index(layout, [PlatformSpec([LayerSpec(size=100, seed=43)], architecture="amd64")])
    seed(registry, layout, "latest", "multi/amd64only:v1")

    [error] = errors(daemon.pull(f"{registry.host}/multi/amd64only:v1", platform="linux/s390x"))

    assert "linux/s390x" in error
    assert "linux/amd64" in error


@pytest.mark.parametrize("ref", ["missing/repo:v1", "pull/oci:no-such-tag"])
def test_missing_repository_or_tag_is_a_clear_error_and_the_daemon_stays_up(
    registry: Registry, daemon: Daemon, ref: str
) -> None:
    [error] = errors(daemon.pull(f"{registry.host}/{ref}"))

    assert "not found" in error
    assert "manifest unknown" in error or "name unknown" in error
    assert daemon.alive
    assert daemon.client().request("GET", "/_ping").read() == b"OK"


def test_invalid_reference_is_refused_before_any_transfer(daemon: Daemon) -> None:
    from ferryd.cli.client import DaemonError

    with pytest.raises(DaemonError, match="invalid reference format"):
        list(daemon.client().stream("POST", "/images/create", {"fromImage": "Not_A/V:a:b"}))


def test_registry_serving_wrong_bytes_fails_and_stores_nothing(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=100_000, seed=50)])
    seed(registry, layout, "latest", "lying/bytes:v1")
    blob = registry_blob_path(registry, built.layers[0].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    [error] = errors(daemon.pull(f"{registry.host}/lying/bytes:v1"))

    assert "verification failed" in error
    assert built.layers[0].digest in error
    assert daemon.images() == []
    assert not [p for p in daemon.blob_files() if p.name == built.layers[0].digest[7:]]
    assert list((daemon.root / "partial").iterdir()) == []
    assert registry.blob_gets(built.layers[0].digest) == 1  # not retried


def test_image_whose_config_lies_about_diff_ids_fails_and_stores_nothing(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=10_000, seed=51)], wrong_diff_id=True)
    seed(registry, layout, "latest", "lying/diffid:v1")

    [error] = errors(daemon.pull(f"{registry.host}/lying/diffid:v1"))

    assert "DiffID" in error
    assert daemon.images() == []
    assert not [p for p in daemon.blob_files() if p.name == built.layers[0].digest[7:]]


def test_pull_with_basic_auth_over_tls(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, ca: trustme.CA
) -> None:
    daemon = _tls_daemon(start_daemon, tls_registry, ca)
    built = build_image(layout, layers=[LayerSpec(size=5000, seed=60)])
    seed(tls_registry, layout, "latest", "private/app:v1")

    messages = daemon.pull(
        f"{tls_registry.host}/private/app:v1", auth=registry_auth(USER, PASSWORD)
    )

    assert errors(messages) == []
    assert daemon.inspect(f"{tls_registry.host}/private/app:v1")["Id"] == built.config_digest


def test_a_new_daemons_pull_of_an_image_it_holds_makes_one_request(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    # Loopback is insecure: https (unverified), then plain HTTP. No `GET /v2/` goes
    # first: the manifest request finds the endpoint that answers (https fails in the
    # TLS handshake, which the access log does not see).
    daemon = start_daemon(log_level="debug")
    build_image(layout, layers=[LayerSpec(size=3000, seed=62)])
    seed(registry, layout, "latest", "first-request/app:v1")
    reference = f"{registry.host}/first-request/app:v1"
    assert errors(daemon.pull(reference)) == []

    asked = _asked_by_a_new_daemon(daemon, registry, reference)

    assert asked == [("GET", "/v2/first-request/app/manifests/v1", 200)]
    login = daemon.log_events("registry.login")[-1]
    assert (login["endpoint"], login["scheme"]) == (f"http://{registry.host}", None)


def test_a_new_daemons_pull_of_an_image_it_holds_over_tls_with_a_login(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, ca: trustme.CA
) -> None:
    # Two requests, the fewest a login allows: the manifest request without a login,
    # whose 401 teaches the Basic challenge, then the same request with the login.
    daemon = _tls_daemon(start_daemon, tls_registry, ca, log_level="debug")
    build_image(layout, layers=[LayerSpec(size=3000, seed=63)])
    seed(tls_registry, layout, "latest", "private/first-request:v1")
    reference = f"{tls_registry.host}/private/first-request:v1"
    auth = registry_auth(USER, PASSWORD)
    assert errors(daemon.pull(reference, auth=auth)) == []

    asked = _asked_by_a_new_daemon(daemon, tls_registry, reference, auth)

    manifest = "/v2/private/first-request/manifests/v1"
    assert asked == [("GET", manifest, 401), ("GET", manifest, 200)]
    login = daemon.log_events("registry.login")[-1]
    assert (login["endpoint"], login["scheme"]) == (f"https://{tls_registry.host}", "basic")


def _asked_by_a_new_daemon(
    daemon: Daemon, registry: Registry, reference: str, auth: str | None = None
) -> list[tuple[str, str, int]]:
    """Restart `daemon`, which holds `reference`, and pull it again: the requests that
    pull made, as the registry's access log has them."""
    daemon.restart()
    before = len(registry.access_log())
    messages = daemon.pull(reference, auth=auth)
    assert errors(messages) == []
    assert messages[-1] == {"status": f"Status: Image is up to date for {reference}"}
    return [(e.method, e.path, e.status) for e in registry.access_log()[before:]]


def test_pull_with_a_wrong_password_is_a_clear_error(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], layout: Path, ca: trustme.CA
) -> None:
    daemon = _tls_daemon(start_daemon, tls_registry, ca)
    build_image(layout, layers=[LayerSpec(size=5000, seed=61)])
    seed(tls_registry, layout, "latest", "private/app:v2")

    [error] = errors(
        daemon.pull(f"{tls_registry.host}/private/app:v2", auth=registry_auth(USER, "wrong"))
    )

    assert "authentication required" in error or "unauthorized" in error
    assert "wrong" not in error  # the password given is never echoed
    assert daemon.alive


def test_pull_uses_the_credentials_file_when_the_client_sends_none(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {f"https://{tls_registry.host}": {"auth": token}}}))
    daemon = _tls_daemon(start_daemon, tls_registry, ca, credentials_file=str(config))
    build_image(layout, layers=[LayerSpec(size=5000, seed=62)])
    seed(tls_registry, layout, "latest", "private/app:v3")

    assert errors(daemon.pull(f"{tls_registry.host}/private/app:v3")) == []


def test_tls_registry_with_an_unknown_ca_is_refused(
    tls_registry: Registry, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(insecure_registries=[])

    [error] = errors(
        daemon.pull(f"{tls_registry.host}/private/app:v1", auth=registry_auth(USER, PASSWORD))
    )

    assert "certificate" in error.lower()


def test_connection_cut_mid_layer_resumes_with_range(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    registry = start_registry(tmp_path / "cut-registry")
    try:
        layout = tmp_path / "layout"
        # Larger than what the socket buffers between the registry and the daemon can
        # hold when the registry dies: the rest must come from the retry.
        built = build_image(layout, layers=[LayerSpec(size=32 * MB, seed=70, compression="none")])
        seed(registry, layout, "latest", "cut/app:v1")
        daemon = start_daemon(retry_delay=0.5)
        with throttled(registry.host, rate=4 * MB) as proxy:
            reference = f"{proxy.host}/cut/app:v1"
            result: list[list[dict[str, object]]] = []
            puller = threading.Thread(target=lambda: result.append(daemon.pull(reference)))
            puller.start()
            daemon.wait_for_download(built.layers[0].digest)
            assert registry.pid is not None
            os.kill(registry.pid, signal.SIGKILL)
            proxy.rate = 1000 * MB
            registry.stop()
            registry.start()
            puller.join(60)

        [messages] = result
        assert errors(messages) == []
        assert any(str(m.get("status", "")).startswith("Retrying in") for m in messages)
        assert daemon.inspect(reference)["Id"] == built.config_digest
        assert registry.ranged_gets(built.layers[0].digest), "the retry did not resume with Range"
    finally:
        registry.stop()


def test_every_pull_is_one_structured_log_event(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(
        layout, layers=[LayerSpec(size=3000, seed=80), LayerSpec(size=3000, seed=81)]
    )
    seed(registry, layout, "latest", "logged/app:v1")

    assert errors(daemon.pull(f"{registry.host}/logged/app:v1")) == []

    [event] = daemon.log_events("image.pull")
    assert event["action"] == "pull"
    assert event["reference"] == f"{registry.host}/logged/app:v1"
    assert event["image_id"] == built.config_digest
    assert event["layers_fetched"] == 2
    assert event["layers_reused"] == 0
    assert event["bytes"] == sum(layer.size for layer in built.layers)
    assert event["seconds"] >= 0


def _tls_daemon(
    start_daemon: Callable[..., Daemon], registry: Registry, ca: trustme.CA, **settings: object
) -> Daemon:
    """A daemon that verifies the registry's certificate with the test CA (certs.d)."""
    daemon = start_daemon(insecure_registries=[], **settings)
    daemon.trust(registry.host, ca)
    return daemon


def test_client_that_goes_away_cancels_its_download_and_the_next_pull_resumes(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=16 * MB, seed=71, compression="none")])
    seed(registry, layout, "latest", "gone/app:v1")
    daemon = start_daemon()
    digest = built.layers[0].digest
    with throttled(registry.host, rate=4 * MB) as proxy:
        reference = f"{proxy.host}/gone/app:v1"
        response = daemon.client().request("POST", "/images/create", {"fromImage": reference})
        partial = daemon.wait_for_download(digest)
        response.close()  # the client hangs up mid-layer

        wait_until(lambda: daemon.log_events("transfer.cancelled"), 30, what="the cancel")
        kept = partial.stat().st_size
        assert 0 < kept < built.layers[0].size

        proxy.rate = 1000 * MB
        assert errors(daemon.pull(reference)) == []
    assert daemon.inspect(reference)["Id"] == built.config_digest
    assert registry.ranged_gets(digest), "the second pull did not resume from the partial file"


def test_pull_interrupted_by_a_daemon_crash_resumes_after_restart(
    registry: Registry, start_daemon: Callable[..., Daemon], layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=16 * MB, seed=72, compression="none")])
    seed(registry, layout, "latest", "crash/app:v1")
    daemon = start_daemon()
    digest = built.layers[0].digest
    with throttled(registry.host, rate=4 * MB) as proxy:
        reference = f"{proxy.host}/crash/app:v1"
        puller = threading.Thread(target=_pull_ignoring_errors, args=(daemon, reference))
        puller.start()
        daemon.wait_for_download(digest)
        assert daemon.process is not None
        daemon.process.kill()
        puller.join(30)
        daemon.stop()
        daemon.start()

        proxy.rate = 1000 * MB
        assert errors(daemon.pull(reference)) == []
    assert daemon.inspect(reference)["Id"] == built.config_digest
    assert registry.ranged_gets(digest), (
        "the pull after the restart did not resume from the partial file"
    )


def _pull_ignoring_errors(daemon: Daemon, ref: str) -> None:
    """A pull whose daemon is about to die: how the stream ends does not matter."""
    with contextlib.suppress(Exception):
        daemon.pull(ref)


def test_pull_by_digest_into_a_new_repository_name_reports_a_newer_image(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    built = build_image(layout, layers=[LayerSpec(size=1000, seed=73)])
    seed(registry, layout, "latest", "renamed/one:v1")
    seed(registry, layout, "latest", "renamed/two:v1")
    assert errors(daemon.pull(f"{registry.host}/renamed/one:v1")) == []
    ref = f"{registry.host}/renamed/two@{built.manifest_digest}"

    messages = daemon.pull(ref)

    assert messages[-1] == {"status": f"Status: Downloaded newer image for {ref}"}
    assert daemon.pull(ref)[-1] == {"status": f"Status: Image is up to date for {ref}"}


def test_a_failed_pull_is_one_structured_log_event(registry: Registry, daemon: Daemon) -> None:
    [error] = errors(daemon.pull(f"{registry.host}/nothing/here:v1"))

    [event] = daemon.log_events("image.pull_failed")
    assert event["reference"] == f"{registry.host}/nothing/here:v1"
    assert event["error"] == error


def test_a_repository_without_a_tag_pulls_every_tag(
    registry: Registry, daemon: Daemon, layout: Path
) -> None:
    one = build_image(layout / "one", layers=[LayerSpec(size=1000, seed=911)])
    two = build_image(layout / "two", layers=[LayerSpec(size=1000, seed=912)])
    seed(registry, layout / "one", "latest", "alltags/app:v1")
    seed(registry, layout / "two", "latest", "alltags/app:v2")
    repository = f"{registry.host}/alltags/app"

    messages = list(daemon.client().stream("POST", "/images/create", {"fromImage": repository}))

    assert errors(messages) == []
    assert [m["status"] for m in messages if m.get("status", "").startswith("Status:")] == [
        f"Status: Downloaded newer image for {repository}"
    ]
    assert daemon.inspect(f"{repository}:v1")["Id"] == one.config_digest
    assert daemon.inspect(f"{repository}:v2")["Id"] == two.config_digest
    assert len(daemon.log_events("image.pull")) == 2


def test_every_tag_of_an_unknown_repository_is_a_404(registry: Registry, daemon: Daemon) -> None:
    from ferryd.cli.client import DaemonError

    with pytest.raises(DaemonError, match="not found"):
        list(
            daemon.client().stream(
                "POST", "/images/create", {"fromImage": f"{registry.host}/alltags/none"}
            )
        )
