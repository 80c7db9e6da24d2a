"""What the store holds, as dockerd answers it: the image list with its filters, an
image's history, disk usage (`docker system df`), and pruning what is unused."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ferryd.daemon.api.filters import Filters
from ferryd.daemon.api.image_filters import (
    LIST_FILTERS,
    StoredImage,
    layer_sizes,
    list_images,
    stored_images,
    until,
)
from ferryd.daemon.api.params import flag
from ferryd.daemon.api.params import service as service_of
from ferryd.daemon.api.shapes import _created
from ferryd.distribution.prune import prune
from ferryd.errors import BadRequestError, ImageConfigError, InvalidFilterError
from ferryd.oci.digest import chain_ids
from ferryd.oci.image_config import decode_config, rootfs_of
from ferryd.store import Store

PRUNE_FILTERS = frozenset({"dangling", "label", "label!", "until"})
DISK_USAGE_TYPES = ("container", "image", "volume", "build-cache")


def _flag(request: Request, name: str) -> bool:
    return flag(request.query_params.get(name, ""))


async def images(request: Request) -> Response:
    """`GET /images/json?filters=&all=&shared-size=&manifests=`."""
    filters = Filters.parse(request.query_params.get("filters", ""), LIST_FILTERS)
    shared_size = _flag(request, "shared-size")
    manifests = _flag(request, "manifests")
    store = service_of(request).store

    def collect() -> list[dict[str, Any]]:
        return list_images(store, filters, shared_size=shared_size, manifests=manifests)

    return JSONResponse(await anyio.to_thread.run_sync(collect))


async def history(request: Request) -> Response:
    """`GET /images/{name}/history`: the config's build steps, newest first."""
    store = service_of(request).store
    name = request.path_params["name"]
    return JSONResponse(await anyio.to_thread.run_sync(image_history, store, name))


def image_history(store: Store, name: str) -> list[dict[str, Any]]:
    """dockerd's ImageHistory: each step of the config's `history`, with the size of the
    layer it made (0 for an `empty_layer` step); the newest carries the image's ID and
    tags, older ones `<missing>` (ferryd, like a pulling dockerd, has no parent images).
    """
    image_id = store.resolve(name)
    raw = store.images.get(image_id)
    model = decode_config(raw)
    chains = chain_ids(rootfs_of(model).diff_ids)
    entries: list[dict[str, Any]] = []
    layer = 0  # the next layer a step that made one stands for
    for step in model.history or []:
        size = 0
        if not step.empty_layer:
            if layer >= len(chains):
                raise ImageConfigError("too many non-empty layers in History section")
            size = store.layers.size_of(chains[layer])
            layer += 1
        entries.append(
            {
                "Comment": step.comment or "",
                "Created": int(_created(step.created) or 0),
                "CreatedBy": step.created_by or "",
                "Id": "<missing>",
                "Size": size,
                "Tags": None,
            }
        )
    entries.reverse()
    if entries:
        tags = [ref.familiar for ref in store.references.for_image(image_id) if ref.tag]
        entries[0].update(Id=image_id, Tags=tags or None)
    return entries


async def prune_images(request: Request) -> Response:
    """`POST /images/prune?filters=`: `dangling` (default true), `until`, `label`,
    `label!`."""
    filters = Filters.parse(request.query_params.get("filters", ""), PRUNE_FILTERS)
    dangling_only = filters.boolean("dangling", True)
    cutoff = _prune_until(filters)
    service = service_of(request)

    def run() -> dict[str, Any]:
        candidates = [
            image.id
            for image in stored_images(service.store)
            if not image.in_index and _prunable(image, filters, cutoff)
        ]
        return prune(
            service.store, candidates, dangling_only=dangling_only, log=service.event_logger
        ).to_json()

    return JSONResponse(await anyio.to_thread.run_sync(run))


def _prune_until(filters: Filters) -> float | None:
    """A prune's `until` as Unix seconds (None without one), as dockerd's
    getUntilFromPruneFilters reads it."""
    untils = filters.get("until")
    if len(untils) > 1:
        raise InvalidFilterError("more than one until filter specified")
    return until(next(iter(untils))) if untils else None


