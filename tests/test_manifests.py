"""Manifest media types, decoding, and picking a platform out of an index."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ferryd.errors import (
    ManifestError,
    PlatformNotFoundError,
    UnsupportedManifestError,
)
from ferryd.oci.manifest import (
    Descriptor,
    ImageIndex,
    ManifestPlatform,
    check_supported,
    decode_index,
    decode_manifest,
    media_type_of,
    select_platform,
)
from ferryd.oci.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    SCHEMA1_TYPES,
)
from ferryd.oci.platform import Platform, parse_platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _manifest(media_type: str | None = OCI_MANIFEST, **changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 100},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 2000},
            {"mediaType": OCI_LAYER_GZIP, "digest": D3, "size": 3000},
        ],
    }
    if media_type is not None:
        manifest["mediaType"] = media_type
    manifest.update(changes)
    return manifest


def _entry(
    digest: str,
    os: str,
    arch: str,
    variant: str | None = None,
    media_type: str = OCI_MANIFEST,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    platform: dict[str, Any] = {"os": os, "architecture": arch}
    if variant is not None:
        platform["variant"] = variant
    entry: dict[str, Any] = {
        "mediaType": media_type,
        "digest": digest,
        "size": 500,
        "platform": platform,
    }
    if annotations:
        entry["annotations"] = annotations
    return entry


def _index(*entries: dict[str, Any], media_type: str | None = OCI_INDEX) -> dict[str, Any]:
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type is not None:
        index["mediaType"] = media_type
    return index


def _digest(n: int) -> str:
    return f"sha256:{n:064x}"


SCHEMA1 = {
    "schemaVersion": 1,
    "name": "library/hello",
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": D1}],
    "history": [{"v1Compatibility": "{}"}],
}

# media_type_of


@pytest.mark.parametrize(
    ("body_type", "header"),
    [
        (DOCKER_MANIFEST, None),
        (DOCKER_MANIFEST, "application/json"),
        (OCI_MANIFEST, "text/plain"),
        # The body is what the digest covers: it wins over the header.
        (DOCKER_MANIFEST, OCI_MANIFEST),
        (OCI_INDEX, DOCKER_MANIFEST),
    ],
)
def test_the_bodys_media_type_wins(body_type: str, header: str | None) -> None:
    assert media_type_of(header, _json({"schemaVersion": 2, "mediaType": body_type})) == body_type


@pytest.mark.parametrize(
    "header",
    [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        f"{OCI_INDEX}; charset=utf-8",
        f"  {OCI_INDEX.upper()} ",
    ],
)
def test_without_a_media_type_in_the_body_the_header_says(header: str) -> None:
    body = _json({"schemaVersion": 2, "config": {}, "layers": [], "manifests": []})
    assert media_type_of(header, body) == header.split(";")[0].strip().lower()


@pytest.mark.parametrize("header", [None, "", "application/json", "application/octet-stream"])
def test_an_oci_manifest_without_media_type_is_told_by_its_fields(header: str | None) -> None:
    assert media_type_of(header, _json(_manifest(media_type=None))) == OCI_MANIFEST


@pytest.mark.parametrize("header", [None, "application/json"])
def test_an_oci_index_without_media_type_is_told_by_its_fields(header: str | None) -> None:
    body = _json(_index(_entry(D1, "linux", "amd64"), media_type=None))
    assert media_type_of(header, body) == OCI_INDEX


def test_an_annotation_that_says_manifests_does_not_make_an_index() -> None:
    body = _json(_manifest(media_type=None, annotations={"title": '"manifests"'}))
    assert media_type_of(None, body) == OCI_MANIFEST


@pytest.mark.parametrize(
    "header",
    [None, "application/json", *SCHEMA1_TYPES, DOCKER_MANIFEST],
)
def test_a_schema1_body_is_schema1_whatever_the_header(header: str | None) -> None:
    assert media_type_of(header, _json(SCHEMA1)) in SCHEMA1_TYPES


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b'{"a":1}garbage'])
def test_a_body_that_is_not_json_is_a_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        media_type_of(OCI_MANIFEST, raw)


@pytest.mark.parametrize(
    "raw",
    [b"[]", b'"manifest"', b"42", b'{"mediaType": 3}', b'{"schemaVersion": "2"}'],
)
def test_json_that_is_not_a_manifest_object_is_a_manifest_error(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="malformed manifest"):
        media_type_of(OCI_MANIFEST, raw)


# check_supported


@pytest.mark.parametrize(
    "media_type", [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX]
)
def test_schema2_and_oci_types_are_supported(media_type: str) -> None:
    check_supported(media_type)


@pytest.mark.parametrize("media_type", SCHEMA1_TYPES)
def test_schema1_is_refused_with_a_message_saying_what_to_do(media_type: str) -> None:
    with pytest.raises(UnsupportedManifestError) as caught:
        check_supported(media_type)
    message = str(caught.value)
    assert "schema1" in message
    assert "Docker Image Format v1" in message
    assert "push it again" in message


@pytest.mark.parametrize(
    "media_type", ["application/json", "", "application/vnd.oci.image.config.v1+json"]
)
def test_unknown_media_types_are_refused_naming_the_type(media_type: str) -> None:
    with pytest.raises(UnsupportedManifestError, match="unsupported manifest media type"):
        check_supported(media_type)


# decode_manifest


def test_decode_manifest_reads_config_and_layers_in_order() -> None:
    manifest = decode_manifest(_json(_manifest(DOCKER_MANIFEST)))

    assert manifest.mediaType == DOCKER_MANIFEST
    assert manifest.schemaVersion == 2
    assert manifest.config == Descriptor(OCI_CONFIG, D1, 100)
    assert [(layer.digest, layer.size) for layer in manifest.layers] == [(D2, 2000), (D3, 3000)]


def test_decode_manifest_keeps_urls_and_annotations_of_foreign_layers() -> None:
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": D2,
        "size": 10,
        "urls": ["https://example.com/layer"],
        "annotations": {"k": "v"},
    }
    manifest = decode_manifest(_json(_manifest(layers=[foreign])))
    assert manifest.layers[0].urls == ["https://example.com/layer"]
    assert manifest.layers[0].annotations == {"k": "v"}


def test_decode_manifest_accepts_no_layers_and_unknown_fields() -> None:
    manifest = decode_manifest(_json(_manifest(layers=[], subject=None, annotations={})))
    assert manifest.layers == []


def test_decode_manifest_without_schema_version_or_media_type() -> None:
    body = _manifest(media_type=None)
    del body["schemaVersion"]
    assert decode_manifest(_json(body)).config.digest == D1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "malformed image manifest"),
        (b"[]", "malformed image manifest"),
        (_json(SCHEMA1), "malformed image manifest"),
        (_json(_manifest(config=None)), "malformed image manifest"),
        (_json({"schemaVersion": 2, "layers": []}), "config"),
        (_json(_manifest(layers=None)), "layers"),
        (_json(_manifest(schemaVersion=1)), "schemaVersion is 1, expected 2"),
        (_json(_manifest(schemaVersion=3)), "schemaVersion is 3, expected 2"),
        (
            _json(_manifest(config={"mediaType": OCI_CONFIG, "digest": "sha256:abc", "size": 1})),
            "sha256 needs 64 hex digits",
        ),
        (
            _json(_manifest(config={"mediaType": OCI_CONFIG, "digest": "nope", "size": 1})),
            "invalid digest 'nope'",
        ),
        (
            _json(
                _manifest(
                    layers=[{"mediaType": OCI_LAYER_GZIP, "digest": "md5:" + "0" * 32, "size": 1}]
                )
            ),
            "unsupported algorithm",
        ),
        (
            _json(_manifest(layers=[{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": -1}])),
            "negative size",
        ),
        (
            _json(_manifest(config={"mediaType": OCI_CONFIG, "digest": D1, "size": -5})),
            "negative size",
        ),
        (
            _json(_manifest(layers=[{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": "10"}])),
            r"Expected `int`, got `str` - at `\$.layers\[0\].size`",
        ),
        (
            _json(_manifest(layers=[{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 1.5}])),
            "size",
        ),
        (_json(_manifest(layers=[{"mediaType": OCI_LAYER_GZIP, "size": 1}])), "digest"),
        (_json(_manifest(layers=[{"digest": D2, "size": 1}])), "mediaType"),
    ],
)
def test_decode_manifest_refuses_malformed_manifests(body: bytes, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        decode_manifest(body)


# decode_index


def test_decode_index_reads_entries_with_their_platforms() -> None:
    index = decode_index(
        _json(_index(_entry(D1, "linux", "amd64"), _entry(D2, "linux", "arm", "v7")))
    )
    assert [entry.digest for entry in index.manifests] == [D1, D2]
    assert index.manifests[1].platform == ManifestPlatform("linux", "arm", "v7")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "malformed image index"),
        (_json({"schemaVersion": 2}), "manifests"),
        (_json(_index(_entry("sha256:XYZ", "linux", "amd64"))), "invalid digest"),
        (_json(_index({**_entry(D1, "linux", "amd64"), "size": -1})), "negative size"),
        (_json({**_index(), "schemaVersion": 1}), "schemaVersion is 1"),
        (_json(_index({**_entry(D1, "linux", "amd64"), "platform": "linux/amd64"})), "platform"),
    ],
)
def test_decode_index_refuses_malformed_indexes(body: bytes, reason: str) -> None:
    with pytest.raises(ManifestError, match=reason):
        decode_index(body)


# select_platform


def _select(wanted: str, *entries: dict[str, Any]) -> str:
    return select_platform(decode_index(_json(_index(*entries))), parse_platform(wanted)).digest


DOCKER_HUB_STYLE = (
    _entry(_digest(1), "linux", "amd64"),
    _entry(_digest(2), "linux", "arm", "v6"),
    _entry(_digest(3), "linux", "arm", "v7"),
    _entry(_digest(4), "linux", "arm64", "v8"),
    _entry(_digest(5), "linux", "386"),
    _entry(_digest(6), "linux", "ppc64le"),
    _entry(_digest(7), "linux", "s390x"),
    _entry(_digest(8), "windows", "amd64"),
)


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("linux/amd64", 1),
        ("linux/x86_64", 1),
        ("linux/arm/v6", 2),
        ("linux/arm", 3),
        ("linux/arm/v7", 3),
        ("linux/arm64", 4),
        ("linux/arm64/v8", 4),
        ("linux/aarch64", 4),
        ("linux/386", 5),
        ("linux/ppc64le", 6),
        ("linux/s390x", 7),
        ("windows/amd64", 8),
    ],
)
def test_select_platform_picks_the_matching_entry(wanted: str, expected: int) -> None:
    assert _select(wanted, *DOCKER_HUB_STYLE) == _digest(expected)


def test_select_platform_takes_the_first_of_several_matches() -> None:
    assert _select("linux/amd64", _entry(D1, "linux", "amd64"), _entry(D2, "linux", "amd64")) == D1


def test_select_platform_prefers_the_exact_variant_over_an_earlier_one() -> None:
    entries = (_entry(D1, "linux", "amd64", "v3"), _entry(D2, "linux", "amd64"))
    assert _select("linux/amd64", *entries) == D2
    assert _select("linux/amd64/v3", *entries) == D1


def test_select_platform_takes_no_variant_newer_than_the_one_asked_for() -> None:
    """As containerd's `platforms.Only`: linux/amd64 is amd64/v1, linux/arm64 arm64/v8."""
    with pytest.raises(PlatformNotFoundError):
        _select("linux/amd64", _entry(D1, "linux", "amd64", "v2"))
    with pytest.raises(PlatformNotFoundError):
        _select("linux/arm64", _entry(D2, "linux", "arm64", "v9"))


