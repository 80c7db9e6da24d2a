"""The docker CLI's `config.json` (`$DOCKER_CONFIG`, default `~/.docker`), read and
written as the docker CLI does it (`cli/config/configfile`, `cli/config/credentials`).

A login is kept under its registry's key: `https://index.docker.io/v1/` for Docker
Hub, else `host[:port]`. Where it is kept: the `credHelpers` entry for that key, else
`credsStore`, names a helper (`docker-credential-NAME get|store|erase`, JSON on stdin
and stdout; an identity token is stored as the user `<token>`), and `auths` then keeps
an empty entry for the key; without a helper, `auths[key]` holds `auth`
(base64 of `user:password`) and `identitytoken` when there is one. Every other key of
the file is kept as it was; the file is replaced atomically and stays private (0600).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ferryd.untrusted import loads

INDEX_SERVER = "https://index.docker.io/v1/"  # Docker Hub's key, as the docker CLI writes it
_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io", INDEX_SERVER)
_NOT_FOUND = "credentials not found in native keychain"
_TOKEN_USER = "<token>"
HELPER_TIMEOUT = 30.0  # seconds; a helper may ask a keychain


class ConfigFileError(Exception):
    """config.json cannot be read or written, or a credential helper failed."""


def config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(directory) / "config.json"


def convert_to_hostname(server: str) -> str:
    """`https://host:5000/v2/` → `host:5000` (docker's ConvertToHostname)."""
    if "://" in server:
        parts = urlsplit(server)
        if parts.hostname:
            host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
            return f"{host}:{parts.port}" if parts.port else host
    return server.split("/", 1)[0]


def server_key(server: str) -> str:
    """The key a login for `server` (a URL, `host[:port]`, or "" for Docker Hub) is kept
    under."""
    if not server or server in _HUB_NAMES or convert_to_hostname(server) in _HUB_NAMES:
        return INDEX_SERVER
    return convert_to_hostname(server)


def load() -> dict[str, Any]:
    path = config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # UTF-8 whatever the locale, as docker reads it; bytes that are not are broken
        # JSON, as they are to docker (UnicodeDecodeError is a ValueError).
        text = raw.decode()
        data = loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ConfigFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a JSON object")
    return data


def save(data: dict[str, Any]) -> Path:
    """Write `data` to config.json: a temp file beside it, then a rename (the docker
    CLI's Save), keeping the file's mode (0600 for a new one)."""
    path = config_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = path.resolve() if path.is_symlink() else path
        try:
            mode = target.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=target.name)
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(data, file, indent="\t")
            os.chmod(temp, mode)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ConfigFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def helper_for(data: dict[str, Any], key: str) -> str:
    """The helper a login for `key` goes to ("" for the file itself)."""
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict) and isinstance(helpers.get(key), str) and helpers[key]:
        return str(helpers[key])
    store = data.get("credsStore")
    return store if isinstance(store, str) else ""


def get_login(key: str) -> dict[str, str]:
    """The login kept for `key`: `username`, `password`, `identitytoken` (each may be
    absent); {} when there is none."""
    data = load()
    helper = helper_for(data, key)
    if helper:
        answer = _run_helper(helper, "get", key)
        if answer is None:
            return {}
        try:
            found = loads(answer)
            username, secret = found["Username"], found["Secret"]
        except (ValueError, KeyError, TypeError):
            raise ConfigFileError(
                f"credential helper docker-credential-{helper} answered {key} with something "
                'other than {"Username": …, "Secret": …}'
            ) from None
        if username == _TOKEN_USER:
            return {"identitytoken": secret}
        return {"username": username, "password": secret}
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return {}
    entry = auths.get(key)
    if not isinstance(entry, dict):  # a legacy key: https://host/, http://host
        names = {key, *(_HUB_NAMES if key == INDEX_SERVER else ())}
        entry = next(
            (
                v
                for k, v in auths.items()
                if convert_to_hostname(k) in names and isinstance(v, dict)
            ),
            {},
        )
    login: dict[str, str] = {}
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigFileError(f"{config_path()}: auths[{key!r}] has a bad 'auth'") from None
        login["username"], login["password"] = username, password.strip("\x00")
    for name in ("identitytoken", "registrytoken", "email"):
        if isinstance(entry.get(name), str) and entry[name]:
            login[name] = entry[name]
    return login


def store_login(key: str, username: str, password: str, identity_token: str) -> str:
    """Keep a login for `key`; where it went: `docker-credential-NAME` or the file."""
    data = load()
    helper = helper_for(data, key)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    entry: dict[str, Any] = {}
    if helper:
        secret = identity_token or password
        user = _TOKEN_USER if identity_token else username
        request = json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
        _run_helper(helper, "store", request)
    else:
        if username or password:
            entry["auth"] = base64.b64encode(f"{username}:{password}".encode()).decode()
        if identity_token:
            entry["identitytoken"] = identity_token
    auths[key] = entry
    data["auths"] = auths
    path = save(data)
    return f"docker-credential-{helper}" if helper else str(path)


def erase_login(server: str) -> list[str]:
    """Forget the logins for `server` under every key docker ever kept it under; the
    errors of those that could not be erased."""
    key = server_key(server)
    if key == INDEX_SERVER:
        keys = [INDEX_SERVER]
    else:
        keys = list(dict.fromkeys([server, key, f"http://{key}", f"https://{key}"]))
    errors: list[str] = []
    for name in keys:
        try:
            _erase(name)
        except ConfigFileError as exc:
            errors.append(f"{name}: {exc}")
    return errors if len(errors) == len(keys) else []


def _erase(key: str) -> None:
    data = load()
    helper = helper_for(data, key)
    if helper and _run_helper(helper, "erase", key) is None:
        raise ConfigFileError(_NOT_FOUND)
    auths = data.get("auths")
    if isinstance(auths, dict) and key in auths:
        del auths[key]
        save(data)


def _run_helper(helper: str, action: str, stdin: str) -> str | None:
    """Run `docker-credential-NAME action`; its output, or None for "not found"."""
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise ConfigFileError(f"credential helper docker-credential-{helper} is not on PATH")
    try:
        done = subprocess.run(
            [program, action],
            input=stdin.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConfigFileError(
            f"credential helper docker-credential-{helper} gave no answer within "
            f"{HELPER_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise ConfigFileError(f"cannot run docker-credential-{helper}: {exc}") from None
    out = done.stdout.decode(errors="replace").strip()
    if done.returncode == 0:
        return out
    if _NOT_FOUND in out:
        return None
    reason = out or done.stderr.decode(errors="replace").strip()
    if '"Secret"' in reason:
        reason = "its output is withheld: it holds a secret"
    reason = reason[:200] or "no message"
    raise ConfigFileError(f"credential helper docker-credential-{helper} {action} failed: {reason}")


def registry_auth(domain: str) -> tuple[str, str]:
    """The `X-Registry-Auth` header for `domain` (a reference's registry) as the docker
    CLI sends it, from the login kept for it, and a warning when that login could not be
    read (the header is then anonymous)."""
    key = server_key(domain)
    warning = ""
    try:
        login = get_login(key)
    except ConfigFileError as exc:
        login, warning = {}, f"WARNING: {exc}; going on without a login for {key}"
    payload: dict[str, str] = {
        name: value
        for name, value in login.items()
        if name in ("username", "password", "identitytoken", "registrytoken", "email") and value
    }
    payload["serveraddress"] = key
    header = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
    return header, warning
