"""Media types: what manifests, indexes, configs and layers say they are.

The one place that maps a layer's compression to its media type in each manifest
format, and back.
"""

from __future__ import annotations

import enum
from typing import Literal

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SCHEMA1_TYPES = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
# What we send as Accept: everything we can use, and schema1 so that we can name it.
ACCEPT = (*IMAGE_MANIFEST_TYPES, *INDEX_TYPES, *SCHEMA1_TYPES)

# moby's Schema2Types: config media types a pull accepts. Some registries served
# configs as octet-stream, json or even html, and docker kept accepting them.
DEFAULT_CONFIG_TYPES = (
    DOCKER_CONFIG,
    OCI_CONFIG,
    "application/octet-stream",
    "application/json",
    "text/html",
    "",
)

Family = Literal["docker", "oci"]
"""A manifest format: Docker's schema2 or OCI's."""


class Compression(enum.Enum):
    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


_LAYER_TYPES: dict[tuple[Family, Compression], str] = {
    ("docker", Compression.GZIP): DOCKER_LAYER_GZIP,
    ("docker", Compression.NONE): DOCKER_LAYER_TAR,
    ("oci", Compression.GZIP): OCI_LAYER_GZIP,
    ("oci", Compression.ZSTD): OCI_LAYER_ZSTD,
    ("oci", Compression.NONE): OCI_LAYER,
}
_COMPRESSION_OF = {media_type: compression for (_, compression), media_type in _LAYER_TYPES.items()}


def family_of(media_type: str) -> Family:
    """The format a manifest or config media type belongs to (Docker's by default)."""
    return "oci" if media_type in (OCI_CONFIG, OCI_MANIFEST, OCI_INDEX) else "docker"


def manifest_type(family: Family) -> str:
    return OCI_MANIFEST if family == "oci" else DOCKER_MANIFEST


def config_type(family: Family) -> str:
    return OCI_CONFIG if family == "oci" else DOCKER_CONFIG


def layer_media_type(family: Family, compression: Compression) -> str | None:
    """The media type of a layer blob in a manifest of `family`; None when that format
    has no way to say it (Docker's schema2 knows no zstd)."""
    return _LAYER_TYPES.get((family, compression))


def compression_of(layer_media_type: str) -> Compression:
    """The compression a layer media type announces (a plain tar when it says none)."""
    return _COMPRESSION_OF.get(layer_media_type, Compression.NONE)