def _prunable(image: StoredImage, filters: Filters, cutoff: float | None) -> bool:
    """dockerd's prune filters: created no later than `until` (an image whose config
    has no `created` never is, as in moby's image_prune.go); an image with a config
    section must have every `label` and not all of the `label!` ones."""
    if cutoff is not None and (image.created is None or image.created > cutoff):
        return False
    if image.model.config is None:
        return True
    labels = image.labels
    if not filters.match_labels("label", labels):
        return False
    return not ("label!" in filters and filters.match_labels("label!", labels))


# `docker system prune` prunes containers and networks, with `--volumes` volumes, then
# images, then the build cache, and stops at the first error: ferryd has none of the
# others, and answers what dockerd answers when there is nothing to prune (after
# dockerd's checks of the filters each accepts, so a filter dockerd refuses is refused).
CONTAINER_PRUNE_FILTERS = frozenset({"label", "label!", "until"})
VOLUME_PRUNE_FILTERS = frozenset({"label", "label!", "all"})
# dockerd's builder: buildkit's cache fields, `until` and its old name, labels.
BUILD_PRUNE_FILTERS = frozenset(
    {
        "until",
        "unused-for",
        "label",
        "label!",
        "id",
        "parent",
        "type",
        "description",
        "inuse",
        "shared",
        "private",
    }
)


async def prune_containers(request: Request) -> Response:
    """`POST /containers/prune?filters=`: no containers to remove."""
    _prune_until(Filters.parse(request.query_params.get("filters", ""), CONTAINER_PRUNE_FILTERS))
    return JSONResponse({"ContainersDeleted": None, "SpaceReclaimed": 0})


async def prune_networks(request: Request) -> Response:
    """`POST /networks/prune?filters=`: no networks to remove."""
    _prune_until(Filters.parse(request.query_params.get("filters", ""), CONTAINER_PRUNE_FILTERS))
    return JSONResponse({"NetworksDeleted": None})


async def prune_volumes(request: Request) -> Response:
    """`POST /volumes/prune?filters=`: no volumes to remove (dockerd's list of them is
    made empty, not null)."""
    filters = Filters.parse(request.query_params.get("filters", ""), VOLUME_PRUNE_FILTERS)
    filters.boolean("all", False)
    return JSONResponse({"VolumesDeleted": [], "SpaceReclaimed": 0})


async def prune_build_cache(request: Request) -> Response:
    """`POST /build/prune?filters=&all=…`: no build cache."""
    Filters.parse(request.query_params.get("filters", ""), BUILD_PRUNE_FILTERS)
    return JSONResponse({"CachesDeleted": None, "SpaceReclaimed": 0})


async def disk_usage(request: Request) -> Response:
    """`GET /system/df?type=`: images with their shared sizes, the bytes of the layers
    they use; no containers, volumes or build cache. `type` (repeatable) limits the
    answer to those kinds; the others are null, as dockerd (API 1.42+)."""
    kinds = request.query_params.getlist("type")
    for kind in kinds:
        if kind not in DISK_USAGE_TYPES:
            raise BadRequestError(f"unknown object type: {kind}")
    wanted = set(kinds or DISK_USAGE_TYPES)
    store = service_of(request).store

    def usage() -> dict[str, Any]:
        answer: dict[str, Any] = {
            "LayersSize": 0,
            "Images": None,
            "Containers": [] if "container" in wanted else None,
            "Volumes": [] if "volume" in wanted else None,
            "BuildCache": [] if "build-cache" in wanted else None,
        }
        if "image" in wanted:
            answer["Images"] = [
                {**summary, "Containers": 0}
                for summary in list_images(store, Filters({}), shared_size=True)
            ]
            answer["LayersSize"] = layers_size(store, stored_images(store))
        return answer

    return JSONResponse(await anyio.to_thread.run_sync(usage))


def layers_size(store: Store, images: list[StoredImage]) -> int:
    """The bytes of every layer some image uses, each counted once (dockerd's
    LayersSize: uncompressed, by ChainID)."""
    sizes = layer_sizes(store)
    return sum(sizes.get(chain, 0) for chain in {c for image in images for c in image.chains})
