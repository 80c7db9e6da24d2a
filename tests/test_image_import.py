"""`POST /images/create?fromSrc=-` (`docker import`, docker-py's `import_image`): a root
filesystem tarball becomes a one-layer image, streamed into the store as a plain tar
whose digest is its DiffID; hostile and broken tarballs are refused and leave nothing."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backports import zstd

from support.daemon import Daemon
from support.digests import sha256
from support.images import registry_manifest
from support.registry import Registry

pytestmark = [pytest.mark.daemon]

docker = pytest.importorskip("docker")
needs_docker_cli = pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
MiB = 1 << 20


def rootfs(files: dict[str, bytes] | None = None, **links: tuple[str, str]) -> bytes:
    """A small tar: a directory, its files, and links (`name=(kind, target)`)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo("etc")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        tar.addfile(directory)
        for name, data in (files or {"etc/hostname": b"ferryd\n"}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in links.items():
            info = tarfile.TarInfo(name.replace("__", "/"))
            info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture
def api(daemon: Daemon) -> Iterator[Any]:
    client = docker.APIClient(base_url=daemon.host, version="1.47")
    yield client
    client.close()


def post_import(
    daemon: Daemon, body: bytes | Iterator[bytes], params: dict[str, Any] | None = None
) -> httpx.Response:
    with daemon.http() as http:
        return http.post(
            "/v1.47/images/create",
            params={"fromSrc": "-", **(params or {})},
            content=body,
        )


def left_behind(daemon: Daemon) -> list[Path]:
    """Files an import left: staged ones, and blobs (an import that failed stores none)."""
    staged = [p for p in (daemon.root / "loading").rglob("*") if p.is_file()]
    return staged + daemon.blob_files()


def test_import_with_changes_then_inspect_shows_them(daemon: Daemon, api: Any) -> None:
    tar = rootfs()
    changes = [
        'CMD ["/bin/sh", "-c", "echo hi"]',
        "ENTRYPOINT /entry.sh",
        'ENV A=1 B="two words"',
        "ENV C ${A}-$B",
        "EXPOSE 80 53/udp 8000-8001",
        "LABEL org.example.team=ferry",
        "USER 1000:1000",
        "WORKDIR /srv",
        "WORKDIR app",
        'VOLUME ["/data", "/cache"]',
        "ONBUILD RUN make",
        "STOPSIGNAL SIGTERM",
        "HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://localhost/",
    ]

    answer = api.import_image_from_data(tar, repository="imported/app", tag="v1", changes=changes)

    image_id = json.loads(answer)["status"]
    inspected = api.inspect_image("imported/app:v1")
    config = inspected["Config"]
    assert inspected["Id"] == image_id
    assert inspected["RootFS"]["Layers"] == [sha256(tar)]  # the plain tar's digest
    assert inspected["Os"] == "linux"
    # ENTRYPOINT clears a CMD given before it only when no CMD was given: CMD came first.
    assert config["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert config["Entrypoint"] == ["/bin/sh", "-c", "/entry.sh"]
    assert config["Env"] == ["A=1", "B=two words", "C=1-two words"]
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert config["Labels"] == {"org.example.team": "ferry"}
    assert config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/srv/app"
    assert config["Volumes"] == {"/data": {}, "/cache": {}}
    assert config["OnBuild"] == ["RUN make"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/"],
        "Interval": 5_000_000_000,
        "Retries": 3,
    }


@pytest.mark.parametrize(
    ("compress", "name"),
    [
        (lambda data: data, "tar"),
        (gzip.compress, "gzip"),
        (bz2.compress, "bzip2"),
        (lzma.compress, "xz"),
        (zstd.compress, "zstd"),
    ],
)
def test_import_takes_what_dockerds_archive_package_detects(
    daemon: Daemon, compress: Callable[[bytes], bytes], name: str
) -> None:
    tar = rootfs({"etc/hostname": name.encode() * 1000})

    response = post_import(daemon, compress(tar), {"repo": f"formats/{name}"})

    assert response.status_code == 200, response.text
    [line] = response.text.splitlines()
    image_id = json.loads(line)["status"]
    assert daemon.inspect(f"formats/{name}")["RootFS"]["Layers"] == [sha256(tar)]
    [event] = [e for e in daemon.log_events("image.import") if e["image_id"] == image_id]
    assert event["format"] == name
    assert event["bytes"] == len(tar)


def test_import_without_repo_makes_an_untagged_image_with_dockerds_comment(
    daemon: Daemon, api: Any
) -> None:
    answer = api.import_image_from_data(rootfs({"a": b"untagged"}))

    image_id = json.loads(answer)["status"]
    [row] = [r for r in daemon.images() if r["Id"] == image_id]
    assert row["RepoTags"] == []
    config = json.loads((daemon.root / "blobs" / "sha256" / image_id[7:]).read_bytes())
    assert config["comment"] == "Imported from -"
    assert config["history"] == [{"created": config["created"], "comment": "Imported from -"}]
    assert config["rootfs"]["type"] == "layers"


def test_import_with_a_message_and_platform(daemon: Daemon) -> None:
    response = post_import(
        daemon,
        rootfs({"b": b"arm"}),
        {"repo": "imported/arm:v2", "message": "from a tarball", "platform": "linux/arm64"},
    )

    assert response.status_code == 200, response.text
    inspected = daemon.inspect("imported/arm:v2")
    assert inspected["Architecture"] == "arm64"
    image_id = inspected["Id"]
    config = json.loads((daemon.root / "blobs" / "sha256" / image_id[7:]).read_bytes())
    assert config["comment"] == "from a tarball"


def test_importing_the_same_tarball_twice_reuses_the_layer(daemon: Daemon) -> None:
    tar = rootfs({"c": b"same"})

    first = post_import(daemon, tar, {"repo": "twice/a"})
    second = post_import(daemon, gzip.compress(tar), {"repo": "twice/b"})

    assert first.status_code == second.status_code == 200
    layers = [p for p in daemon.blob_files() if p.name == sha256(tar)[7:]]
    assert len(layers) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (rootfs({"../escape": b"x"}), "is outside of the root filesystem"),
        (rootfs({"etc/../../escape": b"x"}), "is outside of the root filesystem"),
        (rootfs(etc__link=("hardlink", "../../etc/passwd")), "invalid hardlink"),
        (rootfs(etc__link=("symlink", "../../../etc/passwd")), "invalid symlink"),
        (rootfs()[:700], "ended early"),
        (b"this is not a tarball at all" * 40, "not a tar archive"),
        (b"", "the import is empty"),
        (gzip.compress(rootfs())[:40], "truncated"),
        (b"\x1f\x8b\x08\x00" + b"garbage" * 100, "gzip"),
        (b"BZh9" + b"garbage" * 100, "not valid bzip2"),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "hardlink-out",
        "symlink-out",
        "cut",
        "garbage",
        "empty",
        "gzip-cut",
        "gzip-garbage",
        "bzip2-garbage",
    ],
)
def test_a_hostile_or_broken_tarball_is_refused_and_leaves_nothing(
    daemon: Daemon, body: bytes, message: str
) -> None:
    response = post_import(daemon, body, {"repo": "hostile/x"})

    assert response.status_code == 400, response.text
    assert message in response.json()["message"]
    assert daemon.images() == []
    assert left_behind(daemon) == []
    assert daemon.alive


