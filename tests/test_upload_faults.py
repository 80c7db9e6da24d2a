"""The upload manager against fake registries: exists, mount, upload, refusals, faults.

Each test builds a store in tmp_path with stored layers (a gzip'd tar, kept as pulled,
and a plain tar), an UploadManager in its own task group, and a RegistryClient (through
a Connector, for pull and push) to an `UploadRegistry` on loopback that records what
the client sent.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import anyio
import pytest

from ferryd.distribution.progress import Message
from ferryd.distribution.uploads import Uploaded, UploadManager
from ferryd.errors import (
    AccessDeniedError,
    AuthenticationError,
    DigestMismatchError,
    FerrydError,
    NotFoundError,
    RegistryError,
    TransientRegistryError,
)
from ferryd.oci.digest import short_id
from ferryd.oci.mediatypes import (
    DOCKER_LAYER_GZIP,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Family,
)
from ferryd.registry.auth import ANONYMOUS
from ferryd.registry.client import RegistryClient
from ferryd.registry.connector import Connector
from ferryd.registry.endpoints import RegistryService
from ferryd.store.metadata import V2Metadata
from support.digests import sha256
from support.fakes import (
    FakeLayer,
    Recorder,
    Reply,
    Request,
    UploadRegistry,
    make_layer,
    registry_error,
    serve_registry,
)
from support.uploading import Env, PlainLayer, make_plain_layer, upload_env
from support.waiting import await_until

REPO = "team/app"
OTHER = "team/other"
UPLOADS = f"/v2/{REPO}/blobs/uploads/"
SESSION = f"/v2/{REPO}/blobs/uploads/.+"
ANY_UPLOADS = "/v2/.+/blobs/uploads/"
ANY_SESSION = "/v2/.+/blobs/uploads/.+"
MiB = 1 << 20


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with upload_env(tmp_path, REPO) as environment:
        yield environment


@pytest.fixture(scope="module")
def big() -> FakeLayer:
    """Over 2 MiB: the stored blob is read and sent in several ~1 MiB pieces."""
    return make_layer(3 * MiB, seed=11)


@pytest.fixture(scope="module")
def small() -> FakeLayer:
    return make_layer(100_000, seed=12)


@pytest.fixture(scope="module")
def plain() -> PlainLayer:
    return make_plain_layer(3 * MiB, seed=13)


def retries(progress: Recorder) -> list[str]:
    return [s for s in progress.statuses() if s.startswith("Retrying in")]


def pushing(progress: Recorder) -> list[Message]:
    return [m for m in progress.messages if m.status == "Pushing"]


def gate(env: Env, method: str, path: str) -> anyio.Event:
    """Requests `method path` wait for the event before the registry answers them."""
    event = anyio.Event()

    async def wait_then_answer(request: Request) -> Reply:
        await event.wait()
        return env.registry.answer(request)

    env.registry.on(method, path, wait_then_answer)
    return event


# -- cheapest first: exists, mount ------------------------------------------------------


async def test_blob_already_in_the_repository(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.registry.add_repo_blob(REPO, small.blob)
    progress = Recorder()

    result = await env.upload(layer, progress=progress)

    assert result == Uploaded(small.digest, 0, small.size, OCI_LAYER_GZIP, "exists")
    assert env.wire() == [f"HEAD /v2/{REPO}/blobs/{small.digest}"]
    assert env.metadata(layer) == {V2Metadata(small.digest, env.domain, REPO)}
    assert progress.statuses() == ["Layer already exists"]
    assert progress.messages[-1].id == short_id(small.diff_id)


async def test_mounted_from_a_sibling_repository(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.registry.add_repo_blob(OTHER, small.blob)
    env.store.metadata.add(small.diff_id, V2Metadata(small.digest, env.domain, OTHER))
    progress = Recorder()

    result = await env.upload(layer, progress=progress)

    assert result == Uploaded(small.digest, 0, small.size, OCI_LAYER_GZIP, "mounted", OTHER)
    (post,) = env.registry.seen("POST", UPLOADS)
    assert post.query == {"mount": small.digest, "from": OTHER}
    assert env.registry.seen("PATCH", SESSION) == []
    assert env.registry.seen("PUT", SESSION) == []
    assert env.registry.repo_blobs(REPO) == {small.digest: small.blob}
    assert env.metadata(layer) == {
        V2Metadata(small.digest, env.domain, OTHER),
        V2Metadata(small.digest, env.domain, REPO),
    }
    assert progress.statuses() == [f"Mounted from {OTHER}"]


async def test_metadata_of_another_registry_is_not_mounted(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.store.metadata.add(small.diff_id, V2Metadata(small.digest, "elsewhere.io", OTHER))

    result = await env.upload(layer)

    assert result.outcome == "pushed"
    (post,) = env.registry.seen("POST", UPLOADS)
    assert post.query == {}


async def test_refused_mount_uploads_to_the_session_it_opened(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.registry.add_repo_blob(OTHER, small.blob)
    env.registry.allow_mounts = False
    env.store.metadata.add(small.diff_id, V2Metadata(small.digest, env.domain, OTHER))
    progress = Recorder()

    result = await env.upload(layer, progress=progress)

    assert result == Uploaded(small.digest, small.size, small.size, OCI_LAYER_GZIP, "pushed")
    (post,) = env.registry.seen("POST", UPLOADS)  # the mount's POST; no second one
    assert post.query == {"mount": small.digest, "from": OTHER}
    (patch,) = env.registry.seen("PATCH", SESSION)
    assert patch.path == f"/v2/{REPO}/blobs/uploads/session-1"
    assert patch.body == small.blob
    (put,) = env.registry.seen("PUT", SESSION)
    assert put.path == f"/v2/{REPO}/blobs/uploads/session-1"
    assert put.query["digest"] == small.digest
    assert env.registry.repo_blobs(REPO) == {small.digest: small.blob}
    assert V2Metadata(small.digest, env.domain, REPO) in env.metadata(layer)
    assert progress.statuses()[-1] == "Pushed"


# -- uploads as stored ------------------------------------------------------------------


async def test_an_upload_goes_over_the_connection_the_last_one_left(
    env: Env, small: FakeLayer, big: FakeLayer
) -> None:
    """HEAD, POST, PATCH and PUT answer with short bodies nobody needs: read before they
    are closed, they leave the connection kept (closed unread, each request of a push
    opened one: 77 connections to push 24 layers, 7 now)."""
    await env.upload(env.stored(small))
    opened = env.server.connections

    await env.upload(env.stored(big))

    assert [request.split()[0] for request in env.wire()[-4:]] == ["HEAD", "POST", "PATCH", "PUT"]
    assert env.server.connections == opened


async def test_upload_sends_the_stored_blob_byte_for_byte(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    progress = Recorder()

    result = await env.upload(layer, progress=progress, family="docker")

    assert result == Uploaded(big.digest, big.size, big.size, DOCKER_LAYER_GZIP, "pushed")
    assert env.wire() == [
        f"HEAD /v2/{REPO}/blobs/{big.digest}",
        f"POST {UPLOADS}",
        f"PATCH {UPLOADS}session-1",
        f"PUT {UPLOADS}session-1",
    ]
    (patch,) = env.registry.seen("PATCH", SESSION)
    assert patch.headers["content-length"] == str(big.size)
    assert "transfer-encoding" not in patch.headers
    assert patch.body == big.blob
    (put,) = env.registry.seen("PUT", SESSION)
    assert put.query["digest"] == big.digest
    assert put.body == b""
    assert env.registry.repo_blobs(REPO) == {big.digest: big.blob}
    assert env.metadata(layer) == {V2Metadata(big.digest, env.domain, REPO)}


async def test_put_keeps_the_upload_urls_own_query(env: Env, small: FakeLayer) -> None:
    # The registry's `_state` token changes with every PATCH and holds characters a
    # query must encode: the PUT must carry the PATCH's token and the digest, merged.
    layer = env.stored(small)

    await env.upload(layer)

    (post,) = env.registry.seen("POST", UPLOADS)
    assert post.query == {}
    (patch,) = env.registry.seen("PATCH", SESSION)
    assert patch.query == {"_state": "st0+/=="}
    (put,) = env.registry.seen("PUT", SESSION)
    assert put.query == {"_state": "st1+/==", "digest": small.digest}


async def test_relative_upload_locations_are_resolved(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)

    def relative(request: Request) -> Reply:
        reply = env.registry.answer(request)
        reply.headers["Location"] = reply.headers["Location"].removeprefix(env.server.url)
        return reply

    env.registry.on("POST", UPLOADS, relative)
    env.registry.on("PATCH", SESSION, relative)

    result = await env.upload(layer)

    assert result.outcome == "pushed"
    assert env.registry.repo_blobs(REPO) == {small.digest: small.blob}


async def test_pushing_progress_counts_up_to_the_blob_size(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    progress = Recorder()

    await env.upload(layer, progress=progress)

    updates = pushing(progress)
    assert updates
    assert all(m.total == big.size for m in updates)
    assert all(m.id == short_id(big.diff_id) for m in updates)
    currents = [m.current or 0 for m in updates]
    assert currents == sorted(currents)
    assert currents[-1] == big.size
    assert progress.statuses()[-1] == "Pushed"
    assert progress.statuses()[-2] == "Pushing"


# -- a plain tar is gzip'd on the way -------------------------------------------------------


async def test_plain_tar_is_compressed_on_the_way(env: Env, plain: PlainLayer) -> None:
    layer = env.stored(plain)
    progress = Recorder()

    result = await env.upload(layer, progress=progress, family="docker")

    # Its gzip digest is not known yet:
    assert env.registry.seen("HEAD", f"/v2/{REPO}/blobs/.+") == []
    (patch,) = env.registry.seen("PATCH", SESSION)
    assert patch.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in patch.headers
    sent = patch.body
    assert gzip.decompress(sent) == plain.tar
    assert len(sent) < len(plain.tar)
    (put,) = env.registry.seen("PUT", SESSION)
    assert put.query["digest"] == sha256(sent)
    assert result == Uploaded(sha256(sent), len(sent), len(sent), DOCKER_LAYER_GZIP, "pushed")
    assert env.registry.repo_blobs(REPO) == {sha256(sent): sent}
    assert env.metadata(layer) == {V2Metadata(sha256(sent), env.domain, REPO)}
    updates = pushing(progress)
    assert updates
    assert all(m.total == len(plain.tar) for m in updates)  # counted in tar bytes read
    assert updates[-1].current == len(plain.tar)
    assert progress.statuses()[-1] == "Pushed"


async def test_plain_tar_pushed_before_exists_then_mounts(env: Env, plain: PlainLayer) -> None:
    # V2 metadata remembers the digest the gzip'd upload had: the next push to the same
    # repository finds it with HEAD, one to a sibling repository mounts it.
    layer = env.stored(plain)
    first = await env.upload(layer)
    assert first.outcome == "pushed"

    again = await env.upload(layer)
    assert again == Uploaded(first.digest, 0, first.size, OCI_LAYER_GZIP, "exists")

    other = await env.open_client(OTHER)
    mounted = await env.upload(layer, client=other)
    assert mounted.outcome == "mounted"
    assert mounted.digest == first.digest
    assert mounted.source == REPO
    assert mounted.blob_size == first.size
    assert env.registry.repo_blobs(OTHER) == env.registry.repo_blobs(REPO)
    assert len(env.registry.seen("PATCH", ANY_SESSION)) == 1


# -- faults ---------------------------------------------------------------------------------


async def test_server_error_on_patch_is_retried(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    env.registry.on("PATCH", SESSION, Reply(500, body=b"oops"), times=1)
    progress = Recorder()

    result = await env.upload(layer, progress=progress)

    assert result.outcome == "pushed"
    assert len(env.registry.seen("POST", UPLOADS)) == 2  # a fresh session for the second attempt
    assert len(env.registry.seen("PATCH", SESSION)) == 2
    (put,) = env.registry.seen("PUT", SESSION)
    assert put.path == f"{UPLOADS}session-2"
    assert retries(progress) == ["Retrying in 1 second"]
    assert progress.statuses()[-1] == "Pushed"
    assert env.registry.repo_blobs(REPO) == {big.digest: big.blob}


async def test_server_errors_every_time_give_up(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    env.registry.on("PUT", SESSION, registry_error(503, "UNAVAILABLE", "try later"))
    progress = Recorder()

    with pytest.raises(TransientRegistryError, match="503") as caught:
        await env.upload(layer, progress=progress)

    assert caught.value.retryable
    assert len(env.registry.seen("PUT", SESSION)) == 5
    assert len(retries(progress)) == 4
    assert env.metadata(layer) == set()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (401, "UNAUTHORIZED", AuthenticationError),
        (403, "DENIED", AccessDeniedError),
        (404, "NAME_UNKNOWN", NotFoundError),
    ],
)
async def test_refused_post_is_not_retried(
    env: Env, small: FakeLayer, status: int, code: str, error: type[RegistryError]
) -> None:
    layer = env.stored(small)
    env.registry.on("POST", UPLOADS, registry_error(status, code, "no pushing here"))
    progress = Recorder()

    with pytest.raises(error, match="no pushing here") as caught:
        await env.upload(layer, progress=progress)

    assert "blob upload" in str(caught.value)
    assert not caught.value.retryable
    assert len(env.registry.seen("POST", UPLOADS)) == 1
    assert env.registry.seen("PATCH", SESSION) == []
    assert retries(progress) == []
    assert env.metadata(layer) == set()


async def test_put_answered_with_another_digest(env: Env, small: FakeLayer) -> None:
    layer = env.stored(small)
    lie = sha256(b"something else")

    def lying(request: Request) -> Reply:
        reply = env.registry.answer(request)
        reply.headers["Docker-Content-Digest"] = lie
        return reply

    env.registry.on("PUT", SESSION, lying)
    progress = Recorder()

    with pytest.raises(DigestMismatchError, match=lie):
        await env.upload(layer, progress=progress)

    assert len(env.registry.seen("PUT", SESSION)) == 1  # not retried
    assert retries(progress) == []
    assert env.metadata(layer) == set()


async def test_registry_that_loses_the_state_token(env: Env, small: FakeLayer) -> None:
    # What a client that replaces the upload URL's query gets; the fake enforces it.
    layer = env.stored(small)

    def forgetful(request: Request) -> Reply:
        reply = env.registry.answer(request)
        reply.headers["Location"] = reply.headers["Location"].partition("?")[0]
        return reply

    env.registry.on("POST", UPLOADS, forgetful)

    with pytest.raises(FerrydError, match="invalid secret"):
        await env.upload(layer)
    assert len(env.registry.seen("PATCH", SESSION)) == 1


# -- sharing and cancellation -------------------------------------------------------------


async def test_concurrent_uploads_to_one_repository_share_one(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    released = gate(env, "PATCH", SESSION)
    first, second = Recorder(), Recorder()
    results: list[Uploaded] = []

    async def push(progress: Recorder) -> None:
        results.append(await env.upload(layer, progress=progress))

    async with anyio.create_task_group() as tg:
        tg.start_soon(push, first)
        await await_until(lambda: len(env.registry.seen("PATCH", SESSION)) == 1)
        tg.start_soon(push, second)
        await await_until(lambda: bool(second.messages))  # joined: sees "Pushing" at once
        assert env.manager.active == 1
        released.set()

    assert len(results) == 2
    assert results[0] == results[1]
    assert results[0].outcome == "pushed"
    assert len(env.registry.seen("POST", UPLOADS)) == 1
    assert len(env.registry.seen("PATCH", SESSION)) == 1
    assert len(env.registry.seen("PUT", SESSION)) == 1
    for progress in (first, second):
        assert progress.statuses()[-1] == "Pushed"
    assert second.messages[0].status == "Pushing"


async def test_concurrent_uploads_to_two_repositories(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    released = gate(env, "PATCH", ANY_SESSION)
    other = await env.open_client(OTHER)
    results: dict[str, Uploaded] = {}

    async def push(client: RegistryClient) -> None:
        results[client.repository] = await env.upload(layer, client=client)

    async with anyio.create_task_group() as tg:
        tg.start_soon(push, env.client)
        tg.start_soon(push, other)
        await await_until(lambda: len(env.registry.seen("PATCH", ANY_SESSION)) == 2)
        assert env.manager.active == 2
        released.set()

    assert {r.outcome for r in results.values()} == {"pushed"}
    posts = sorted(r.path for r in env.registry.seen("POST", ANY_UPLOADS))
    assert posts == sorted([f"/v2/{REPO}/blobs/uploads/", f"/v2/{OTHER}/blobs/uploads/"])
    assert len(env.registry.seen("PUT", ANY_SESSION)) == 2
    assert env.registry.repo_blobs(REPO) == {big.digest: big.blob}
    assert env.registry.repo_blobs(OTHER) == {big.digest: big.blob}
    assert env.metadata(layer) == {
        V2Metadata(big.digest, env.domain, REPO),
        V2Metadata(big.digest, env.domain, OTHER),
    }


async def test_cancelling_the_only_waiter_cancels_the_upload(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    released = gate(env, "PATCH", SESSION)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: env.upload(layer))
            await await_until(lambda: len(env.registry.seen("PATCH", SESSION)) == 1)
            tg.cancel_scope.cancel()
        await await_until(lambda: env.manager.active == 0)
    finally:
        released.set()
    await anyio.wait_all_tasks_blocked()  # the held-back PATCH answer goes to a closed connection

    assert env.registry.seen("PUT", SESSION) == []
    assert env.registry.repo_blobs(REPO) == {}
    assert env.metadata(layer) == set()

    result = await env.upload(layer)  # later: starts afresh

    assert result.outcome == "pushed"
    assert len(env.registry.seen("POST", UPLOADS)) == 2
    assert env.registry.repo_blobs(REPO) == {big.digest: big.blob}


async def test_cancelling_one_of_two_waiters_keeps_the_upload(env: Env, big: FakeLayer) -> None:
    layer = env.stored(big)
    released = gate(env, "PATCH", SESSION)
    staying = Recorder()
    leaving = anyio.CancelScope()

    async def push_then_leave() -> None:
        with leaving:
            await env.upload(layer)

    async with anyio.create_task_group() as tg:
        tg.start_soon(push_then_leave)
        await await_until(lambda: len(env.registry.seen("PATCH", SESSION)) == 1)
        tg.start_soon(lambda: env.upload(layer, progress=staying))
        await await_until(lambda: bool(staying.messages))
        leaving.cancel()
        await anyio.wait_all_tasks_blocked()  # the leaving push is gone, the upload waits
        assert env.manager.active == 1
        released.set()

    assert leaving.cancelled_caught
    assert staying.statuses()[-1] == "Pushed"
    assert len(env.registry.seen("PUT", SESSION)) == 1


async def test_uploads_beyond_the_limit_wait(env: Env, small: FakeLayer, big: FakeLayer) -> None:
    manager = UploadManager(env.store.metadata, env.task_group, max_concurrent=1)
    first, second = env.stored(big), env.stored(small)
    released = gate(env, "PATCH", SESSION)
    waiting = Recorder()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: env.upload(first, manager=manager))
        await await_until(lambda: len(env.registry.seen("PATCH", SESSION)) == 1)
        tg.start_soon(lambda: env.upload(second, manager=manager, progress=waiting))
        await await_until(lambda: bool(waiting.messages))
        assert waiting.statuses() == ["Waiting"]
        assert len(env.registry.seen("HEAD", f"/v2/{REPO}/blobs/.+")) == 1
        released.set()

    assert waiting.statuses()[-1] == "Pushed"
    assert set(env.registry.repo_blobs(REPO)) == {big.digest, small.digest}


# -- manifests ----------------------------------------------------------------------------


async def test_put_manifest(env: Env) -> None:
    raw = b'{"schemaVersion":2,"mediaType":"%s"}' % OCI_MANIFEST.encode()

    digest = await env.client.put_manifest("v1", OCI_MANIFEST, raw)

    assert digest == sha256(raw)
    (put,) = env.registry.seen("PUT", f"/v2/{REPO}/manifests/v1")
    assert put.body == raw
    assert put.headers["content-type"] == OCI_MANIFEST
    assert env.registry.manifests["v1"] == (OCI_MANIFEST, raw)


async def test_put_manifest_to_a_registry_that_stores_something_else(env: Env) -> None:
    raw = b'{"schemaVersion":2,"mediaType":"%s"}' % OCI_MANIFEST.encode()
    lie = sha256(raw + b" ")

    def lying(request: Request) -> Reply:
        reply = env.registry.answer(request)
        reply.headers["Docker-Content-Digest"] = lie
        return reply

    env.registry.on("PUT", f"/v2/{REPO}/manifests/.+", lying)

    with pytest.raises(DigestMismatchError, match=lie):
        await env.client.put_manifest("v1", OCI_MANIFEST, raw)


async def test_blob_upload_of_bytes_checks_the_digest_header(env: Env) -> None:
    # The config blob goes up as bytes, through the same POST, PATCH, PUT.
    config = b'{"architecture":"amd64","os":"linux"}'

    await env.client.upload_blob(sha256(config), len(config), config)

    assert env.registry.repo_blobs(REPO) == {sha256(config): config}
    (patch,) = env.registry.seen("PATCH", SESSION)
    assert patch.headers["content-length"] == str(len(config))


# -- found while writing these ------------------------------------------------------------


async def test_concurrent_pushes_in_two_manifest_families(env: Env, big: FakeLayer) -> None:
    # Two images sharing a layer, one docker and one OCI, pushed at once to one
    # repository: one upload, but each manifest needs the layer in its own media type.
    layer = env.stored(big)
    released = gate(env, "PATCH", SESSION)
    results: dict[str, Uploaded] = {}

    async def push(family: Family, progress: Recorder) -> None:
        results[family] = await env.upload(layer, family=family, progress=progress)

    docker, oci = Recorder(), Recorder()
    async with anyio.create_task_group() as tg:
        tg.start_soon(push, "docker", docker)
        await await_until(lambda: len(env.registry.seen("PATCH", SESSION)) == 1)
        tg.start_soon(push, "oci", oci)
        await await_until(lambda: bool(oci.messages))
        released.set()

    assert len(env.registry.seen("PUT", SESSION)) == 1
    assert results["docker"].media_type == DOCKER_LAYER_GZIP
    assert results["oci"].media_type == OCI_LAYER_GZIP


async def test_mount_asks_for_pull_on_the_source_repository() -> None:
    registry = UploadRegistry(auth="bearer")
    layer = make_layer(10_000, seed=14)
    registry.add_repo_blob(OTHER, layer.blob)
    connector = Connector(RegistryService(), connect_timeout=5, read_timeout=5)
    try:
        async with serve_registry(registry) as server:
            client = await connector.open(server.host, REPO, ANONYMOUS, actions="pull,push")
            with anyio.fail_after(5):
                assert await client.mount_blob(layer.digest, OTHER) is None
    finally:
        await connector.aclose()
    scopes = [
        value
        for request in registry.token_requests
        for name, value in parse_qsl(urlsplit(request.target).query)
        if name == "scope"
    ]
    assert scopes == [f"repository:{REPO}:pull,push", f"repository:{OTHER}:pull"]
    assert registry.repo_blobs(REPO) == {layer.digest: layer.blob}
