"""The daemon's settings: TOML file, then command-line flags, validated up front.

Every key, its type and its default is here; `config.example.toml` documents them.
An unknown key, a wrong type or an impossible value stops the daemon with a message
naming the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from ferryd.errors import ConfigError
from ferryd.platforms import InvalidPlatformError, parse_platform
from ferryd.registry.endpoints import DEFAULT_INSECURE

DEFAULT_ROOT = Path("/var/lib/ferryd")
DEFAULT_SOCKET = Path("/run/ferryd/ferryd.sock")

Positive = Annotated[int, msgspec.Meta(ge=1, le=64)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    root: str = str(DEFAULT_ROOT)
    socket: str = str(DEFAULT_SOCKET)
    socket_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    max_concurrent_downloads: Positive = 3
    max_download_attempts: Positive = 5
    download_retry_delay: Seconds = 5.0
    insecure_registries: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_INSECURE))
    certs_dir: str = "/etc/ferryd/certs.d"
    credentials_file: str = ""
    default_platform: str = ""
    proxy: str = ""
    connect_timeout: Seconds = 30.0
    read_timeout: Seconds = 60.0

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    @property
    def socket_path(self) -> Path:
        return Path(self.socket)


def load_settings(path: Path | None, overrides: dict[str, object] | None = None) -> Settings:
    """Read `path` (if given), apply command-line `overrides`, validate everything."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "insecure_registries":
            data[key] = [*_as_list(data.get(key, list(DEFAULT_INSECURE))), *_as_list(value)]
        else:
            data[key] = value
    where = f"config file {path}" if path else "settings"
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_explain(exc)}") from None
    if settings.default_platform:
        try:
            parse_platform(settings.default_platform)
        except InvalidPlatformError as exc:
            raise ConfigError(f"{where}: default_platform: {exc}") from None
    return settings


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _explain(exc: msgspec.ValidationError) -> str:
    # msgspec says "Object contains unknown field `x`" or "Expected `int`, got `str` - at `$.k`".
    message = str(exc)
    if " - at `$." in message:
        text, _, where = message.partition(" - at `$.")
        return f"{where.rstrip('`')}: {text}"
    return message
