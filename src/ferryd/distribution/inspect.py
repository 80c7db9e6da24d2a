"""What a registry says a reference is, without pulling it: dockerd's distribution
inspect (`GET /distribution/{name}/json`, docker-py's `inspect_distribution`, buildx).

The answer is the descriptor of what the reference names (`mediaType`, `digest`,
`size` of the manifest or index as served) and the platforms it offers: each entry of
an index, or the platform of the one image's config. As dockerd, the mirrors are asked
first (anonymously, each failure one `registry.mirror_failed` warning), then the
registry with the client's login; a config that cannot be read leaves `Platforms` empty
rather than failing the answer. dockerd reads a config's platform for Docker schema2
manifests only; ferryd reads it for OCI manifests too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ferryd.distribution.pull import from_mirrors
from ferryd.errors import ContentError, RegistryError
from ferryd.oci.digest import Digest
from ferryd.oci.image_config import MAX_CONFIG_SIZE
from ferryd.oci.manifest import FetchedManifest, check_supported, decode_manifest
from ferryd.oci.mediatypes import INDEX_TYPES
from ferryd.oci.reference import Reference
from ferryd.registry.auth import Credentials
from ferryd.registry.client import RegistryClient
from ferryd.registry.connector import Connector

# The fields of an OCI platform, in the order (and with the names) dockerd writes them.
_PLATFORM_FIELDS = ("architecture", "os", "os.version", "os.features", "variant")


async def inspect_distribution(
    connector: Connector,
    reference: Reference,
    credentials: Credentials,
    *,
    meta_headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`{"Descriptor": {mediaType, digest, size}, "Platforms": [...] or None}`."""
    mirrored = await from_mirrors(
        connector, reference, meta_headers, lambda client: _inspect(client, reference)
    )
    if mirrored is not None:
        return mirrored
    client = await connector.open(
        reference.domain, reference.path, credentials, meta_headers=meta_headers
    )
    return await _inspect(client, reference)


async def _inspect(client: RegistryClient, reference: Reference) -> dict[str, Any]:
    top = await client.get_manifest(reference.digest or reference.tag or "latest")
    check_supported(top.media_type)
    platforms = (
        _index_platforms(top)
        if top.media_type in INDEX_TYPES
        else await _image_platform(client, top)
    )
    return {
        "Descriptor": {"mediaType": top.media_type, "digest": top.digest, "size": len(top.raw)},
        "Platforms": platforms or None,
    }


def _platform(fields: Mapping[str, Any]) -> dict[str, Any]:
    """An OCI platform as dockerd writes it: architecture and os always, the others
    when set."""
    platform: dict[str, Any] = {}
    for name in _PLATFORM_FIELDS:
        value = fields.get(name)
        if name in ("architecture", "os"):
            platform[name] = value if isinstance(value, str) else ""
        elif value:
            platform[name] = value
    return platform


def _index_platforms(top: FetchedManifest) -> list[dict[str, Any]]:
    """Every entry's platform, as listed (attestations' `unknown/unknown` included)."""
    try:
        entries = json.loads(top.raw).get("manifests") or []
    except (ValueError, AttributeError):
        raise ContentError(f"index {top.digest} is not valid JSON") from None
    platforms = []
    for entry in entries:
        given = entry.get("platform") if isinstance(entry, dict) else None
        platforms.append(_platform(given if isinstance(given, dict) else {}))
    return platforms


async def _image_platform(client: RegistryClient, top: FetchedManifest) -> list[dict[str, Any]]:
    """The platform the image's config names, when the config can be read and names one."""
    image = decode_manifest(top.raw)
    config = image.config
    limit = min(config.size or MAX_CONFIG_SIZE, MAX_CONFIG_SIZE)
    try:
        raw = await client.get_blob(Digest(config.digest), limit, f"image config {config.digest}")
        fields = json.loads(raw)
    except (RegistryError, ContentError, ValueError):
        return []
    if not isinstance(fields, dict) or not (fields.get("os") or fields.get("architecture")):
        return []
    return [_platform(fields)]
