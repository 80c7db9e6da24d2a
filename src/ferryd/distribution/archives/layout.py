"""What an image archive holds, by name: docker's `manifest.json` and `repositories`,
and an OCI image layout (`oci-layout`, `index.json`, `blobs/<algorithm>/<hex>`).

docker save (25 and later) writes both in one tar, the docker entries pointing into
`blobs/`; docker before 25 wrote `<id>/layer.tar` directories (uncompressed layers,
symbolic links for repeated ones) and skopeo's docker-archive writes `<diffid>.tar`.
Every dockerd since 1.10 loads a layer from whatever file `manifest.json` names and
decompresses it as it reads (gzip, and zstd since 23), so an archive whose layers are
the registry's compressed blobs loads into old and new docker alike.
"""

from __future__ import annotations

import re

import msgspec

from ferryd.errors import ArchiveError, InvalidDigestError, InvalidReferenceError
from ferryd.oci.digest import Digest, parse_digest
from ferryd.oci.image_config import MAX_CONFIG_SIZE
from ferryd.oci.manifest import Descriptor
from ferryd.oci.reference import Reference, parse_reference

MANIFEST_JSON = "manifest.json"
REPOSITORIES = "repositories"
OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
OCI_LAYOUT_CONTENT = b'{"imageLayoutVersion":"1.0.0"}'

# The archive's own JSON entries are read whole: no more than an image config may be.
MAX_ARCHIVE_JSON = MAX_CONFIG_SIZE
SMALL_FILES = {MANIFEST_JSON: MAX_ARCHIVE_JSON, INDEX_JSON: MAX_ARCHIVE_JSON, OCI_LAYOUT: 4096}

# The image an index.json entry names: containerd's (and docker's) full name, and the
# OCI one, which docker and skopeo set to the tag alone (or to a whole reference).
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"

_BLOB = re.compile(r"blobs/([a-z0-9]+)/([a-f0-9]+)")


class ManifestItem(msgspec.Struct, omit_defaults=False):
    """One image of docker's `manifest.json` (a JSON list of these)."""

    Config: str
    RepoTags: list[str] | None = None
    Layers: list[str] = msgspec.field(default_factory=list)
    LayerSources: dict[str, Descriptor] | None = None
    Parent: str | None = None


class _ItemOut(msgspec.Struct, omit_defaults=True):
    """A `manifest.json` item as ferryd writes it (docker writes `RepoTags: null`)."""

    Config: str
    RepoTags: list[str] | None
    Layers: list[str]
    LayerSources: dict[str, Descriptor] | None = None


def encode_manifest_json(
    items: list[tuple[str, list[str], list[str], dict[str, Descriptor]]],
) -> bytes:
    """`manifest.json` from (config path, repo tags, layer paths, foreign layer sources)."""
    return msgspec.json.encode(
        [
            _ItemOut(config, tags or None, layers, sources or None)
            for config, tags, layers, sources in items
        ]
    )


def decode_manifest_json(raw: bytes) -> list[ManifestItem]:
    try:
        return msgspec.json.decode(raw, type=list[ManifestItem])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ArchiveError(f"the archive's manifest.json is malformed: {exc}") from None
    except RecursionError:
        raise ArchiveError("the archive's manifest.json is nested too deeply") from None


def blob_name(digest: Digest) -> str:
    """`blobs/sha256/<hex>`: where an OCI layout keeps a blob."""
    algorithm, _, hex_part = digest.partition(":")
    return f"blobs/{algorithm}/{hex_part}"


def digest_of(name: str) -> Digest | None:
    """The digest a `blobs/<algorithm>/<hex>` entry is named after (None: not a blob)."""
    match = _BLOB.fullmatch(name)
    if match is None:
        return None
    try:
        return parse_digest(f"{match.group(1)}:{match.group(2)}")
    except InvalidDigestError:
        return None


def annotations_for(reference: Reference) -> dict[str, str]:
    """The names of a tagged image in index.json, as docker 25+ writes them."""
    assert reference.tag is not None
    return {IMAGE_NAME: str(reference), REF_NAME: reference.tag}


def names_in(annotations: dict[str, str] | None) -> list[Reference]:
    """The tag an index.json entry gives its image: containerd's full name, else an OCI
    ref name that is a whole tagged reference (skopeo's `oci-archive:F:app:v1`). A bare
    tag (`latest`: docker's ref name) names no repository, so it names nothing."""
    annotations = annotations or {}
    for key, whole_only in ((IMAGE_NAME, False), (REF_NAME, True)):
        value = annotations.get(key, "")
        if not value or (whole_only and ":" not in value):
            continue
        try:
            reference = parse_reference(value, default_tag=False)
        except InvalidReferenceError:
            continue
        if reference.tag is not None and reference.digest is None:
            return [reference]
    return []


def tagged(text: str) -> Reference:
    """A `RepoTags` entry of manifest.json: a reference with a tag, as docker requires."""
    try:
        reference = parse_reference(text, default_tag=False)
    except InvalidReferenceError as exc:
        raise ArchiveError(f"the archive's manifest.json has a bad tag {text!r}: {exc}") from None
    if reference.tag is None or reference.digest is not None:
        raise ArchiveError(f"the archive's manifest.json has {text!r} as a tag: it is not one")
    return reference