def test_select_platform_skips_attestation_entries() -> None:
    attestation = _entry(
        D1,
        "unknown",
        "unknown",
        annotations={
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": D2,
        },
    )
    assert _select("linux/amd64", attestation, _entry(D2, "linux", "amd64")) == D2


def test_select_platform_skips_entries_annotated_as_attestations_whatever_their_platform() -> None:
    attestation = _entry(
        D1, "linux", "amd64", annotations={"vnd.docker.reference.type": "attestation-manifest"}
    )
    assert _select("linux/amd64", attestation, _entry(D2, "linux", "amd64")) == D2


def test_select_platform_skips_nested_indexes_and_entries_without_platform() -> None:
    nested = _entry(D1, "linux", "amd64", media_type=OCI_INDEX)
    bare = {"mediaType": OCI_MANIFEST, "digest": D2, "size": 1}
    assert _select("linux/amd64", nested, bare, _entry(D3, "linux", "amd64")) == D3


def test_platform_not_found_lists_what_is_available() -> None:
    entries = (
        _entry(D1, "linux", "amd64"),
        _entry(D2, "linux", "arm", "v7"),
        _entry(D3, "unknown", "unknown"),
        _entry(_digest(4), "linux", "amd64"),
        _entry(_digest(5), "linux", "aarch64", "v8"),
    )
    with pytest.raises(PlatformNotFoundError) as caught:
        _select("linux/s390x", *entries)
    assert str(caught.value) == (
        "no matching manifest for linux/s390x in the manifest list entries "
        "(available: linux/amd64, linux/arm/v7, linux/arm64)"
    )


