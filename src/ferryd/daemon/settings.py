"""The daemon's settings: TOML file, then command-line flags, validated up front.

Every key, its type and its default is here; `config.example.toml` documents them.
An unknown key, a wrong type or an impossible value stops the daemon with a message
naming the key.
"""

from __future__ import annotations

import difflib
import grp
import json
import os
import pwd
import re
import tomllib
import typing
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ferryd.errors import ConfigError, InvalidPlatformError
from ferryd.oci.platform import parse_platform
from ferryd.registry.auth import registry_domain
from ferryd.registry.credentials import CredentialStore
from ferryd.registry.endpoints import DEFAULT_INSECURE, RegistryService, split_insecure
from ferryd.registry.wire import DEFAULT_READ_TIMEOUT

DEFAULT_ROOT = Path("/var/lib/ferryd")
DEFAULT_SOCKET = Path("/run/ferryd/ferryd.sock")

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=64)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
# A timeout of 0 would fail every request at once.
Timeout = Annotated[float, msgspec.Meta(gt=0, le=3600)]

_SOCKET_MODE = re.compile(r"0?[0-7]{3}")

# What a client may do through the socket (see `Access`); "all" is every one of them.
PERMISSIONS = ("read", "pull", "push", "delete", "all")
EVERY_PERMISSION = frozenset(PERMISSIONS) - {"all"}
# Words for what a permission allows, as a hint when one is given as a permission.
_PERMISSION_OF = {
    "list": "read",
    "inspect": "read",
    "events": "read",
    "info": "read",
    "tag": "pull",
    "rmi": "delete",
    "remove": "delete",
    "prune": "delete",
    "load": "delete",
}
_ID = re.compile(r"[0-9]+")
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no id"
# The settings that are paths: the system calls that take them stop at a NUL character.
_PATH_KEYS = ("root", "socket", "certs_dir", "credentials_file")
# sockaddr_un has 108 bytes for the path, its final NUL included.
MAX_SOCKET_PATH = 107


