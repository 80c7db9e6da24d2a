"""`ferryd login` / `ferryd logout`: a login checked by the daemon and kept in
`$DOCKER_CONFIG/config.json` as the docker CLI keeps it (`auths`, or a credential
helper), then sent by `ferryd pull`; no docker CLI needed."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from support.daemon import Daemon
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry
from support.token_server import TokenRegistry, token_registry

__all__ = ["token_registry"]  # the fixture, used by the tests below

pytestmark = [pytest.mark.registry, pytest.mark.daemon]

FAKE_HELPER = textwrap.dedent(
    """\
    #!{python}
    # A docker credential helper keeping its logins in a JSON file, and what it was asked.
    import json, os, sys
    path = os.environ["FAKE_HELPER_FILE"]
    try:
        state = json.load(open(path))
    except FileNotFoundError:
        state = {{"logins": {{}}, "calls": []}}
    action, given = sys.argv[1], sys.stdin.read()
    state["calls"].append([action, given])
    answer, status = "", 0
    if action == "store":
        login = json.loads(given)
        state["logins"][login["ServerURL"]] = login
    elif action == "get":
        if given.strip() in state["logins"]:
            answer = json.dumps(state["logins"][given.strip()])
        else:
            answer, status = "credentials not found in native keychain", 1
    elif action == "erase":
        if state["logins"].pop(given.strip(), None) is None:
            answer, status = "credentials not found in native keychain", 1
    json.dump(state, open(path, "w"))
    print(answer)
    sys.exit(status)
    """
)


class Cli:
    """`python -m ferryd` with its own DOCKER_CONFIG and a helper directory on PATH."""

    def __init__(self, daemon: Daemon, home: Path) -> None:
        self.daemon = daemon
        self.config = home / "docker-config"
        self.config.mkdir(parents=True)
        self.bin = home / "bin"
        self.bin.mkdir()
        self.helper_file = home / "helper.json"
        helper = self.bin / "docker-credential-fake"
        helper.write_text(FAKE_HELPER.format(python=sys.executable))
        helper.chmod(0o755)

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "DOCKER_CONFIG": str(self.config),
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_HELPER_FILE": str(self.helper_file),
            "FERRYD_HOST": self.daemon.host,
        }
        return subprocess.run(
            [sys.executable, "-m", "ferryd", *args],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    def write_config(self, data: dict[str, Any]) -> None:
        (self.config / "config.json").write_text(json.dumps(data))

    def read_config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.config / "config.json").read_text())
        return data

    def helper(self) -> dict[str, Any]:
        if not self.helper_file.exists():
            return {"logins": {}, "calls": []}
        data: dict[str, Any] = json.loads(self.helper_file.read_text())
        return data


def trusting(start_daemon: Callable[..., Daemon], ca: trustme.CA, registry: Registry) -> Daemon:
    daemon = start_daemon(insecure_registries=[])
    daemon.trust(registry.host, ca)
    return daemon


def test_login_keeps_the_login_in_auths_pull_sends_it_and_logout_forgets_it(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    tmp_path: Path,
) -> None:
    cli = Cli(trusting(start_daemon, ca, tls_registry), tmp_path)
    cli.write_config({"psFormat": "table {{.ID}}", "auths": {"other.example": {"auth": "eDp5"}}})
    built = build_image(layout, layers=[LayerSpec(size=2000, seed=7501)])
    seed(tls_registry, layout, "latest", "private/ferryd-login:v1")
    ref = f"{tls_registry.host}/private/ferryd-login:v1"

    logged_in = cli("login", "-u", USER, "--password-stdin", tls_registry.host, stdin=PASSWORD)
    kept = cli.read_config()
    mode = stat.S_IMODE((cli.config / "config.json").stat().st_mode)
    pulled = cli("pull", "-q", ref)
    pulled_id = cli.daemon.inspect(ref)["Id"]
    logged_out = cli("logout", tls_registry.host)
    after = cli.read_config()
    cli("rmi", ref)
    anonymous = cli("pull", ref)

    assert logged_in.returncode == 0, logged_in.stderr
    assert logged_in.stdout.strip() == "Login Succeeded"
    assert "stored unencrypted" in logged_in.stderr
    assert kept["auths"][tls_registry.host] == {
        "auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    }
    assert kept["psFormat"] == "table {{.ID}}"  # the rest of the file is kept
    assert kept["auths"]["other.example"] == {"auth": "eDp5"}
    assert mode == 0o644  # the file's own mode is kept, as docker keeps it
    assert pulled.returncode == 0, pulled.stderr
    assert pulled_id == built.config_digest
    assert logged_out.returncode == 0
    assert logged_out.stdout.strip() == f"Removing login credentials for {tls_registry.host}"
    assert tls_registry.host not in after["auths"]
    assert "other.example" in after["auths"]
    assert anonymous.returncode == 1
    assert "no basic auth credentials" in anonymous.stderr


def test_login_with_a_credential_helper_keeps_the_identity_token_there(
    token_registry: TokenRegistry,
    start_daemon: Callable[..., Daemon],
    ca: trustme.CA,
    layout: Path,
    tmp_path: Path,
) -> None:
    cli = Cli(trusting(start_daemon, ca, token_registry), tmp_path)
    cli.write_config({"credsStore": "fake"})
    build_image(layout, layers=[LayerSpec(size=2000, seed=7502)])
    seed(token_registry, layout, "latest", "private/helper-login:v1")
    ref = f"{token_registry.host}/private/helper-login:v1"
    host = token_registry.host

    logged_in = cli("login", "-u", USER, "--password-stdin", host, stdin=PASSWORD + "\n")
    kept = cli.read_config()
    stored = cli.helper()["logins"][host]
    pulled = cli("pull", "-q", ref)
    logged_out = cli("logout", host)

    assert logged_in.returncode == 0, logged_in.stderr
    assert "stored unencrypted" not in logged_in.stderr
    assert kept["auths"] == {host: {}}  # the file keeps only that a login exists
    assert stored["ServerURL"] == host
    assert stored["Username"] == "<token>"
    assert stored["Secret"].startswith("refresh-")
    assert pulled.returncode == 0, pulled.stderr
    calls = cli.helper()["calls"]
    assert ["get", host] in calls
    assert logged_out.returncode == 0, logged_out.stderr
    assert ["erase", host] in cli.helper()["calls"]
    assert host not in cli.helper()["logins"]
    assert host not in cli.read_config()["auths"]


def test_login_with_a_cred_helpers_entry_stores_the_password_in_that_helper(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA, tmp_path: Path
) -> None:
    cli = Cli(trusting(start_daemon, ca, tls_registry), tmp_path)
    cli.write_config({"credHelpers": {tls_registry.host: "fake"}})

    logged_in = cli("login", "-u", USER, "--password-stdin", tls_registry.host, stdin=PASSWORD)

    assert logged_in.returncode == 0, logged_in.stderr
    assert cli.helper()["logins"][tls_registry.host] == {
        "ServerURL": tls_registry.host,
        "Username": USER,
        "Secret": PASSWORD,
    }
    assert cli.read_config()["auths"] == {tls_registry.host: {}}


def test_login_creates_a_private_config_file(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA, tmp_path: Path
) -> None:
    cli = Cli(trusting(start_daemon, ca, tls_registry), tmp_path)

    logged_in = cli("login", "-u", USER, "--password-stdin", tls_registry.host, stdin=PASSWORD)

    assert logged_in.returncode == 0, logged_in.stderr
    assert stat.S_IMODE((cli.config / "config.json").stat().st_mode) == 0o600
    assert list(cli.config.iterdir()) == [cli.config / "config.json"]  # no temp file left


def test_a_refused_login_keeps_nothing_and_says_why(
    tls_registry: Registry, start_daemon: Callable[..., Daemon], ca: trustme.CA, tmp_path: Path
) -> None:
    cli = Cli(trusting(start_daemon, ca, tls_registry), tmp_path)
    cli.write_config({})

    result = cli("login", "-u", USER, "--password-stdin", tls_registry.host, stdin="wrong")

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error response from daemon: login attempt to https://{tls_registry.host}/v2/ failed "
        "with status: 401 Unauthorized"
    )
    assert cli.read_config() == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["login", "-u", USER, "reg.example"],
            "Cannot perform an interactive login from a non TTY",
        ),
        (["login", "--password-stdin", "reg.example"], "requires --username to be set"),
        (["login", "-u", USER, "-p", "x", "--password-stdin", "r.example"], "conflicting options"),
    ],
)
def test_login_without_what_it_needs_says_so_without_asking(
    daemon: Daemon, tmp_path: Path, args: list[str], message: str
) -> None:
    cli = Cli(daemon, tmp_path)

    result = cli(*args)

    assert result.returncode == 1
    assert message in result.stderr


def test_pull_with_a_failing_helper_warns_and_goes_without_a_login(
    registry: Registry, daemon: Daemon, layout: Path, tmp_path: Path
) -> None:
    cli = Cli(daemon, tmp_path)
    cli.write_config({"credHelpers": {registry.host: "missing"}})
    build_image(layout, layers=[LayerSpec(size=500, seed=7503)])
    seed(registry, layout, "latest", "open/helperless:v1")

    pulled = cli("pull", "-q", f"{registry.host}/open/helperless:v1")

    assert pulled.returncode == 0, pulled.stderr
    assert "docker-credential-missing is not on PATH" in pulled.stderr
