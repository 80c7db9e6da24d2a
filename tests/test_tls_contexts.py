"""The TLS contexts of registries: built before the daemon is ready, never on the loop."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import pytest
import trustme

from ferryd.errors import ConfigError
from ferryd.registry.endpoints import RegistryService
from support.registry import trust


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each context `RegistryService` builds from now on."""
    threads: list[str] = []
    build = RegistryService._new_tls

    def counted(self: RegistryService, directory: Path | None, *, verify: bool) -> ssl.SSLContext:
        threads.append(threading.current_thread().name)
        return build(self, directory, verify=verify)

    monkeypatch.setattr(RegistryService, "_new_tls", counted)
    return threads


async def test_prepared_contexts_are_the_ones_every_pull_gets(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(tmp_path / "certs.d", "registry.example:5000", ca)
    trust(tmp_path / "certs.d", "127.0.0.1:5000", ca)  # insecure: its context verifies nothing
    service = RegistryService(certs_dir=tmp_path / "certs.d")
    service.prepare_tls()
    builds = count_builds(monkeypatch)

    own = await service.endpoints("registry.example:5000")
    hub = await service.endpoints("docker.io")
    loopback = await service.endpoints("127.0.0.1:5000")
    plain = await service.endpoints("127.0.0.2:5000")

    assert builds == []
    assert own[0].verify is not hub[0].verify  # certs.d's CA is its own
    assert isinstance(loopback[0].verify, ssl.SSLContext)
    assert loopback[0].verify.verify_mode == ssl.CERT_NONE
    assert plain[0].verify is plain[1].verify is loopback[1].verify  # the shared unverified one


async def test_a_context_not_prepared_is_built_in_a_worker_thread(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = RegistryService(certs_dir=tmp_path / "certs.d")
    service.prepare_tls()
    trust(tmp_path / "certs.d", "registry.example:5000", ca)  # after the daemon started
    builds = count_builds(monkeypatch)

    first = await service.endpoints("registry.example:5000")
    again = await service.endpoints("registry.example:5000")

    assert len(builds) == 1
    assert builds[0] != threading.main_thread().name
    assert first[0].verify is again[0].verify


async def test_a_broken_certs_d_host_does_not_stop_the_others_and_its_pull_says_why(
    tmp_path: Path, ca: trustme.CA
) -> None:
    trust(tmp_path / "certs.d", "good.example", ca)
    broken = tmp_path / "certs.d" / "broken.example"
    broken.mkdir(parents=True)
    (broken / "client.cert").write_text("not a certificate")  # and no client.key
    service = RegistryService(certs_dir=tmp_path / "certs.d")

    service.prepare_tls()

    assert ("good.example", True) in service._contexts
    with pytest.raises(ConfigError, match=r"client\.cert has no matching key client\.key"):
        await service.endpoints("broken.example")


def test_an_unreadable_certs_d_prepares_the_shared_contexts(tmp_path: Path) -> None:
    (tmp_path / "certs.d").write_text("a file, not a directory")
    service = RegistryService(certs_dir=tmp_path / "certs.d")

    service.prepare_tls()

    assert set(service._contexts) == {("", True), ("", False)}


def test_a_certs_d_host_that_cannot_be_read_does_not_stop_the_others(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(tmp_path / "certs.d", "good.example", ca)
    trust(tmp_path / "certs.d", "locked.example", ca)
    build = RegistryService._new_tls

    def locked(self: RegistryService, directory: Path | None, *, verify: bool) -> ssl.SSLContext:
        if directory is not None and directory.name == "locked.example":
            raise PermissionError(13, "Permission denied", str(directory))
        return build(self, directory, verify=verify)

    monkeypatch.setattr(RegistryService, "_new_tls", locked)
    service = RegistryService(certs_dir=tmp_path / "certs.d")

    service.prepare_tls()

    assert set(service._contexts) == {("", True), ("", False), ("good.example", True)}
