"""A pull's blob names are flushed to disk before its rows name them, and a pull that
writes nothing (the image is up to date) flushes nothing: on ext4 a directory's fsync
commits the journal, and waits for the blocks every other pull has written.

In process (the API over a store in a temp directory) against a fake registry, with the
store's directory fsyncs counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryd.store import blobs as blobs_module
from support.app import in_process_api
from support.fakes import FakeRegistry, make_layer, serve_registry
from support.served import add_image
from support.slow_pulls import REPO


async def test_a_pull_flushes_its_blobs_before_its_rows_and_an_up_to_date_pull_flushes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FakeRegistry()
    add_image(registry, "v1", [make_layer(50_000, seed=871), make_layer(60_000, seed=872)])
    flushed: list[Path] = []
    real = blobs_module._fsync_dir

    def counted(directory: Path) -> None:
        flushed.append(directory)
        real(directory)

    async with serve_registry(registry) as server, in_process_api(tmp_path) as api:
        monkeypatch.setattr(blobs_module, "_fsync_dir", counted)
        params = {"fromImage": f"{server.host}/{REPO}:v1"}

        first = await api.post("/images/create", params=params)
        assert "Downloaded newer image" in first.text
        assert flushed  # the layers' and the config's names, before the rows

        flushed.clear()
        again = await api.post("/images/create", params=params)
        assert "Image is up to date" in again.text
        assert flushed == []
