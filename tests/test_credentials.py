"""The daemon's credentials file: `auths`, `credHelpers`, `credsStore`, as docker reads them."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from ferryd.errors import ConfigError, CredentialHelperError
from ferryd.registry.auth import ANONYMOUS, Credentials, registry_domain
from ferryd.registry.credentials import CredentialStore
from support.daemon import Daemon, errors
from support.images import LayerSpec, build_image, seed
from support.registry import PASSWORD, USER, Registry

# -- the file ---------------------------------------------------------------


def write_config(path: Path, auths: dict[str, object]) -> Path:
    path.write_text(json.dumps({"auths": auths, "credsStore": "desktop"}))
    return path


def test_docker_config_keys_become_domains(tmp_path: Path) -> None:
    def auth(user: str) -> dict[str, str]:
        return {"auth": base64.b64encode(f"{user}:pw-{user}".encode()).decode()}

    path = write_config(
        tmp_path / "config.json",
        {
            "https://index.docker.io/v1/": auth("hub"),
            "reg.example:5000": auth("plain"),
            "https://Other.Example:5443/": auth("url"),
            "http://10.0.0.1:5000/v2/": {"username": "ip", "password": "pw-ip"},
            "quay.io": {"identitytoken": "tok"},
        },
    )
    assert CredentialStore.from_file(path).auths == {
        "docker.io": Credentials("hub", "pw-hub"),
        "reg.example:5000": Credentials("plain", "pw-plain"),
        "other.example:5443": Credentials("url", "pw-url"),
        "10.0.0.1:5000": Credentials("ip", "pw-ip"),
        "quay.io": Credentials(identity_token="tok"),
    }


@pytest.mark.parametrize(
    ("server", "domain"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("docker.io", "docker.io"),
        ("host:5000", "host:5000"),
        ("https://host:5000/", "host:5000"),
        ("  HOST.example  ", "host.example"),
    ],
)
def test_registry_domain(server: str, domain: str) -> None:
    assert registry_domain(server) == domain


def test_a_missing_credentials_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"

    with pytest.raises(ConfigError, match=f"credentials file {path} does not exist"):
        CredentialStore.from_file(path)


def test_no_credentials_file_means_no_logins() -> None:
    assert CredentialStore.from_file(None) == CredentialStore()


def test_docker_config_without_auths_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"credsStore": "pass"}')
    assert CredentialStore.from_file(path).auths == {}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        "[]",
        '{"auths": []}',
        '{"auths": {"reg:5000": "user:pw"}}',
        '{"auths": {"reg:5000": {"auth": "bm8tY29sb24="}}}',  # "no-colon"
    ],
)
def test_docker_config_malformed_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        CredentialStore.from_file(path)


def test_docker_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        CredentialStore.from_file(tmp_path)


def test_a_bad_auths_entry_is_named_without_its_secret(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"reg:5000": {"auth": "c2VjcmV0LW5vLWNvbG9u"}}})

    with pytest.raises(ConfigError) as caught:
        CredentialStore.from_file(path)

    assert f"credentials file {path}: auths['reg:5000']: 'auth' is not base64" in str(caught.value)
    assert "secret-no-colon" not in str(caught.value)


# -- credential helpers -------------------------------------------------------------


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    """Writes `docker-credential-NAME` scripts (Python, with `body` as their code) into a
    directory put first on PATH; each records the server URL it was asked about."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")

    def write(name: str, body: str) -> Path:
        script = directory / f"docker-credential-{name}"
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, sys, time\n"
            "assert sys.argv[1:] == ['get'], sys.argv\n"
            "server = sys.stdin.read().strip()\n"
            f"open({str(directory / (name + '.asked'))!r}, 'a').write(server + '\\n')\n" + body
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return directory / f"{name}.asked"

    return write


def _answer(user: str, secret: str) -> str:
    return (
        f"print(json.dumps({{'ServerURL': server, 'Username': {user!r}, 'Secret': {secret!r}}}))\n"
    )


