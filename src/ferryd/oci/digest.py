"""Content digests (`sha256:<hex>`) and the layer identities built from them."""

from __future__ import annotations

import hashlib
import re
from typing import NewType

from ferryd.errors import InvalidDigestError

Digest = NewType("Digest", str)
"""A validated digest string, `algorithm:hex`."""

HEX_DIGITS = {"sha256": 64, "sha384": 96, "sha512": 128}
"""The algorithms ferryd knows, each with the hex digits of its digests."""
# The OCI grammar, with the encoded part lowercase hex as every registered algorithm
# requires. Used with `fullmatch`: `$` would accept a trailing newline.
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-f0-9]+)")


def parse_digest(value: str) -> Digest:
    """Validate `value` as a digest of a known algorithm and return it."""
    match = _DIGEST.fullmatch(value)
    if match is None:
        if _DIGEST.fullmatch(value.lower()):
            raise InvalidDigestError(
                f"invalid digest {value!r}: the algorithm and hex digits must be lowercase"
            )
        raise InvalidDigestError(f"invalid digest {value!r}: expected algorithm:hex")
    algorithm, hex_part = match.groups()
    length = HEX_DIGITS.get(algorithm)
    if length is None:
        raise InvalidDigestError(f"invalid digest {value!r}: unsupported algorithm {algorithm!r}")
    if len(hex_part) != length:
        raise InvalidDigestError(
            f"invalid digest {value!r}: {algorithm} needs {length} hex digits, got {len(hex_part)}"
        )
    return Digest(value)


def algorithm_of(digest: Digest) -> str:
    return digest.partition(":")[0]


def hex_of(digest: Digest) -> str:
    return digest.partition(":")[2]


def short_id(digest: str) -> str:
    """The 12-hex-digit form docker shows for layers and images."""
    return digest.partition(":")[2][:12]


def new_hasher(digest: Digest) -> hashlib._Hash:
    """A hashlib object of the digest's algorithm."""
    return hashlib.new(algorithm_of(digest))


def sha256_digest(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def chain_id(parent: Digest | None, diff_id: Digest) -> Digest:
    """OCI ChainID: the DiffID for the first layer, else sha256(parent + " " + diff_id)."""
    if parent is None:
        return diff_id
    return sha256_digest(f"{parent} {diff_id}".encode())


def chain_ids(diff_ids: list[Digest]) -> list[Digest]:
    """The ChainID of every prefix of a layer stack."""
    result: list[Digest] = []
    parent: Digest | None = None
    for diff_id in diff_ids:
        parent = chain_id(parent, diff_id)
        result.append(parent)
    return result
