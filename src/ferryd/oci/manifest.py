"""Image manifests and indexes: decoding, checks, and choosing a platform."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from ferryd.errors import (
    InvalidDigestError,
    ManifestError,
    PlatformNotFoundError,
    UnsupportedManifestError,
)
from ferryd.oci.digest import Digest, parse_digest
from ferryd.oci.mediatypes import (
    ACCEPT,
    IMAGE_MANIFEST_TYPES,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_TYPES,
)
from ferryd.oci.platform import Platform, normalize

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
# dockerd's layer store takes no chain deeper than this (moby's maxLayerDepth): an image
# of more layers could not be run, and a manifest may list tens of thousands.
MAX_LAYERS = 125

# BuildKit lists provenance and SBOM attestations in the index as `unknown/unknown`
# entries with this annotation.
_REFERENCE_TYPE = "vnd.docker.reference.type"
_ATTESTATION = "attestation-manifest"
# An attestation names the image manifest it is about with this annotation.
REFERENCE_DIGEST = "vnd.docker.reference.digest"

EntryKind = Literal["image", "attestation", "index", "unknown", "blob"]
"""What an index entry is, as dockerd's ManifestKind (plus `index` for a nested one):
an image for a platform, a BuildKit attestation of one, a nested index, or something
else (an artifact, an `unknown/unknown` entry without the attestation annotation).
`blob` is no index's: a blob an artifact kept whole names (`artifact_blobs`)."""

# A nested index is pulled with what it lists, down to this depth (the top index is 0).
MAX_INDEX_DEPTH = 4
# An index may list tens of thousands of entries in its 4 MiB; a real one, a few dozen
# (every platform, each with its attestation). Pulls and loads take at most this many
# from one index, its nested indexes' included, and their manifests up to this budget.
MAX_INDEX_ENTRIES = 512
MAX_CHILDREN_BYTES = 64 * 2**20
# An artifact's manifest names a config and layers (or an artifact manifest's blobs):
# a few, as a rule.
MAX_ARTIFACT_BLOBS = 1024

_T = TypeVar("_T")


class ManifestPlatform(msgspec.Struct, frozen=True, omit_defaults=True):
    os: str = ""
    architecture: str = ""
    variant: str | None = None
    os_version: str | None = msgspec.field(default=None, name="os.version")
    os_features: list[str] | None = msgspec.field(default=None, name="os.features")


class Descriptor(msgspec.Struct, frozen=True, omit_defaults=True):
    mediaType: str
    digest: str
    size: int
    urls: list[str] | None = None
    annotations: dict[str, str] | None = None
    platform: ManifestPlatform | None = None


class _Versioned(msgspec.Struct):
    """What tells a manifest's kind; the fields' contents are left undecoded."""

    schemaVersion: int = 0
    mediaType: str = ""
    manifests: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    layers: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class ImageManifest(msgspec.Struct, frozen=True):
    config: Descriptor
    layers: list[Descriptor]
    schemaVersion: int = 2
    mediaType: str = ""


class _Artifact(msgspec.Struct, frozen=True):
    """A manifest an index lists that is no image (`unknown`): what blobs it names."""

    config: Descriptor | None = None
    layers: list[Descriptor] = msgspec.field(default_factory=list)
    blobs: list[Descriptor] = msgspec.field(default_factory=list)


class ImageIndex(msgspec.Struct, frozen=True):
    manifests: list[Descriptor]
    schemaVersion: int = 2
    mediaType: str = ""