def test_links_inside_the_root_are_taken(daemon: Daemon) -> None:
    body = rootfs(
        etc__abs=("symlink", "/etc/hostname"),
        etc__rel=("symlink", "../etc/hostname"),
        etc__hard=("hardlink", "etc/hostname"),
    )

    response = post_import(daemon, body, {"repo": "links/ok"})

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["RUN make"], "run is not a valid change command"),
        (["FROM scratch"], "from is not a valid change command"),
        (["ENV ONLYKEY"], "ENV must have two arguments"),
        (["ONBUILD ONBUILD RUN x"], "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        (["EXPOSE 80/bogus"], "invalid proto: bogus"),
        (["STOPSIGNAL SIGNOPE"], "Invalid signal: SIGNOPE"),
        (["CMD --help"], "unknown flag: help"),
    ],
)
def test_a_change_dockerd_refuses_is_a_bad_request(
    daemon: Daemon, changes: list[str], message: str
) -> None:
    def body() -> Iterator[bytes]:
        yield rootfs()

    response = post_import(daemon, body(), {"repo": "bad/change", "changes": changes})

    assert response.status_code == 400
    assert response.json()["message"] == message
    assert left_behind(daemon) == []


def test_a_url_is_refused_plainly(daemon: Daemon) -> None:
    response = post_import(daemon, b"", {"fromSrc": "http://127.0.0.1:9/rootfs.tar"})

    assert response.status_code == 501
    message = response.json()["message"]
    assert "ferryd fetches no URL a client names" in message
    assert "curl -fsSL http://127.0.0.1:9/rootfs.tar | docker import -" in message


