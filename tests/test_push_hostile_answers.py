"""A push against registries whose answers say the push did not happen (or cannot be
trusted): a status that is no 2xx, a mount that names another blob or none, a Range
short of what was sent, a blob size or digest that disagrees with ours.

Each must end in a FerrydError that names the problem, never in a push reported done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferryd.distribution.push import _push_config
from ferryd.errors import DigestMismatchError, NotFoundError, RegistryProtocolError
from ferryd.oci.mediatypes import OCI_MANIFEST
from ferryd.registry.auth import ANONYMOUS
from ferryd.store.metadata import V2Metadata
from support.digests import sha256
from support.fakes import (
    FakeLayer,
    Reply,
    make_layer,
    registry_error,
)
from support.uploading import Env, PlainLayer, make_plain_layer, upload_env

REPO = "team/app"
OTHER = "team/other"
UPLOADS = f"/v2/{REPO}/blobs/uploads/"
SESSION = f"/v2/{REPO}/blobs/uploads/.+"
BLOBS = f"/v2/{REPO}/blobs/sha256:.+"
MANIFEST = b'{"schemaVersion":2,"mediaType":"%s"}' % OCI_MANIFEST.encode()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with upload_env(tmp_path, REPO, max_attempts=2) as environment:
        yield environment


@pytest.fixture(scope="module")
def small() -> FakeLayer:
    return make_layer(100_000, seed=21)


@pytest.fixture(scope="module")
def plain() -> PlainLayer:
    return make_plain_layer(200_000, seed=22)


# -- the status: any 2xx, as docker and containerd take it -----------------------------------


@pytest.mark.parametrize(
    "reply",
    [Reply(302), Reply(304)],  # a redirect without a Location: no answer at all
    ids=["302-without-location", "304"],
)
async def test_blob_put_answered_with_no_2xx_is_not_a_push(
    env: Env, small: FakeLayer, reply: Reply
) -> None:
    layer = env.stored(small)
    env.registry.on("PUT", SESSION, reply)

    with pytest.raises(RegistryProtocolError, match=rf"HTTP {reply.status}.*2xx"):
        await env.upload(layer)

    assert env.store.metadata.get(small.diff_id) == []


async def test_blob_put_answered_200_is_a_push_as_docker_takes_it(
    env: Env, small: FakeLayer
) -> None:
    """The spec says 201; docker and containerd take any 2xx, and so do registries."""
    layer = env.stored(small)
    env.registry.on("PUT", SESSION, Reply(200, {"Docker-Content-Digest": small.digest}))

    await env.upload(layer)

    assert env.store.metadata.get(small.diff_id) != []


async def test_post_answered_with_no_2xx_opens_no_session(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    location = f"{env.server.url}/v2/{REPO}/blobs/uploads/x"
    env.registry.on("POST", UPLOADS, Reply(304, {"Location": location}))

    with pytest.raises(RegistryProtocolError, match=r"HTTP 304.*2xx"):
        await env.upload(layer)

    assert env.registry.seen("PATCH", SESSION) == []


async def test_patch_answered_with_no_2xx_is_refused(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    location = f"{env.server.url}/v2/{REPO}/blobs/uploads/x"
    env.registry.on("PATCH", SESSION, Reply(304, {"Location": location}))

    with pytest.raises(RegistryProtocolError, match=r"HTTP 304.*2xx"):
        await env.upload(layer)

    assert env.registry.seen("PUT", SESSION) == []


async def test_manifest_put_answered_with_no_2xx_is_not_a_push(env: Env) -> None:
    env.registry.on("PUT", f"/v2/{REPO}/manifests/.+", Reply(304))

    with pytest.raises(RegistryProtocolError, match=r"HTTP 304.*2xx"):
        await env.client.put_manifest("v1", OCI_MANIFEST, MANIFEST)


async def test_upload_session_that_vanishes_is_a_clear_error(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.registry.on("PUT", SESSION, registry_error(404, "BLOB_UPLOAD_UNKNOWN", "upload unknown"))

    with pytest.raises(NotFoundError, match="upload unknown"):
        await env.upload(layer)

    assert env.store.metadata.get(small.diff_id) == []


# -- mounts ---------------------------------------------------------------------------------


def known_in_other(env: Env, layer: FakeLayer) -> None:
    env.registry.add_repo_blob(OTHER, layer.blob)
    env.store.metadata.add(layer.diff_id, V2Metadata(layer.digest, env.domain, OTHER))


async def test_mount_answered_202_without_location(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    known_in_other(env, small)
    env.registry.on("POST", UPLOADS, Reply(202))

    with pytest.raises(RegistryProtocolError, match="no upload Location"):
        await env.upload(layer)


async def test_mount_answered_201_with_another_digest(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    known_in_other(env, small)
    lie = sha256(b"something else")
    env.answered("POST", UPLOADS, {"Docker-Content-Digest": lie})

    with pytest.raises(DigestMismatchError, match=lie):
        await env.upload(layer)

    assert V2Metadata(small.digest, env.domain, REPO) not in env.store.metadata.get(small.diff_id)


async def test_mount_answered_200_is_neither_mounted_nor_a_session(
    env: Env, small: FakeLayer
) -> None:
    layer = env.stored(small)
    known_in_other(env, small)
    location = f"{env.server.url}/v2/{REPO}/blobs/uploads/x"
    env.registry.on("POST", UPLOADS, Reply(200, {"Location": location}))

    with pytest.raises(RegistryProtocolError, match=r"HTTP 200.*201 or 202"):
        await env.upload(layer)

    assert env.registry.seen("PATCH", SESSION) == []


async def test_mount_said_done_of_a_blob_the_registry_lacks(env: Env, plain: PlainLayer) -> None:
    # A plain tar went up gzip'd to OTHER: V2 metadata knows its digest there, but only
    # the registry can say its size. A 201 to the mount, then a 404 to the HEAD: the
    # manifest would have described it with size 0.
    layer = env.stored(plain)
    other = await env.connector.open(env.server.host, OTHER, ANONYMOUS, actions="pull,push")
    first = await env.upload(layer, client=other)
    env.registry.on("POST", UPLOADS, Reply(201))  # said mounted; nothing copied

    with pytest.raises(RegistryProtocolError, match=f"{first.digest}.*mount"):
        await env.upload(layer)


# -- what arrived ---------------------------------------------------------------------------


async def test_patch_range_short_of_what_was_sent(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.answered("PATCH", SESSION, {"Range": "0-99"})

    with pytest.raises(RegistryProtocolError, match=f"100 of {small.size} bytes"):
        await env.upload(layer)

    assert env.registry.seen("PUT", SESSION) == []


async def test_patch_range_of_a_gzipped_stream(env: Env, plain: PlainLayer) -> None:
    layer = env.stored(plain)
    env.answered("PATCH", SESSION, {"Range": "bytes=0-9"})

    with pytest.raises(RegistryProtocolError, match="10 of"):
        await env.upload(layer)


async def test_patch_range_of_every_byte_uploads(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.answered("PATCH", SESSION, {"Range": f"bytes=0-{small.size - 1}"})

    assert (await env.upload(layer)).outcome == "pushed"


async def test_head_size_that_is_not_the_stored_blobs(env: Env, small: FakeLayer) -> None:
    # The manifest would have described the layer with the registry's size.
    layer = env.stored(small)
    env.registry.on("HEAD", BLOBS, Reply(200, {"Content-Length": "5"}))

    with pytest.raises(RegistryProtocolError, match=f"5 bytes.*{small.size}"):
        await env.upload(layer)


async def test_head_answered_with_a_non_redirect_3xx_is_not_exists(
    env: Env, small: FakeLayer
) -> None:
    layer = env.stored(small)
    env.registry.on("HEAD", BLOBS, Reply(302, {"Content-Length": str(small.size)}))

    with pytest.raises(RegistryProtocolError, match="HTTP 302"):
        await env.upload(layer)


async def test_empty_blob_size_from_head_of_a_gzipped_upload(env: Env, plain: PlainLayer) -> None:
    # A digest V2 metadata remembers, with no size of ours: a HEAD of 0 bytes cannot be
    # a gzip stream, and the manifest would have said size 0.
    layer = env.stored(plain)
    await env.upload(layer)
    env.registry.on("HEAD", BLOBS, Reply(200, {"Content-Length": "0"}))

    with pytest.raises(RegistryProtocolError, match="0 bytes"):
        await env.upload(layer)


async def test_config_head_size_that_is_not_the_configs(env: Env) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    env.registry.on("HEAD", BLOBS, Reply(200, {"Content-Length": "5"}))

    with pytest.raises(RegistryProtocolError, match=f"config blob.*5 bytes.*{len(config)}"):
        await _push_config(env.manager, env.client, config, "oci")