def test_platform_not_found_in_an_index_of_attestations_only() -> None:
    index = ImageIndex(
        [Descriptor(OCI_MANIFEST, D1, 1, platform=ManifestPlatform("unknown", "unknown"))]
    )
    with pytest.raises(PlatformNotFoundError) as caught:
        select_platform(index, Platform("linux", "amd64"))
    assert str(caught.value) == "no matching manifest for linux/amd64 in the manifest list entries"


def test_platform_not_found_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError):
        _select("linux/arm/v6", _entry(D1, "linux", "arm", "v7"))


def test_docker_types_select_the_same_way() -> None:
    body = _index(
        _entry(D1, "linux", "amd64", media_type=DOCKER_MANIFEST),
        _entry(D2, "linux", "arm64", "v8", media_type=DOCKER_MANIFEST),
        media_type=DOCKER_MANIFEST_LIST,
    )
    index = decode_index(_json(body))
    assert index.mediaType == DOCKER_MANIFEST_LIST
    assert select_platform(index, parse_platform("linux/arm64")).digest == D2


def test_a_docker_v2_manifest_decodes_with_docker_types() -> None:
    body = _manifest(
        DOCKER_MANIFEST,
        config={"mediaType": DOCKER_CONFIG, "digest": D1, "size": 7},
        layers=[{"mediaType": DOCKER_LAYER_GZIP, "digest": D2, "size": 9}],
    )
    manifest = decode_manifest(_json(body))
    assert (manifest.config.mediaType, manifest.layers[0].mediaType) == (
        DOCKER_CONFIG,
        DOCKER_LAYER_GZIP,
    )
