"""The daemon's settings: TOML file, then command-line flags, validated up front.

Every key, its type and its default is here; `config.example.toml` documents them.
An unknown key, a wrong type or an impossible value stops the daemon with a message
naming the key.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import typing
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ferryd.errors import ConfigError, InvalidPlatformError
from ferryd.oci.platform import parse_platform
from ferryd.registry.auth import registry_domain
from ferryd.registry.credentials import CredentialStore
from ferryd.registry.endpoints import DEFAULT_INSECURE, RegistryService

DEFAULT_ROOT = Path("/var/lib/ferryd")
DEFAULT_SOCKET = Path("/run/ferryd/ferryd.sock")

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=64)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
# A timeout of 0 would fail every request at once.
Timeout = Annotated[float, msgspec.Meta(gt=0, le=3600)]

_SOCKET_MODE = re.compile(r"0?[0-7]{3}")


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    root: NonEmpty = str(DEFAULT_ROOT)
    socket: NonEmpty = str(DEFAULT_SOCKET)
    socket_mode: str = "0660"  # octal, checked by `load_settings`
    socket_group: str = ""  # a group name or number; "" = the daemon's own group
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    max_concurrent_downloads: Positive = 3
    max_download_attempts: Positive = 5
    max_concurrent_uploads: Positive = 5
    max_upload_attempts: Positive = 5
    retry_delay: Seconds = 5.0
    # The longest wait a registry's Retry-After (on 429 or 503) is honoured for.
    max_retry_after: Seconds = 60.0
    insecure_registries: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_INSECURE))
    # Registry domain ("docker.io", "host:5000") → mirror base URLs, tried in order
    # before the registry itself by pulls.
    registry_mirrors: dict[str, list[str]] = msgspec.field(default_factory=dict)
    certs_dir: str = "/etc/ferryd/certs.d"
    credentials_file: str = ""
    default_platform: str = ""
    proxy: str = ""
    connect_timeout: Timeout = 30.0
    read_timeout: Timeout = 60.0
    # SIGTERM/SIGINT: seconds running pulls and pushes get to finish before they are
    # cancelled (their partial downloads are kept for the next pull).
    shutdown_timeout: Seconds = 30.0

    def __repr__(self) -> str:
        # A proxy URL may carry a password; a repr ends up in tracebacks and logs.
        fields = {**msgspec.structs.asdict(self), "proxy": hide_password(self.proxy)}
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def socket_path(self) -> Path:
        return Path(self.socket)


# The type of every key, to list the choices of a Literal in an error.
_FIELD_TYPES: dict[str, object] = dict(typing.get_type_hints(Settings))


def load_settings(path: Path | None, overrides: dict[str, object] | None = None) -> Settings:
    """Read `path` (if given), apply command-line `overrides`, validate everything.

    Flags set to None are not given. `insecure_registries` from the command line adds to
    the file's list; every other flag replaces the file's value. Raises `ConfigError`
    naming the file (or the command line) and the key.
    """
    data: dict[str, object] = {}
    if path is not None:
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not valid TOML: it is not UTF-8") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    settings = _validate(data, f"config file {path}" if path else "settings")
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    if not flags:
        return settings
    merged: dict[str, object] = msgspec.structs.asdict(settings)
    for key, value in flags.items():
        if key == "insecure_registries":
            merged[key] = [*settings.insecure_registries, *_as_list(value)]
        else:
            merged[key] = value
    return _validate(merged, "command line")


def _validate(data: dict[str, object], where: str) -> Settings:
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_explain(exc, data)}") from None
    if not _SOCKET_MODE.fullmatch(settings.socket_mode):
        raise ConfigError(
            f'{where}: socket_mode: expected an octal file mode such as "0660", '
            f"got {_show(settings.socket_mode)}"
        )
    for domain, mirrors in settings.registry_mirrors.items():
        if domain != registry_domain(domain):
            raise ConfigError(
                f"{where}: registry_mirrors: key {_show(domain)} is not a registry name "
                f"as references use it; write {_show(registry_domain(domain))}"
            )
        for url in mirrors:
            problem = _mirror_problem(url)
            if problem:
                raise ConfigError(f"{where}: registry_mirrors.{_show(domain)}: {problem}")
    if settings.proxy:
        problem = _url_problem(
            settings.proxy, ("http", "https", "socks5", "socks5h"), "http://proxy:3128"
        )
        if problem:
            raise ConfigError(f"{where}: proxy: {problem}")
    if settings.default_platform:
        try:
            parse_platform(settings.default_platform)
        except InvalidPlatformError as exc:
            raise ConfigError(f"{where}: default_platform: {exc}") from None
    return settings


def registry_service(settings: Settings) -> RegistryService:
    """The endpoints, TLS and mirrors the settings give the registries."""
    return RegistryService(
        settings.insecure_registries,
        Path(settings.certs_dir),
        mirrors=settings.registry_mirrors,
    )


def credential_store(settings: Settings) -> CredentialStore:
    """The daemon's own logins (reads the credentials file, if one is set)."""
    return CredentialStore.from_file(
        Path(settings.credentials_file) if settings.credentials_file else None
    )