# Made once, as the module loads: a decoder compiles its type on creation (~0.5 ms each),
# which a call of `msgspec.json.decode(raw, type=…)` would do in a daemon's first pull.
_VERSIONED = msgspec.json.Decoder(_Versioned)
_MANIFEST = msgspec.json.Decoder(ImageManifest)
_INDEX = msgspec.json.Decoder(ImageIndex)
_ARTIFACT = msgspec.json.Decoder(_Artifact)


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as the registry served it, with its verified digest."""

    media_type: str
    digest: Digest
    raw: bytes


def media_type_of(content_type: str | None, raw: bytes) -> str:
    """The manifest's media type: the body's `mediaType`, else the Content-Type header.

    Registries disagree on Content-Type; the body is what the digest covers, so a body
    that says `schemaVersion: 1` is schema1 whatever the header claims.
    """
    try:
        head = _VERSIONED.decode(raw)
    except msgspec.ValidationError as exc:  # JSON, but not the shape of a manifest
        raise ManifestError(f"malformed manifest: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:  # a few KB of brackets: no manifest nests so deep
        raise ManifestError("malformed manifest: its JSON is nested too deeply") from None
    if head.mediaType:
        return head.mediaType
    if head.schemaVersion == 1:
        return SCHEMA1_TYPES[0]
    header = (content_type or "").split(";")[0].strip().lower()
    if header in ACCEPT:
        return header
    # An OCI manifest or index may omit mediaType: tell them apart by their fields.
    if len(head.manifests) and not len(head.layers):
        return OCI_INDEX
    return OCI_MANIFEST


def check_supported(media_type: str) -> None:
    if media_type in SCHEMA1_TYPES:
        raise UnsupportedManifestError(
            "the image uses a Docker Image Format v1 (schema1) manifest, which ferryd does "
            "not support; push it again with a current client to convert it to schema2 or OCI"
        )
    if media_type not in IMAGE_MANIFEST_TYPES and media_type not in INDEX_TYPES:
        raise UnsupportedManifestError(f"unsupported manifest media type {media_type!r}")


def decode_manifest(raw: bytes) -> ImageManifest:
    """Decode and check an image manifest; anything malformed is a `ManifestError`."""
    manifest = _decode(raw, _MANIFEST, "image manifest")
    _check_schema_version(manifest.schemaVersion, "image manifest")
    if len(manifest.layers) > MAX_LAYERS:
        raise ManifestError(
            f"the image manifest lists {len(manifest.layers)} layers: max depth exceeded "
            f"(docker and ferryd take at most {MAX_LAYERS})"
        )
    for descriptor in (manifest.config, *manifest.layers):
        _check_descriptor(descriptor)
    return manifest


def decode_index(raw: bytes) -> ImageIndex:
    """Decode and check an image index (manifest list)."""
    index = _decode(raw, _INDEX, "image index")
    _check_schema_version(index.schemaVersion, "image index")
    for descriptor in index.manifests:
        _check_descriptor(descriptor)
    return index


def artifact_blobs(raw: bytes) -> list[Descriptor]:
    """The blobs a manifest kept as an artifact names (its config and layers, or an
    artifact manifest's blobs), each once: kept and pushed as they are, never run, so
    of any media type."""
    artifact = _decode(raw, _ARTIFACT, "manifest")
    named = [*([artifact.config] if artifact.config is not None else []), *artifact.layers]
    named += artifact.blobs
    if len(named) > MAX_ARTIFACT_BLOBS:
        raise ManifestError(
            f"the manifest names {len(named)} blobs; ferryd keeps at most {MAX_ARTIFACT_BLOBS}"
        )
    unique: dict[str, Descriptor] = {}
    for descriptor in named:
        _check_descriptor(descriptor)
        unique.setdefault(descriptor.digest, descriptor)
    return list(unique.values())


def select_platform(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The index entry for `wanted`, as docker and containerd take it.

    Of the entries whose platform serves `wanted` (`Platform.preference`: arm/v7 takes
    an arm/v6 image, arm64 a 32-bit arm one, amd64 a 386 one), the closest wins, the
    first listed of equals: `linux/amd64` takes the plain amd64 image before a 386 one
    listed first, and never an amd64/v3 one. Attestations (`unknown/unknown`) and nested
    indexes are skipped.
    """
    candidates = [entry for entry in index.manifests if _is_image_entry(entry)]
    best: tuple[int, Descriptor] | None = None
    for entry in candidates:
        assert entry.platform is not None
        rank = wanted.preference(
            entry.platform.os, entry.platform.architecture, entry.platform.variant
        )
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, entry)
    if best is not None:
        return best[1]
    offered = sorted(
        {
            str(normalize(d.platform.os, d.platform.architecture, d.platform.variant))
            for d in candidates
            if d.platform is not None
        }
    )
    raise PlatformNotFoundError(
        f"no matching manifest for {wanted} in the manifest list entries"
        + (f" (available: {', '.join(offered)})" if offered else "")
    )


def select_platforms(index: ImageIndex, wanted: Iterable[Platform]) -> list[Descriptor]:
    """The entries for each platform of `wanted` (as `select_platform` takes one, so a
    platform the index lacks is a `PlatformNotFoundError` naming what it has), with the
    attestations of those entries; in the index's order, each once."""
    chosen = {select_platform(index, platform).digest for platform in wanted}
    return [
        entry
        for entry in index.manifests
        if entry.digest in chosen
        or (entry_kind(entry) == "attestation" and attested(entry) in chosen)
    ]


def pullable_entries(index: ImageIndex) -> list[Descriptor]:
    """The entries a pull of all platforms stores as images: images and their
    attestations (which are image manifests too). A pull of all platforms keeps the
    rest too (nested indexes and artifacts, as they are), each once."""
    seen: set[str] = set()
    entries = []
    for entry in index.manifests:
        if entry_kind(entry) in ("image", "attestation") and entry.digest not in seen:
            seen.add(entry.digest)
            entries.append(entry)
    return entries


def entry_kind(entry: Descriptor) -> EntryKind:
    """What an index entry is (see `EntryKind`)."""
    if entry.mediaType in INDEX_TYPES:
        return "index"
    if (entry.annotations or {}).get(_REFERENCE_TYPE) == _ATTESTATION:
        return "attestation"
    if entry.mediaType and entry.mediaType not in IMAGE_MANIFEST_TYPES:
        return "unknown"
    if entry.platform is not None and (entry.platform.os, entry.platform.architecture) == (
        "unknown",
        "unknown",
    ):
        return "unknown"
    return "image"


def attested(entry: Descriptor) -> str | None:
    """The digest of the image manifest an attestation entry is about."""
    return (entry.annotations or {}).get(REFERENCE_DIGEST)


def _is_image_entry(entry: Descriptor) -> bool:
    return entry.platform is not None and entry_kind(entry) == "image"


def _check_schema_version(version: int, what: str) -> None:
    if version != 2:
        raise ManifestError(f"malformed {what}: schemaVersion is {version}, expected 2")


def _decode(raw: bytes, decoder: msgspec.json.Decoder[_T], what: str) -> _T:
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestError(f"malformed {what}: {exc}") from None
    except RecursionError:
        raise ManifestError(f"malformed {what}: its JSON is nested too deeply") from None


def _check_descriptor(descriptor: Descriptor) -> None:
    try:
        parse_digest(descriptor.digest)
    except InvalidDigestError as exc:
        raise ManifestError(f"malformed manifest: {exc}") from None
    if descriptor.size < 0:
        raise ManifestError(f"malformed manifest: descriptor {descriptor.digest} has negative size")
