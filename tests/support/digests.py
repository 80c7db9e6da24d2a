"""The one sha256 helper of the tests: hashlib's, so that no test checks ferryd's own
digest code against itself."""

from __future__ import annotations

import hashlib

from ferryd.oci.digest import Digest


def sha256(data: bytes) -> Digest:
    """`sha256:<hex>` of `data`."""
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def short(digest: str) -> str:
    """The 12 hex digits docker shows for a digest or ID."""
    return digest.removeprefix("sha256:")[:12]