def test_a_windows_platform_is_refused(daemon: Daemon) -> None:
    response = post_import(daemon, rootfs(), {"platform": "windows/amd64"})

    assert response.status_code == 400
    assert response.json()["message"] == "operating system is not supported"


def test_a_large_import_is_streamed_not_held(daemon: Daemon, tmp_path: Path) -> None:
    """256 MiB of tar from a 256 KiB gzip: written to disk as it inflates."""
    source = tmp_path / "big.tar.gz"
    with (
        gzip.open(source, "wb", compresslevel=1) as out,
        tarfile.open(fileobj=out, mode="w") as tar,
    ):
        info = tarfile.TarInfo("zeros")
        info.size = 256 * MiB

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                size = min(len(buffer), self.left)
                buffer[:size] = bytes(size)
                self.left -= size
                return size

        tar.addfile(info, io.BufferedReader(Zeros(), MiB))

    def chunks() -> Iterator[bytes]:
        with source.open("rb") as file:
            while chunk := file.read(64 * 1024):
                yield chunk

    response = post_import(daemon, chunks(), {"repo": "big/zeros"})

    assert response.status_code == 200, response.text
    assert daemon.inspect("big/zeros")["Size"] > 256 * MiB
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    assert int(line.split()[1]) * 1024 < 200 * MiB


@pytest.mark.registry
def test_an_imported_image_pushes_gzipped_and_pulls_back_the_same(
    registry: Registry, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    first = start_daemon()
    tar = rootfs({"etc/pushed": b"imported then pushed\n" * 100})
    ref = f"{registry.host}/imported/pushed:v1"
    response = post_import(first, tar, {"repo": ref, "changes": ['CMD ["/bin/true"]']})
    image_id = json.loads(response.text)["status"]

    pushed = list(
        first.client().stream(
            "POST", f"/images/{registry.host}/imported/pushed/push", {"tag": "v1"}
        )
    )
    second = start_daemon()
    pulled = second.pull(ref)

    assert not [m for m in pushed if "error" in m]
    manifest = json.loads(registry_manifest(registry, "imported/pushed:v1")[0])
    assert manifest["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert not [m for m in pulled if "error" in m]
    assert second.inspect(ref)["Id"] == image_id
    assert second.inspect(ref)["Config"]["Cmd"] == ["/bin/true"]


@needs_docker_cli
def test_docker_import_with_changes(daemon: Daemon, docker_config: Path, tmp_path: Path) -> None:
    source = tmp_path / "rootfs.tar.gz"
    source.write_bytes(gzip.compress(rootfs({"etc/motd": b"hello\n"})))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config)}

    imported = subprocess.run(
        [
            "docker", "-H", daemon.host, "import",
            "--change", 'CMD ["/bin/sh"]',
            "--change", "ENV PATH=/usr/bin",
            "-m", "by the CLI",
            str(source), "cli/imported:v1",
        ],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    inspected = subprocess.run(
        ["docker", "-H", daemon.host, "image", "inspect", "cli/imported:v1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip

    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith("sha256:")
    [image] = json.loads(inspected.stdout)
    assert image["Id"] == imported.stdout.strip()
    assert image["Config"]["Cmd"] == ["/bin/sh"]
    assert image["Config"]["Env"] == ["PATH=/usr/bin"]


@needs_docker_cli
def test_docker_import_from_stdin(daemon: Daemon, docker_config: Path) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "DOCKER_CONFIG": str(docker_config)}

    imported = subprocess.run(
        ["docker", "-H", daemon.host, "import", "-", "cli/stdin"],
        input=rootfs({"from": b"stdin"}),
        capture_output=True,
        timeout=60,
        env=env,
    )

    assert imported.returncode == 0, imported.stderr
    assert daemon.inspect("cli/stdin:latest")["Id"] == imported.stdout.decode().strip()
