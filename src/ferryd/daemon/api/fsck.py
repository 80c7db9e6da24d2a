"""`POST /fsck?repair=1`: ferryd's own route (dockerd has none): check the store the
daemon has open, and with `repair` fix it, as `ferryd fsck --root` does while the
daemon is stopped. `ferryd fsck` without `--root` asks this route.

The answer is 200 with `{"Problems": [{"Kind", "Subject", "Message"}], "Removed":
[{"Kind", "Subject"}], "Kept": [...], "UnusedLayers": N, "Checked": {"Blobs": N, …},
"Seconds": S}`: a store with problems is a finding, not a failed request. The check runs
in a worker thread with the store's lock already the daemon's; pulls and pushes go on
while it runs, and what they pin or hold is neither reported as left over nor removed.
"""

from __future__ import annotations

import anyio
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ferryd.daemon.api.params import flag
from ferryd.distribution.service import ImageService
from ferryd.store.fsck import FsckReport, check

log = structlog.get_logger("ferryd.api")


async def fsck(request: Request) -> Response:
    repair = flag(request.query_params.get("repair", ""))
    service: ImageService = request.app.state.service

    def run() -> FsckReport:
        return check(service.store, repair=repair)

    report = await anyio.to_thread.run_sync(run)
    log.info(
        "store.fsck",
        repair=repair,
        problems=len(report.problems),
        removed=len(report.removed),
        kept=len(report.kept),
        unused_layers=report.unused_layers,
        seconds=round(report.seconds, 3),
    )
    return JSONResponse(report.to_json())
