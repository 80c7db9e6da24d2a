"""What a manifest or an index may ask of a pull: no more layers than dockerd's layer
store takes, no more index entries than a real index has, and their manifests held
within a budget, however many the registry lists."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import anyio.lowlevel
import pytest

from ferryd.distribution import pull
from ferryd.distribution.context import PullContext
from ferryd.errors import ManifestError
from ferryd.oci.digest import sha256_digest
from ferryd.oci.manifest import (
    MAX_CHILDREN_BYTES,
    MAX_INDEX_ENTRIES,
    MAX_LAYERS,
    FetchedManifest,
    decode_manifest,
)
from ferryd.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from ferryd.oci.reference import parse_repository
from ferryd.registry.client import RegistryClient


def _descriptor(n: int, media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> Any:
    return {"mediaType": media_type, "digest": sha256_digest(str(n).encode()), "size": 1}


def _manifest(layers: int) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(-1, "application/vnd.oci.image.config.v1+json"),
        "layers": [_descriptor(n) for n in range(layers)],
    }
    return json.dumps(document).encode()


def _index(entries: int) -> bytes:
    manifests = [
        {**_descriptor(n, OCI_MANIFEST), "platform": {"os": "linux", "architecture": f"a{n}"}}
        for n in range(entries)
    ]
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()


def test_a_manifest_of_more_layers_than_dockerd_takes_is_refused() -> None:
    assert len(decode_manifest(_manifest(MAX_LAYERS)).layers) == MAX_LAYERS
    with pytest.raises(ManifestError, match="max depth exceeded"):
        decode_manifest(_manifest(MAX_LAYERS + 1))


def _all_platforms() -> PullContext:
    return cast(PullContext, SimpleNamespace(all_platforms=True, platforms=(), platform=None))


async def _from(index: bytes, child: bytes) -> list[str]:
    """The index's children as `_manifest_from` fetches them; the digests asked for."""
    asked: list[str] = []

    async def fetch(reference: str) -> FetchedManifest:
        if reference == "latest":
            return FetchedManifest(OCI_INDEX, sha256_digest(index), index)
        asked.append(reference)
        await anyio.lowlevel.checkpoint()
        return FetchedManifest(OCI_MANIFEST, reference, child)  # type: ignore[arg-type]

    client = cast(RegistryClient, None)
    await pull._manifest_from(client, fetch, "latest", _all_platforms())
    return asked


async def test_an_index_of_more_entries_than_a_pull_takes_is_refused_before_any_fetch() -> None:
    with pytest.raises(ManifestError, match="--platform"):
        await _from(_index(MAX_INDEX_ENTRIES + 1), _manifest(1))


async def test_an_index_whose_manifests_come_to_over_the_budget_is_refused() -> None:
    big = _manifest(1) + b" " * (4 * 2**20 - 1024)  # a 4 MiB manifest, padded
    count = MAX_CHILDREN_BYTES // len(big) + 2
    with pytest.raises(ManifestError, match="MiB: refused"):
        await _from(_index(count), big)


async def test_an_index_of_a_few_entries_has_each_fetched() -> None:
    assert len(await _from(_index(20), _manifest(1))) == 20


async def test_a_tag_the_registry_lists_twice_is_pulled_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pulled: list[str] = []

    async def list_tags(repository: Any, ctx: Any) -> list[str]:
        return ["b", "a", "b", "a", "a"]

    async def one(reference: Any, ctx: Any, *, say_status: bool = True) -> Any:
        pulled.append(reference.tag)
        return SimpleNamespace(updated=False)

    monkeypatch.setattr(pull, "_list_tags", list_tags)
    monkeypatch.setattr(pull, "_pull", one)
    ctx = cast(PullContext, SimpleNamespace(progress=SimpleNamespace(write=lambda message: None)))
    await pull._pull_all_tags(parse_repository("registry.test/repo"), ctx)
    assert pulled == ["a", "b"]
