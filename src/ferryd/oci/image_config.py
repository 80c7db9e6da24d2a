"""Image configs: the fields ferryd reads, and the checks a config must pass to be used."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import msgspec

from ferryd.errors import ImageConfigError, InvalidDigestError
from ferryd.oci.digest import Digest, chain_ids, parse_digest

MAX_CONFIG_SIZE = 8 * 1024 * 1024
EMPTY_CHAIN = Digest("")
"""The ChainID of no layers at all: what an image without layers stands on."""


class RootFSModel(msgspec.Struct):
    type: str = ""
    diff_ids: list[str] = msgspec.field(default_factory=list)


class HistoryModel(msgspec.Struct):
    """One step of how the image was built (`docker history` shows them)."""

    # Each may be null, as Go (dockerd) reads it.
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None  # true: the step made no layer (no DiffID in rootfs)


class ConfigModel(msgspec.Struct):
    """The fields of an image config ferryd reads; the rest is kept in the raw bytes."""

    rootfs: RootFSModel | None = None
    os: str = ""
    architecture: str = ""
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    config: dict[str, Any] | None = None
    history: list[HistoryModel] | None = None
    # Not typed: a config with an odd value here was stored before ferryd read these
    # fields, and must not become unreadable; `os_version` and `os_features` read them.
    raw_os_version: Any = msgspec.field(default=None, name="os.version")
    raw_os_features: Any = msgspec.field(default=None, name="os.features")

    @property
    def os_version(self) -> str:
        """The config's `os.version` (Windows images name their build), "" if none."""
        return self.raw_os_version if isinstance(self.raw_os_version, str) else ""

    @property
    def os_features(self) -> list[str]:
        """The config's `os.features` (e.g. win32k), the strings of it."""
        features = self.raw_os_features
        if not isinstance(features, list):
            return []
        return [feature for feature in features if isinstance(feature, str)]

    def platform(self) -> dict[str, Any]:
        """The OCI platform the config gives, as dockerd reads it (DockerOCIImage's
        Platform) and containerd's export writes it: with `os.version` and
        `os.features`, which tell Windows builds apart."""
        platform: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            platform["os.version"] = self.os_version
        if self.os_features:
            platform["os.features"] = self.os_features
        if self.variant:
            platform["variant"] = self.variant
        return platform


@dataclass(frozen=True, slots=True)
class RootFS:
    """An image's layer stack, bottom first, as DiffIDs."""

    diff_ids: list[Digest]

    def chain_id(self) -> Digest:
        """The ChainID of the whole stack ("" for no layers), as moby's RootFS.ChainID."""
        chains = chain_ids(self.diff_ids)
        return chains[-1] if chains else EMPTY_CHAIN


# Made as the module loads: a decoder compiles its type on creation (see `manifest`).
_CONFIG = msgspec.json.Decoder(ConfigModel)


def decode_config(raw: bytes) -> ConfigModel:
    try:
        return _CONFIG.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ImageConfigError(f"malformed image config: {exc}") from None
    except RecursionError:  # a few KB of brackets in a field nobody reads
        raise ImageConfigError("malformed image config: its JSON is nested too deeply") from None


def rootfs_and_os(config: bytes | ConfigModel) -> tuple[RootFS, str]:
    """The layer DiffIDs and OS of a config (raw, or decoded already: it is not decoded
    again); refuses an OS this host cannot run."""
    model = _model(config)
    check_usable_os(model.os)
    return _rootfs(model), model.os


def check_usable_os(os: str) -> None:
    """Refuse an image this host could not run, as dockerd's checkCompatibleOS: asked
    for as the one image to use (a pull or load of it alone). The platforms of an index
    taken whole are only kept and moved (`rootfs_of`). Any case, as dockerd's EqualFold:
    a pull passes the config's word, a load the normalised platform's."""
    if os.lower() == "windows" and sys.platform != "win32":
        raise ImageConfigError(f'image operating system "{os}" cannot be used on this platform')


def rootfs_of(config: bytes | ConfigModel) -> RootFS:
    """The layer DiffIDs of a config (raw, or decoded already), whatever its OS: an
    index's images for other operating systems are kept and moved, never run."""
    return _rootfs(_model(config))


def _model(config: bytes | ConfigModel) -> ConfigModel:
    return config if isinstance(config, ConfigModel) else decode_config(config)


def _rootfs(model: ConfigModel) -> RootFS:
    if model.rootfs is None:
        raise ImageConfigError("image config has no rootfs")
    if model.rootfs.type != "layers":
        raise ImageConfigError(f"image config has rootfs type {model.rootfs.type!r}, not 'layers'")
    try:
        diff_ids = [parse_digest(d) for d in model.rootfs.diff_ids]
    except InvalidDigestError as exc:
        raise ImageConfigError(f"image config has a bad rootfs.diff_ids entry: {exc}") from None
    return RootFS(diff_ids)
