"""An inspect whose image is removed between resolving its name and reading it (an rmi
in between) answers "No such image", as when the name was never there: not a 500."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferryd.daemon.api.shapes import image_inspect
from ferryd.errors import ImageNotFoundError
from ferryd.oci.digest import Digest
from ferryd.store import Store
from ferryd.store.references import Target


def test_an_image_removed_after_its_name_was_resolved_is_no_such_image(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    try:
        gone = Digest("sha256:" + "0" * 64)  # what the name pointed at, now removed
        with pytest.raises(ImageNotFoundError, match=f"No such image: {gone}"):
            image_inspect(store, Target(gone))
        with pytest.raises(ImageNotFoundError, match=f"No such image: {gone}"):
            image_inspect(store, Target(gone), manifests=True)
    finally:
        store.close()
