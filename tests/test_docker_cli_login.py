"""`docker login`, `docker logout` and pulls with and without a login, through ferryd,
against a registry with htpasswd (Basic) and one with token auth (as Docker Hub).

A pull the registry refuses must end the docker CLI at once with dockerd's message: a
401 from the daemon would have the CLI prompt for a login ("Login prior to pull:"),
and with stdin closed it would wait there forever.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from support.daemon import Daemon
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry
from support.token_server import TokenRegistry, token_registry

__all__ = ["token_registry"]  # the fixture, used by the tests below

pytestmark = [
    pytest.mark.registry,
    pytest.mark.docker_cli,
    pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed"),
]

PROMPT_DEADLINE = 30.0  # seconds: a CLI waiting at a prompt is killed after this


def docker(
    daemon: Daemon, *args: str, config: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The docker CLI with its own config; stdin closed unless `stdin` is given."""
    return subprocess.run(
        ["docker", "-H", daemon.host, *args],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=PROMPT_DEADLINE,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "DOCKER_CONFIG": str(config),
            "HOME": str(config),
        },
    )


def trusting(start_daemon: Callable[..., Daemon], ca: trustme.CA, registry: Registry) -> Daemon:
    daemon = start_daemon(insecure_registries=[])
    daemon.trust(registry.host, ca)
    return daemon


def refused_pull(daemon: Daemon, reference: str, config: Path) -> str:
    """Pull `reference` without a login: the CLI must fail at once, without prompting
    for one; what it printed on stderr."""
    started = time.monotonic()
    pulled = docker(daemon, "pull", reference, config=config)
    assert time.monotonic() - started < PROMPT_DEADLINE / 2
    assert pulled.returncode != 0
    assert "Login prior to pull" not in pulled.stdout
    assert "Username" not in pulled.stdout + pulled.stderr
    return pulled.stderr.strip()


def auths(config: Path) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = json.loads((config / "config.json").read_text()).get(
        "auths", {}
    )
    return found


def test_docker_login_pull_and_logout_with_basic_auth(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, tls_registry)
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=7401)])
    seed(tls_registry, layout, "latest", "private/cli-login:v1")
    ref = f"{tls_registry.host}/private/cli-login:v1"

    logged_in = docker(
        daemon,
        "login",
        "-u",
        USER,
        "--password-stdin",
        tls_registry.host,
        config=docker_config,
        stdin=PASSWORD + "\n",
    )
    stored = auths(docker_config)
    pulled = docker(daemon, "pull", ref, config=docker_config)
    inspected = docker(daemon, "image", "inspect", ref, config=docker_config)
    copy = f"{tls_registry.host}/private/cli-login:pushed"
    docker(daemon, "tag", ref, copy, config=docker_config)
    pushed = docker(daemon, "push", copy, config=docker_config)
    logged_out = docker(daemon, "logout", tls_registry.host, config=docker_config)

    assert logged_in.returncode == 0, logged_in.stderr
    assert "Login Succeeded" in logged_in.stdout
    assert stored[tls_registry.host] == {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    }
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(inspected.stdout)[0]["Id"] == built.config_digest
    assert pushed.returncode == 0, pushed.stderr + pushed.stdout
    assert f"pushed: digest: {built.manifest_digest}" in pushed.stdout
    assert logged_out.returncode == 0
    assert f"Removing login credentials for {tls_registry.host}" in logged_out.stdout
    assert tls_registry.host not in auths(docker_config)


def test_docker_pull_without_a_login_fails_at_once_with_dockerds_message_basic(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, tls_registry)
    build_image(layout, layers=[LayerSpec(size=1000, seed=7402)])
    seed(tls_registry, layout, "latest", "private/no-login:v1")

    refused = refused_pull(daemon, f"{tls_registry.host}/private/no-login:v1", docker_config)

    assert refused == (
        f'Error response from daemon: Get "https://{tls_registry.host}/v2/private/no-login/'
        'manifests/v1": no basic auth credentials'
    )


def test_docker_login_with_a_wrong_password_fails_and_keeps_nothing(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, tls_registry)

    result = docker(
        daemon,
        "login",
        "-u",
        USER,
        "--password-stdin",
        tls_registry.host,
        config=docker_config,
        stdin="wrong\n",
    )

    assert result.returncode != 0
    assert (
        f"Error response from daemon: login attempt to https://{tls_registry.host}/v2/ failed "
        "with status: 401 Unauthorized"
    ) in result.stderr
    assert tls_registry.host not in auths(docker_config)


def test_docker_login_to_a_token_registry_keeps_an_identity_token_and_pulls_with_it(
    token_registry: TokenRegistry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)
    tokens = token_registry.tokens
    assert tokens is not None
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=7403)])
    seed(token_registry, layout, "latest", "private/token-cli:v1")
    ref = f"{token_registry.host}/private/token-cli:v1"

    logged_in = docker(
        daemon,
        "login",
        "--username",
        USER,
        "--password-stdin",
        token_registry.host,
        config=docker_config,
        stdin=PASSWORD,
    )
    stored = auths(docker_config)[token_registry.host]
    before = len(tokens.requests)
    pulled = docker(daemon, "pull", ref, config=docker_config)
    during_pull = tokens.requests[before:]
    inspected = docker(daemon, "image", "inspect", ref, config=docker_config)
    logged_out = docker(daemon, "logout", token_registry.host, config=docker_config)

    assert logged_in.returncode == 0, logged_in.stderr
    assert "Login Succeeded" in logged_in.stdout
    # As docker keeps it: the identity token in place of the password.
    assert stored["identitytoken"].startswith("refresh-")
    assert stored["auth"] == base64.b64encode(f"{USER}:".encode()).decode()
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(inspected.stdout)[0]["Id"] == built.config_digest
    assert [(r.method, r.grant_type, r.user) for r in during_pull] == [
        ("POST", "refresh_token", USER)
    ]
    assert logged_out.returncode == 0
    assert token_registry.host not in auths(docker_config)


def test_docker_pull_without_a_login_fails_at_once_with_dockerds_message_token(
    token_registry: TokenRegistry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)
    build_image(layout, layers=[LayerSpec(size=1000, seed=7404)])
    seed(token_registry, layout, "latest", "private/token-none:v1")

    refused = refused_pull(daemon, f"{token_registry.host}/private/token-none:v1", docker_config)

    assert refused == (
        f"Error response from daemon: pull access denied for {token_registry.host}/private/"
        "token-none, repository does not exist or may require 'docker login': denied: "
        "requested access to the resource is denied"
    )


def test_docker_pull_of_a_public_repository_needs_no_login_on_a_token_registry(
    token_registry: TokenRegistry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    docker_config: Path,
) -> None:
    daemon = trusting(start_daemon, ca, token_registry)
    build_image(layout, layers=[LayerSpec(size=1000, seed=7405)])
    seed(token_registry, layout, "latest", "public/open:v1")

    pulled = docker(daemon, "pull", f"{token_registry.host}/public/open:v1", config=docker_config)

    assert pulled.returncode == 0, pulled.stderr
