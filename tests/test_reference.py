"""Image references: parsed and normalised as docker's distribution/reference does.

Most cases come from distribution/reference's own tests (reference_test.go,
normalize_test.go), run through the normalising parser (ParseNormalizedNamed).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from ferryd.errors import InvalidReferenceError
from ferryd.oci.digest import Digest
from ferryd.oci.reference import Reference, parse_reference, parse_repository

SHA = "sha256:" + "f" * 64
SHA512 = "sha512:" + "f" * 128


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("alpine:3.20", "docker.io/library/alpine:3.20"),
        ("library/alpine", "docker.io/library/alpine:latest"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("docker.io/library/alpine:edge", "docker.io/library/alpine:edge"),
        ("index.docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/user/app:1", "docker.io/user/app:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest"),
        ("test_com/foo", "docker.io/test_com/foo:latest"),
        ("test.com/foo", "test.com/foo:latest"),
        ("test.com:8080/foo", "test.com:8080/foo:latest"),
        ("test-com:8080/foo", "test-com:8080/foo:latest"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest"),
        ("quay.io/ns/repo:tag", "quay.io/ns/repo:tag"),
        ("host:5000/ns/repo:tag", "host:5000/ns/repo:tag"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),
        ("127.0.0.1:5000/library/debian", "127.0.0.1:5000/library/debian:latest"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest"),
        ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag"),
        ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker:latest"),
        (
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        ),
        (
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "b.gcr.io/test.example.com/my-app:test.example.com",
        ),
        # A bare word is a repository on Docker Hub, never a registry.
        ("localhost", "docker.io/library/localhost:latest"),
        ("localhost:5000", "docker.io/library/localhost:5000"),
        ("192.168.0.1", "docker.io/library/192.168.0.1:latest"),
        ("192.168.0.1:80", "docker.io/library/192.168.0.1:80"),
        ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080"),
        ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
        # An uppercase first component is a registry host, as in docker.
        ("Docker/docker", "Docker/docker:latest"),
        ("Uppercase/lowercase:tag", "Uppercase/lowercase:tag"),
        # Tags may hold uppercase, dots and dashes; components multiple dashes and "__".
        ("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase"),
        ("a--b__c-d_e/x.y", "docker.io/a--b__c-d_e/x.y:latest"),
        # 64 hex digits are refused alone, not as a path under a registry.
        ("docker.io/" + "1a3f" * 16, "docker.io/library/" + "1a3f" * 16 + ":latest"),
        (
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
        ),
    ],
)
def test_parse_normalises_like_docker(text: str, canonical: str) -> None:
    assert str(parse_reference(text)) == canonical


@pytest.mark.parametrize(
    ("text", "domain", "path", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("repo@" + SHA, "docker.io", "library/repo", None, SHA),
        ("repo:tag@" + SHA, "docker.io", "library/repo", "tag", SHA),
        ("test:5000/repo@" + SHA, "test:5000", "repo", None, SHA),
        ("test:5000/repo:tag@" + SHA, "test:5000", "repo", "tag", SHA),
        ("[2001:db8::1]:5000/repo:tag@" + SHA, "[2001:db8::1]:5000", "repo", "tag", SHA),
        (
            "xn--7o8h.com/myimage:xn--7o8h.com@" + SHA512,
            "xn--7o8h.com",
            "myimage",
            "xn--7o8h.com",
            SHA512,
        ),
    ],
)
def test_parse_splits_domain_path_tag_and_digest(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(domain, path, tag, Digest(digest) if digest else None)


def test_a_digest_without_a_tag_gets_no_default_tag() -> None:
    assert parse_reference("busybox@" + SHA).tag is None


def test_default_tag_false_leaves_a_bare_name_untagged() -> None:
    ref = parse_reference("alpine", default_tag=False)
    assert ref.tag is None
    assert str(ref) == "docker.io/library/alpine"


@pytest.mark.parametrize(
    ("text", "familiar"),
    [
        ("alpine", "alpine:latest"),
        ("docker.io/library/alpine:3", "alpine:3"),
        ("index.docker.io/library/alpine", "alpine:latest"),
        ("user/app:1", "user/app:1"),
        ("docker.io/user/app:1", "user/app:1"),
        ("library/ubuntu", "ubuntu:latest"),
        ("other/library", "other/library:latest"),
        ("docker.io/library/foo/bar", "library/foo/bar:latest"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),
        ("localhost/x", "localhost/x:latest"),
        ("example.com:8000/private/moonbase", "example.com:8000/private/moonbase:latest"),
        ("busybox:latest@" + SHA, "busybox:latest@" + SHA),
        ("busybox@" + SHA, "busybox@" + SHA),
    ],
)
def test_familiar_is_what_docker_prints(text: str, familiar: str) -> None:
    assert parse_reference(text).familiar == familiar


@pytest.mark.parametrize(
    ("text", "familiar_name"),
    [
        ("alpine", "alpine"),
        ("user/app", "user/app"),
        ("localhost:5000/x", "localhost:5000/x"),
        ("ghcr.io/library/x", "ghcr.io/library/x"),
    ],
)
def test_familiar_name_drops_the_hub_domain_and_official_namespace(
    text: str, familiar_name: str
) -> None:
    assert parse_reference(text).familiar_name == familiar_name


def test_name_is_domain_and_path() -> None:
    assert parse_reference("alpine:3").name == "docker.io/library/alpine"


@pytest.mark.parametrize(
    "text",
    [
        "https://github.com/docker/docker",
        "-docker",
        "-docker/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker///docker",
        ":justtag",
        "@" + SHA,
        "aa/asdf$$^/aa",
        "a:" + "b" * 129,
        "repo:-tag",
        "repo:",
        "repo@",
        "repo/",
        "/repo",
        "repo:tag:tag",
        "[2001:db8::1]",
        "[2001:db8::1]:5000",
        "[2001:db8::1]:tag",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "2001:db8::1/repo",
        "[fe80::1%eth0]:5000/repo",
        "[fe80::1%@invalidzone]:5000/repo",
        "a_b.c/x",  # "a_b.c" is taken for a registry but is not a host name
        "repo name",
        " alpine",
    ],
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid reference format"):
        parse_reference(text)


def test_an_empty_reference_is_refused() -> None:
    with pytest.raises(InvalidReferenceError, match="empty"):
        parse_reference("")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Uppercase", "Uppercase"),
        ("Uppercase:tag", "Uppercase"),
        ("docker/Docker", "docker/Docker"),
        ("docker.io/docker/Docker", "docker.io/docker/Docker"),
        ("test:5000/Uppercase/lowercase:tag", "test:5000/Uppercase/lowercase"),
        ("[fc00::1]:5000/Debian", "[fc00::1]:5000/Debian"),
        ("Alpine@" + SHA, "Alpine"),
    ],
)
def test_an_uppercase_repository_must_be_lowercase(text: str, name: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference(text)
    assert str(caught.value) == (
        f"invalid reference format: repository name ({name}) must be lowercase"
    )


def test_64_hex_digits_alone_are_refused_as_an_image_id() -> None:
    text = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"
    with pytest.raises(InvalidReferenceError, match="cannot specify 64-byte hexadecimal"):
        parse_reference(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("repo@sha256:" + "f" * 63, "sha256 needs 64 hex digits"),
        ("repo@sha256:" + "f" * 65, "sha256 needs 64 hex digits"),
        ("repo@sha512:" + "f" * 64, "sha512 needs 128 hex digits"),
        ("validname@invaliddigest:" + "f" * 64, "unsupported algorithm"),
        ("repo@sha256:" + "F" * 64, "lowercase"),
        ("repo@SHA256:" + "f" * 64, "lowercase"),
    ],
)
def test_bad_digests_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError, match=reason):
        parse_reference(text)


@pytest.mark.parametrize("text", ["repo@sha256:" + "f" * 31, "repo@sha256:xyz"])
def test_digests_that_are_not_hex_are_a_format_error(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid reference format"):
        parse_reference(text)


def test_a_repository_path_of_255_characters_is_accepted() -> None:
    # reference_test.go: 127 "a/" and an "a" stays within the limit.
    ref = parse_reference("a/" * 127 + "a:tag-puts-this-over-max")
    assert ref.domain == "docker.io"
    assert len(ref.path) == 255


@pytest.mark.parametrize(
    "text",
    [
        "a/" * 128 + "a:tag",
        "a" * 256,
        # The limit is on the repository path as the registry sees it: library/ counts.
        "a" * 250,
        "registry.example.com/" + "b" * 256,
    ],
)
def test_a_repository_path_over_255_characters_is_refused(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="must not be more than 255 characters"):
        parse_reference(text)


def test_a_long_domain_does_not_count_towards_the_path_limit() -> None:
    domain = ".".join(["d" * 60] * 4)
    ref = parse_reference(f"{domain}/{'p' * 255}")
    assert (ref.domain, len(ref.path)) == (domain, 255)


def test_the_tag_may_be_128_characters() -> None:
    tag = "T" * 128
    assert parse_reference(f"a:{tag}").tag == tag


@pytest.mark.parametrize("text", ["alpine\n", "alpine:latest\n", f"alpine@{SHA}\n", "a\nb"])
def test_a_newline_is_never_part_of_a_reference(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


@pytest.mark.parametrize("text", ["alpine:tåg", "alpine:٣", "ålpine", "alpine:lat\u0130"])
def test_non_ascii_characters_are_refused(text: str) -> None:
    # Go's \w is ASCII; Python's would take any letter or digit.
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


def test_with_tag_replaces_tag_and_digest() -> None:
    ref = parse_reference(f"alpine:3@{SHA}")
    assert str(ref.with_tag("edge")) == "docker.io/library/alpine:edge"


@pytest.mark.parametrize("tag", ["", "-x", ".x", "a" * 129, "tåg", "a\n", "a b"])
def test_with_tag_refuses_an_invalid_tag(tag: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        parse_reference("alpine").with_tag(tag)


def test_with_digest_replaces_the_tag() -> None:
    ref = parse_reference("alpine:3").with_digest(Digest(SHA))
    assert str(ref) == f"docker.io/library/alpine@{SHA}"


def test_repository_drops_tag_and_digest() -> None:
    ref = parse_reference(f"localhost:5000/x:1@{SHA}").repository()
    assert ref == Reference("localhost:5000", "x")
    assert str(ref) == "localhost:5000/x"


def test_parse_repository_takes_a_bare_name() -> None:
    assert parse_repository("user/app") == Reference("docker.io", "user/app")


@pytest.mark.parametrize("text", ["user/app:1", f"user/app@{SHA}"])
def test_parse_repository_refuses_a_tag_or_digest(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="has a tag or digest"):
        parse_repository(text)


# Property tests: generated references in docker's grammar. Derandomised, so that every
# run tries the same examples.

deterministic = settings(derandomize=True, max_examples=200)

_ALNUM = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_SEPARATOR = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def _components(draw: st.DrawFn) -> str:
    parts = [draw(_ALNUM)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(_SEPARATOR), draw(_ALNUM)]
    return "".join(parts)


_DOMAINS = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "docker.io",
            "index.docker.io",
            "localhost",
            "localhost:5000",
            "example.com",
            "registry-1.example.co.uk:443",
            "127.0.0.1:5000",
            "[::1]:5000",
            "[2001:db8::1]",
            "Registry.Example.com",
        ]
    ),
)
_WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
_TAGS = st.builds(str.__add__, st.sampled_from(_WORD), st.text(_WORD + ".-", max_size=20))
_DIGESTS = st.one_of(
    st.none(),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
)


@st.composite
def references(draw: st.DrawFn) -> str:
    domain = draw(_DOMAINS)
    components = draw(st.lists(_components(), min_size=1, max_size=3))
    if not domain and len(components) > 1:
        # Without a domain, a first component with a dot would be taken for one.
        components[0] = components[0].replace(".", "-")
    path = "/".join(components)
    text = f"{domain}/{path}" if domain else path
    if draw(st.booleans()):
        text += ":" + draw(_TAGS)
    digest = draw(_DIGESTS)
    if digest:
        text += "@" + digest
    return text


_CANONICAL = re.compile(
    r"(?P<domain>[^/]+)/(?P<path>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?",
    re.ASCII,
)


@deterministic
@given(references())
@example("alpine")
@example("docker.io/library/foo/bar:1")
def test_a_parsed_reference_parses_back_to_itself(text: str) -> None:
    ref = parse_reference(text)

    assert parse_reference(str(ref)) == ref
    assert _CANONICAL.fullmatch(str(ref))
    assert ref.domain != "index.docker.io"
    assert ref.tag is not None or ref.digest is not None


@deterministic
@given(references())
def test_the_familiar_form_parses_back_to_the_same_reference(text: str) -> None:
    ref = parse_reference(text)
    first = ref.path.split("/")[0]
    # A Hub namespace that looks like a host name cannot be written familiarly: docker
    # has the same ambiguity (`docker.io/foo.bar/x` prints as `foo.bar/x`).
    assume(ref.domain != "docker.io" or not ("." in first or first == "localhost"))

    assert parse_reference(ref.familiar) == ref


@deterministic
@given(references())
def test_docker_hub_references_always_have_a_namespace(text: str) -> None:
    ref = parse_reference(text)
    if ref.domain == "docker.io":
        assert "/" in ref.path
    if ref.domain == "docker.io" and ref.path.startswith("library/") and ref.path.count("/") == 1:
        assert not ref.familiar.startswith("library/")


@deterministic
@given(st.text(max_size=40))
@example("Ab/c")
@example("a" * 64)
@example("[::1]/")
def test_any_text_parses_or_raises_invalid_reference_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as exc:
        error = str(exc)
    else:
        assert parse_reference(str(ref)) == ref
        assert text.isascii()
        return
    assert error.startswith("invalid ")