def _config(tmp_path: Path, data: dict[str, object]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


async def test_creds_store_answers_for_every_registry(
    tmp_path: Path, helpers: Callable[[str, str], Path]
) -> None:
    asked = helpers("vault", _answer("robot", "from-vault"))
    store = CredentialStore.from_file(_config(tmp_path, {"credsStore": "vault"}))

    assert await store.lookup("reg.example:5000") == Credentials("robot", "from-vault")
    assert asked.read_text() == "reg.example:5000\n"


async def test_docker_io_is_asked_for_under_the_index_url(
    tmp_path: Path, helpers: Callable[[str, str], Path]
) -> None:
    asked = helpers("vault", _answer("hub", "pw"))
    store = CredentialStore.from_file(_config(tmp_path, {"credsStore": "vault"}))

    await store.lookup("docker.io")

    assert asked.read_text() == "https://index.docker.io/v1/\n"


async def test_cred_helpers_win_over_creds_store_and_auths(
    tmp_path: Path, helpers: Callable[[str, str], Path]
) -> None:
    helpers("vault", _answer("store", "from-store"))
    helpers("ecr", _answer("AWS", "from-ecr"))
    token = base64.b64encode(b"file:from-file").decode()
    store = CredentialStore.from_file(
        _config(
            tmp_path,
            {
                "auths": {"ecr.example": {"auth": token}, "plain.example": {"auth": token}},
                "credHelpers": {"ecr.example": "ecr"},
                "credsStore": "vault",
            },
        )
    )

    assert await store.lookup("ecr.example") == Credentials("AWS", "from-ecr")
    assert await store.lookup("plain.example") == Credentials("store", "from-store")


async def test_auths_are_used_without_helpers(tmp_path: Path) -> None:
    token = base64.b64encode(b"file:from-file").decode()
    store = CredentialStore.from_file(_config(tmp_path, {"auths": {"a.example": {"auth": token}}}))

    assert await store.lookup("a.example") == Credentials("file", "from-file")
    assert await store.lookup("b.example") == ANONYMOUS


async def test_a_token_username_means_an_identity_token(
    tmp_path: Path, helpers: Callable[[str, str], Path]
) -> None:
    helpers("vault", _answer("<token>", "refresh-me"))
    store = CredentialStore.from_file(_config(tmp_path, {"credsStore": "vault"}))

    assert await store.lookup("reg.example") == Credentials(identity_token="refresh-me")


async def test_not_found_in_the_helper_is_anonymous_even_with_an_auths_entry(
    tmp_path: Path, helpers: Callable[[str, str], Path]
) -> None:
    """As docker's native store: once a helper answers for a registry, `auths` keeps
    nothing but emails for it, so the helper's "not found" is the last word."""
    helpers("vault", "print('credentials not found in native keychain'); sys.exit(1)\n")
    token = base64.b64encode(b"file:from-file").decode()
    auths = {"a.example": {"auth": token}, "b.example": {"auth": token}}
    store = CredentialStore.from_file(
        _config(tmp_path, {"credHelpers": {"a.example": "vault"}, "auths": auths})
    )

    assert await store.lookup("a.example") == ANONYMOUS
    assert await store.lookup("b.example") == Credentials("file", "from-file")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "print('vault is sealed'); sys.exit(3)\n",
            "failed for reg.example (exit status 3): vault is sealed",
        ),
        ("print('{not json')\n", "answered reg.example with something other than"),
        (
            "print(json.dumps({'Username': 'u'}))\n",
            "answered reg.example with something other than",
        ),
        ("time.sleep(30)\n", "gave no answer for reg.example within 0.5 s"),
    ],
)
async def test_a_failing_helper_is_a_clear_error(
    tmp_path: Path, helpers: Callable[[str, str], Path], body: str, message: str
) -> None:
    helpers("vault", body)
    store = dataclasses.replace(
        CredentialStore.from_file(_config(tmp_path, {"credsStore": "vault"})), timeout=0.5
    )

    with pytest.raises(CredentialHelperError) as caught:
        await store.lookup("reg.example")

    assert "docker-credential-vault" in str(caught.value)
    assert message in str(caught.value)