def hide_password(url: str) -> str:
    """`http://user:secret@proxy:3128` → `http://user:xxxxx@proxy:3128`, as dockerd."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("@", 1)[1] if "@" in url else url
    credentials, _, host = parts.netloc.rpartition("@")
    user = credentials.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:xxxxx@{host}"))


def _url_problem(url: str, schemes: tuple[str, ...], example: str) -> str:
    """Why `url` cannot be used (a wrong scheme, no host, a bad port), or ""."""
    expected = f"expected a URL such as {_show(example)}, got {_show(hide_password(url))}"
    try:
        parsed = urllib.parse.urlsplit(url)
        _ = parsed.port  # raises ValueError on a port that is not a number below 65536
    except ValueError:
        return expected
    if parsed.scheme not in schemes or not parsed.hostname:
        return expected
    return ""


def _mirror_problem(url: str) -> str:
    """Why `url` cannot be a mirror's base URL ("" when it can)."""
    problem = _url_problem(url, ("http", "https"), "https://mirror.example.com")
    if problem:
        return problem
    parsed = urllib.parse.urlsplit(url)
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        return f"a mirror URL has no query, fragment or credentials, got {_show(url)}"
    return ""


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")
_AT = re.compile(r"(?P<text>.*) - at `\$(?P<path>[^`]*)`")
_STEP = re.compile(r"\.(?P<key>[A-Za-z0-9_-]+)|\[(?P<index>\d+)\]")


def _explain(exc: msgspec.ValidationError, data: dict[str, object]) -> str:
    """msgspec's message, reworded for a person editing a TOML file.

    "Object contains unknown field `x`" → "unknown key `x`";
    "Expected `int` >= 1 - at `$.k`" → "k: Expected `int` >= 1, got 0".
    """
    message = str(exc)
    unknown = _UNKNOWN.fullmatch(message)
    if unknown is not None:
        key = unknown["key"]
        close = difflib.get_close_matches(key, Settings.__struct_fields__, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown key `{key}`{hint}"
    at = _AT.fullmatch(message)
    if at is None:
        return message
    text, path = at["text"], at["path"]
    where = path.lstrip(".")
    found, value = _lookup(data, path)
    if text.startswith("Invalid enum value"):
        choices = typing.get_args(_FIELD_TYPES.get(where))
        if choices:
            text = "expected one of " + ", ".join(_show(choice) for choice in choices)
    # msgspec speaks JSON; the file is TOML.
    text = text.replace("`object`", "`table`")
    if found and ", got " not in text:
        text += f", got {_show(value)}"
    return f"{where}: {text}"


def _lookup(data: object, path: str) -> tuple[bool, object]:
    """The value at a msgspec path (`.key[0]`) in `data`, if it is there."""
    value = data
    for step in _STEP.finditer(path):
        if step["key"] is not None and isinstance(value, dict) and step["key"] in value:
            value = value[step["key"]]
        elif step["index"] is not None and isinstance(value, list):
            index = int(step["index"])
            if index >= len(value):
                return False, None
            value = value[index]
        else:
            return False, None
    return True, value


def _show(value: object) -> str:
    """A value as it is written in TOML: `"0660"`, `0`, `true`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)
