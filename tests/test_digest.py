"""Digests and the layer identities built from them (OCI image-spec)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ferryd.errors import InvalidDigestError
from ferryd.oci.digest import (
    Digest,
    algorithm_of,
    chain_id,
    chain_ids,
    hex_of,
    new_hasher,
    parse_digest,
    sha256_digest,
    short_id,
)
from support.digests import sha256

deterministic = settings(derandomize=True, max_examples=200)

EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    "value",
    [
        EMPTY_SHA256,
        "sha256:" + "0123456789abcdef" * 4,
        "sha384:" + "a" * 96,
        "sha512:" + "f" * 128,
    ],
)
def test_parse_digest_accepts_the_known_algorithms(value: str) -> None:
    assert parse_digest(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("sha256:" + "a" * 63, "sha256 needs 64 hex digits, got 63"),
        ("sha256:" + "a" * 65, "sha256 needs 64 hex digits, got 65"),
        ("sha384:" + "a" * 64, "sha384 needs 96 hex digits, got 64"),
        ("sha512:" + "a" * 64, "sha512 needs 128 hex digits, got 64"),
        ("md5:" + "a" * 32, "unsupported algorithm 'md5'"),
        ("sha1:" + "a" * 40, "unsupported algorithm 'sha1'"),
        ("blake3:" + "a" * 64, "unsupported algorithm 'blake3'"),
        ("multihash+base58:" + "a" * 64, "unsupported algorithm"),
    ],
)
def test_parse_digest_refuses_wrong_lengths_and_unknown_algorithms(value: str, reason: str) -> None:
    with pytest.raises(InvalidDigestError, match=reason.replace("+", r"\+")):
        parse_digest(value)


@pytest.mark.parametrize(
    "value",
    ["sha256:" + "A" * 64, "SHA256:" + "a" * 64, "Sha256:" + "aB" * 32],
)
def test_parse_digest_refuses_uppercase(value: str) -> None:
    with pytest.raises(InvalidDigestError, match="must be lowercase"):
        parse_digest(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "sha256",
        "sha256:",
        ":" + "a" * 64,
        "a" * 64,
        "sha256:" + "g" * 64,
        "sha256:" + "a" * 63 + " ",
        " sha256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",  # `$` in a regex would let this through
        "sha256::" + "a" * 64,
        "sha256:" + "a" * 32 + ":" + "a" * 32,
        "sha-:" + "a" * 64,
        "-sha:" + "a" * 64,
    ],
)
def test_parse_digest_refuses_what_is_not_algorithm_colon_hex(value: str) -> None:
    with pytest.raises(InvalidDigestError, match="invalid digest"):
        parse_digest(value)


@deterministic
@given(st.text(max_size=80))
@example("sha256:" + "a" * 64 + "\n")
def test_parse_digest_returns_only_well_formed_digests(value: str) -> None:
    try:
        digest = parse_digest(value)
    except InvalidDigestError:
        return
    algorithm, _, hex_part = digest.partition(":")
    assert algorithm in {"sha256", "sha384", "sha512"}
    assert len(hex_part) == {"sha256": 64, "sha384": 96, "sha512": 128}[algorithm]
    assert set(hex_part) <= set("0123456789abcdef")


@deterministic
@given(st.binary(max_size=64))
def test_sha256_digest_is_hashlib_sha256(data: bytes) -> None:
    digest = sha256_digest(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert parse_digest(digest) == digest


def test_sha256_digest_of_nothing() -> None:
    assert sha256_digest(b"") == EMPTY_SHA256


def test_algorithm_hex_and_short_id_split_a_digest() -> None:
    digest = Digest(EMPTY_SHA256)
    assert algorithm_of(digest) == "sha256"
    assert hex_of(digest) == EMPTY_SHA256[7:]
    assert short_id(digest) == "e3b0c44298fc"


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_new_hasher_uses_the_digests_algorithm(algorithm: str) -> None:
    data = b"layer bytes"
    digest = Digest(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")
    hasher = new_hasher(digest)
    hasher.update(data)
    assert f"{algorithm}:{hasher.hexdigest()}" == digest


# ChainID, OCI image-spec (config.md, "Layer ChainID"):
#   ChainID(L0) = DiffID(L0)
#   ChainID(L0|...|Ln) = Digest(ChainID(L0|...|Ln-1) + " " + DiffID(Ln))

A = sha256(b"layer a")
B = sha256(b"layer b")
C = sha256(b"layer c")


def test_the_chain_id_of_a_base_layer_is_its_diff_id() -> None:
    assert chain_id(None, A) == A


def test_the_chain_id_of_a_layer_on_a_parent_hashes_parent_space_diff_id() -> None:
    expected = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    assert chain_id(A, B) == expected


def test_chain_ids_of_three_layers_follow_the_spec() -> None:
    ab = sha256(f"{A} {B}".encode())
    abc = sha256(f"{ab} {C}".encode())
    assert chain_ids([A, B, C]) == [A, ab, abc]


def test_chain_ids_of_no_layers_is_empty() -> None:
    assert chain_ids([]) == []


def test_the_chain_id_depends_on_the_order_of_layers() -> None:
    assert chain_ids([A, B])[-1] != chain_ids([B, A])[-1]


def test_a_repeated_layer_gives_a_different_chain_id() -> None:
    ids = chain_ids([A, A])
    assert ids[0] == A
    assert ids[1] != A


# Fixed vectors, checked with `printf 'sha256:111… sha256:222…' | sha256sum`.
ONES = Digest("sha256:" + "1" * 64)
TWOS = Digest("sha256:" + "2" * 64)
THREES = Digest("sha256:" + "3" * 64)


def test_chain_ids_match_fixed_vectors() -> None:
    assert chain_ids([ONES, TWOS, THREES]) == [
        ONES,
        "sha256:9932074217c35353d2e03a3f5a86549f7c67bfeb0ba53e23d69f4d4c8f7958f5",
        "sha256:50127c0d6b338be78246434b4bce23ecf75e505158ea0bbd15effeb162fbf3ec",
    ]


_DIFF_IDS = st.lists(st.binary(max_size=8).map(sha256_digest), max_size=8)


@deterministic
@given(_DIFF_IDS)
def test_each_chain_id_extends_the_one_before(diff_ids: list[Digest]) -> None:
    ids = chain_ids(diff_ids)

    assert len(ids) == len(diff_ids)
    parent: Digest | None = None
    for diff_id, current in zip(diff_ids, ids, strict=True):
        assert current == chain_id(parent, diff_id)
        assert parse_digest(current) == current
        parent = current


@deterministic
@given(_DIFF_IDS, _DIFF_IDS)
def test_chain_ids_of_a_prefix_are_a_prefix(lower: list[Digest], upper: list[Digest]) -> None:
    assert chain_ids(lower + upper)[: len(lower)] == chain_ids(lower)