async def test_a_missing_helper_is_a_clear_error(tmp_path: Path) -> None:
    store = CredentialStore.from_file(_config(tmp_path, {"credsStore": "no-such-helper-x"}))

    with pytest.raises(
        CredentialHelperError, match=r"docker-credential-no-such-helper-x .* not on PATH"
    ):
        await store.lookup("reg.example")


@pytest.mark.parametrize(
    "body",
    [
        "print(json.dumps({'Username': 5, 'Secret': 'hunter2-secret'}))\n",
        "print(json.dumps({'Username': 'u', 'Secret': 'hunter2-secret'})); sys.exit(1)\n",
    ],
)
async def test_the_secret_never_appears_in_an_error(
    tmp_path: Path, helpers: Callable[[str, str], Path], body: str
) -> None:
    helpers("vault", body)
    store = CredentialStore.from_file(_config(tmp_path, {"credsStore": "vault"}))

    with pytest.raises(CredentialHelperError) as caught:
        await store.lookup("reg.example")

    assert "hunter2-secret" not in str(caught.value)
    assert "hunter2-secret" not in repr(Credentials("u", "hunter2-secret"))


@pytest.mark.parametrize(
    "text",
    ['{"credHelpers": []}', '{"credHelpers": {"a.example": 5}}', '{"credsStore": 5}'],
)
def test_malformed_helper_settings_are_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)

    with pytest.raises(ConfigError, match=str(path)):
        CredentialStore.from_file(path)


def test_the_daemon_pulls_with_credentials_from_a_creds_store_helper(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
    tmp_path: Path,
    helpers: Callable[[str, str], Path],
) -> None:
    asked = helpers("vault", _answer(USER, PASSWORD))
    config = _config(tmp_path, {"credsStore": "vault"})
    daemon = start_daemon(insecure_registries=[], credentials_file=str(config))
    daemon.trust(tls_registry.host, ca)
    built = build_image(layout, layers=[LayerSpec(size=5000, seed=501)])
    seed(tls_registry, layout, "latest", "private/helped:v1")

    assert errors(daemon.pull(f"{tls_registry.host}/private/helped:v1")) == []

    assert daemon.inspect(f"{tls_registry.host}/private/helped:v1")["Id"] == built.config_digest
    assert asked.read_text() == f"{tls_registry.host}\n"
    assert PASSWORD not in daemon.log_path.read_text()


def test_a_failing_helper_fails_the_pull_with_its_reason(
    registry: Registry,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
    helpers: Callable[[str, str], Path],
) -> None:
    helpers("vault", "print('vault is sealed'); sys.exit(2)\n")
    daemon = start_daemon(credentials_file=str(_config(tmp_path, {"credsStore": "vault"})))

    [error] = errors(daemon.pull(f"{registry.host}/any/thing:v1"))

    assert "docker-credential-vault failed" in error
    assert "vault is sealed" in error
    assert daemon.alive


def test_the_daemon_refuses_to_start_with_a_missing_credentials_file(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    missing = tmp_path / "typo.json"

    with pytest.raises(RuntimeError, match="exited 2") as caught:
        start_daemon(credentials_file=str(missing))

    assert f"credentials file {missing} does not exist" in str(caught.value)


def test_a_new_credentials_file_is_read_on_reload(
    tls_registry: Registry,
    start_daemon: Callable[..., Daemon],
    layout: Path,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, {})  # no logins yet
    daemon = start_daemon(insecure_registries=[], credentials_file=str(config))
    daemon.trust(tls_registry.host, ca)
    build_image(layout, layers=[LayerSpec(size=5000, seed=502)])
    seed(tls_registry, layout, "latest", "private/reloaded:v1")
    reference = f"{tls_registry.host}/private/reloaded:v1"
    assert errors(daemon.pull(reference)) != []

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {tls_registry.host: {"auth": token}}}))
    event = daemon.reload()

    assert event["event"] == "daemon.reloaded"
    assert errors(daemon.pull(reference)) == []