class Access(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`[access]`: who may do what, by the client's user and groups (SO_PEERCRED).

    A client may do what `everyone` allows, plus what its user's entry and the entries
    of its groups allow. Keys are user and group names or numbers. Without an `[access]`
    table `everyone` is ["all"] (anyone who can open the socket may do everything, as
    before access control); an `[access]` table that does not set it means [].
    """

    everyone: list[str] = msgspec.field(default_factory=lambda: ["all"])
    users: dict[str, list[str]] = msgspec.field(default_factory=dict)
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """False when every client may do everything (no `[access]` table)."""
        return granted(self.everyone) != EVERY_PERMISSION


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    root: NonEmpty = str(DEFAULT_ROOT)
    socket: NonEmpty = str(DEFAULT_SOCKET)
    # Octal, checked by `load_settings`; a TOML octal integer (0o660) is taken too.
    socket_mode: str = "0660"
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
    # A transfer that moves no byte for this long is logged (transfer.slow); 0: never.
    slow_transfer_warning: Seconds = 60.0
    insecure_registries: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_INSECURE))
    # Registry domain ("docker.io", "host:5000") → mirror base URLs, tried in order
    # before the registry itself by pulls.
    registry_mirrors: dict[str, list[str]] = msgspec.field(default_factory=dict)
    certs_dir: str = "/etc/ferryd/certs.d"
    credentials_file: str = ""
    default_platform: str = ""
    proxy: str = ""
    # Seconds for a TCP connection and its TLS handshake; for each read (and write) once
    # connected: a registry silent that long has failed that request.
    connect_timeout: Timeout = 10.0
    read_timeout: Timeout = DEFAULT_READ_TIMEOUT
    # SIGTERM/SIGINT: seconds running pulls and pushes get to finish before they are
    # cancelled (their partial downloads are kept for the next pull).
    shutdown_timeout: Seconds = 30.0
    access: Access = msgspec.field(default_factory=Access)

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
            raise ConfigError(
                f"config file {path} is not valid TOML: {_leading_zero(text, exc) or exc}"
            ) from None
        except RecursionError:
            raise ConfigError(f"config file {path} nests arrays or tables too deeply") from None
        data = _octal_socket_mode(data, text, f"config file {path}")
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
    data = _access_defaults(data, where)
    _mirror_lists(data, where)
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_explain(exc, data)}") from None
    for key in _PATH_KEYS:
        path = getattr(settings, key)
        if "\0" in path:
            raise ConfigError(
                f"{where}: {key}: a path cannot contain a NUL character, got {_show(path)}"
            )
    socket_length = len(os.fsencode(settings.socket))
    if socket_length > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{where}: socket: {_show(settings.socket)} is {socket_length} bytes long; the "
            f"path of a Unix socket can have at most {MAX_SOCKET_PATH} (choose a shorter one)"
        )
    if not _SOCKET_MODE.fullmatch(settings.socket_mode):
        raise ConfigError(
            f'{where}: socket_mode: expected an octal file mode such as "0660", '
            f"got {_show(settings.socket_mode)}"
        )
    # Looked up here, not only when the socket is bound: a reload refuses a group the
    # next start would refuse.
    socket_group_id(settings.socket_group, f"{where}: socket_group")
    for index, entry in enumerate(settings.insecure_registries):
        try:
            split_insecure([entry])
        except ConfigError as exc:
            raise ConfigError(f"{where}: insecure_registries[{index}]: {exc}") from None
    for domain, mirrors in settings.registry_mirrors.items():
        problem = _mirror_key_problem(domain)
        if problem:
            raise ConfigError(f"{where}: registry_mirrors: key {_show(domain)} {problem}")
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
    access_ids(settings.access, where)
    return settings


# `key = 0660`: a number with a leading zero, which TOML does not allow.
_LEADING_ZERO = re.compile(
    r'\s*(?P<key>[A-Za-z0-9_-]+|"[^"]*")\s*=\s*(?P<value>[+-]?0[0-9_][0-9_.]*)\s*(?:#.*)?'
)
_AT_LINE = re.compile(r"\(at line (?P<line>\d+), column \d+\)")
# `socket_mode = 0o660` as written, at the top level (before any [table]).
_OCTAL_MODE = re.compile(r"(?m)^\s*socket_mode\s*=\s*0o[0-7_]+\s*(?:#.*)?$")
_TABLE = re.compile(r"(?m)^\s*\[")


def _leading_zero(text: str, exc: tomllib.TOMLDecodeError) -> str:
    """What to say when TOML refused a number written with a leading zero ("" otherwise):
    for `socket_mode = 0660`, the two ways to write a mode."""
    at = _AT_LINE.search(str(exc))
    lines = text.splitlines()
    if at is None or not 0 < int(at["line"]) <= len(lines):
        return ""
    line = int(at["line"])
    written = _LEADING_ZERO.fullmatch(lines[line - 1])
    if written is None:
        return ""
    key, value = written["key"].strip('"'), written["value"]
    if key == "socket_mode":
        digits = value.lstrip("+-").replace("_", "")
        return (
            f"line {line}: socket_mode = {value}: a TOML integer cannot start with 0; write "
            f'the mode as a string, socket_mode = "{digits}", or as an octal integer, '
            f"socket_mode = 0o{digits.lstrip('0') or '0'}"
        )
    return f"line {line}: {key} = {value}: a TOML number cannot start with 0"


def _octal_socket_mode(data: dict[str, object], text: str, where: str) -> dict[str, object]:
    """`socket_mode = 0o660` (a TOML octal integer) as the mode "0660". An integer written
    otherwise (660, 0x1b0) stays one and is refused: 660 is not the mode 0660."""
    mode = data.get("socket_mode")
    top_level = _TABLE.split(text, maxsplit=1)[0]
    if not isinstance(mode, int) or isinstance(mode, bool) or not _OCTAL_MODE.search(top_level):
        return data
    if not 0 <= mode <= 0o777:
        raise ConfigError(
            f'{where}: socket_mode: expected an octal file mode such as "0660" or 0o660, '
            f"got 0o{mode:o}"
        )
    return {**data, "socket_mode": f"0{mode:03o}"}


def _access_defaults(data: dict[str, object], where: str) -> dict[str, object]:
    """An `[access]` table given without `everyone` means everyone = []; and each entry
    of `users` and `groups` must be an array of strings (checked here, where the key is
    still known: msgspec's message would not name it)."""
    table = data.get("access")
    if not isinstance(table, dict):
        return data
    for section in ("users", "groups"):
        entries = table.get(section)
        if not isinstance(entries, dict):
            continue
        _check_string_arrays(
            entries, f"{where}: access.{section}", 'permissions such as ["read", "pull"]'
        )
    if "everyone" in table:
        return data
    return {**data, "access": {**table, "everyone": []}}


def _mirror_lists(data: dict[str, object], where: str) -> None:
    """Each entry of `registry_mirrors` is an array of URLs (checked here, where the key
    is still known: msgspec's message would say `registry_mirrors[...]`)."""
    table = data.get("registry_mirrors")
    if not isinstance(table, dict):
        return
    _check_string_arrays(
        table, f"{where}: registry_mirrors", 'mirror URLs such as ["https://mirror.example.com"]'
    )


def _check_string_arrays(table: dict[object, object], prefix: str, what: str) -> None:
    """Each value of `table` is an array of strings (`what`); else a ConfigError naming
    its key under `prefix`."""
    for key, value in table.items():
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            raise ConfigError(
                f"{prefix}.{_show(key)}: expected an array of {what}, got {_show(value)}"
            )


def _mirror_key_problem(domain: str) -> str:
    """Why no reference can ever have `domain` as its registry ("" when one can)."""
    if not domain.strip():
        return 'is empty; write a registry name such as "docker.io" or "registry.example:5000"'
    if domain != registry_domain(domain):
        return (
            f"is not a registry name as references use it; write {_show(registry_domain(domain))}"
        )
    # What insecure_registries takes as HOST[:PORT] or an address, checked as it checks
    # it; a bare IPv6 address is no reference's registry (references write "[::1]").
    try:
        networks, _ = split_insecure([domain])
    except ConfigError:
        networks = None
    if networks is not None and not (networks and ":" in domain):
        return ""
    return (
        "is not a registry name: HOST[:PORT], a valid host name or address (an IPv6 one in "
        'brackets, "[::1]:5000") and a port from 1 to 65535'
    )


def access_ids(
    access: Access, where: str = "settings"
) -> tuple[frozenset[str], dict[int, frozenset[str]], dict[int, frozenset[str]]]:
    """`[access]` as permissions of everyone, by uid and by gid.

    User and group names are looked up (pwd, grp); numbers are taken as they are. An
    unknown name or permission is a ConfigError naming the key.
    """
    everyone = _permissions(access.everyone, f"{where}: access.everyone")
    if (access.users or access.groups) and not access.enabled:
        raise ConfigError(
            f"{where}: access.everyone: {_show(access.everyone)} lets every client do "
            "everything, so the users and groups entries would change nothing; give "
            'everyone less (e.g. [] or ["read"]) or leave the entries out'
        )
    users: dict[int, frozenset[str]] = {}
    for name, wanted in access.users.items():
        key = f"{where}: access.users.{_show(name)}"
        uid = _account_id(name, key, "user", _uid_of_name)
        users[uid] = users.get(uid, frozenset()) | _permissions(wanted, key)
    groups: dict[int, frozenset[str]] = {}
    for name, wanted in access.groups.items():
        key = f"{where}: access.groups.{_show(name)}"
        gid = _account_id(name, key, "group", _gid_of_name)
        groups[gid] = groups.get(gid, frozenset()) | _permissions(wanted, key)
    return everyone, users, groups


def granted(names: Iterable[str]) -> frozenset[str]:
    """What permissions `names` give: "all" is every one, and "pull", "push" and
    "delete" each include "read" (a client that may change the store may see it, and
    the docker CLI asks /_ping and /version before anything else)."""
    given = set(names)
    if "all" in given:
        return EVERY_PERMISSION
    if given & {"pull", "push", "delete"}:
        given.add("read")
    return frozenset(given & EVERY_PERMISSION)


def _permissions(names: list[str], key: str) -> frozenset[str]:
    for name in names:
        if name not in PERMISSIONS:
            close = [_PERMISSION_OF[name]] if name in _PERMISSION_OF else []
            close = close or difflib.get_close_matches(name, PERMISSIONS, n=1)
            hint = f" (did you mean {_show(close[0])}?)" if close else ""
            raise ConfigError(
                f"{key}: unknown permission {_show(name)}{hint}; expected "
                + ", ".join(_show(p) for p in PERMISSIONS)
            )
    return frozenset(names)


def _uid_of_name(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of_name(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _account_id(name: str, key: str, kind: str, lookup: Callable[[str], int]) -> int:
    """A user or group number, or the number of a name this system knows."""
    if _ID.fullmatch(name):
        number = int(name)
        if number > _MAX_ID:
            raise ConfigError(f"{key}: {number} is not a {kind} number")
        return number
    try:
        return lookup(name)
    except (KeyError, ValueError):  # ValueError: a name with a NUL character
        raise ConfigError(
            f"{key}: there is no {kind} named {_show(name)} on this system "
            f"(give a {kind} name that exists, or a {kind} number)"
        ) from None


def socket_group_id(group: str, key: str = "socket_group") -> int:
    """The number of the group `socket_group` names; -1 for "" (the daemon's own)."""
    if not group:
        return -1
    if _ID.fullmatch(group):
        return _account_id(group, key, "group", _gid_of_name)
    try:
        return _gid_of_name(group)
    except (KeyError, ValueError):  # ValueError: a name with a NUL character
        raise ConfigError(
            f"{key}: there is no group named {group!r} (create it, e.g. with "
            "systemd-sysusers or groupadd, or give a group number)"
        ) from None


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
    if not url.isprintable() or any(c.isspace() for c in url):
        return expected  # a NUL, a control character or a space (urlsplit drops some)
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


_UNKNOWN = re.compile(
    r"Object contains unknown field `(?P<key>[^`]*)`(?: - at `\$\.(?P<table>\w+)`)?"
)
# The keys of each table, to suggest one for a misspelt key.
_TABLE_KEYS: dict[str, tuple[str, ...]] = {"access": Access.__struct_fields__}
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
        key, table = unknown["key"], unknown["table"]
        keys = _TABLE_KEYS.get(table, ()) if table else Settings.__struct_fields__
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"{table}: unknown key `{key}`{hint}" if table else f"unknown key `{key}`{hint}"
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
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_show(k)} = {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)
