"""Platforms: parsed and normalised as containerd does, and matched against index entries."""

from __future__ import annotations

import platform as _host

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryd.errors import InvalidPlatformError
from ferryd.oci.platform import (
    Platform,
    host_platform,
    normalize,
    parse_platform,
)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Machine:
    return Machine(monkeypatch)


class Machine:
    """Sets what `platform.machine()` answers, so host-dependent results are fixed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def __call__(self, name: str) -> None:
        self._monkeypatch.setattr(_host, "machine", lambda: name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm64/8", Platform("linux", "arm64")),
        ("linux/arm64/v8.0", Platform("linux", "arm64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/aarch64/v8", Platform("linux", "arm64")),
        ("linux/arm64/v9", Platform("linux", "arm64", "v9")),
        ("linux/arm64/9.0", Platform("linux", "arm64", "v9")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/arm/5", Platform("linux", "arm", "v5")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("linux/386", Platform("linux", "386")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("linux/s390x", Platform("linux", "s390x")),
        ("linux/riscv64", Platform("linux", "riscv64")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("LINUX/ARM64/V8", Platform("linux", "arm64")),
        ("macos/arm64", Platform("darwin", "arm64")),
        ("  linux/arm64  ", Platform("linux", "arm64")),
        # One word that is an architecture means that architecture on linux.
        ("arm64", Platform("linux", "arm64")),
        ("aarch64", Platform("linux", "arm64")),
        ("armhf", Platform("linux", "arm", "v7")),
    ],
)
def test_parse_platform_normalises_like_containerd(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


def test_arm64_with_and_without_v8_are_the_same_platform() -> None:
    assert parse_platform("linux/arm64") == parse_platform("linux/arm64/v8")


def test_the_os_alone_means_this_hosts_architecture(machine: Machine) -> None:
    machine("aarch64")
    assert parse_platform("linux") == Platform("linux", "arm64")
    machine("armv7l")
    assert parse_platform("linux") == Platform("linux", "arm", "v7")
    assert parse_platform("windows") == Platform("windows", "arm", "v7")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "/",
        "linux/",
        "/amd64",
        "linux//v7",
        "linux/arm/v7/extra",
        "linux/arm64/v8/extra",
        "linux/amd 64",
        "linux/amd64\n/v2",
        "linux/amd64;rm",
        "linux/amd64/v*",
        "lin ux",
        "notanos",  # one word that is neither a known OS nor a known architecture
        "linux/ärm64",
    ],
)
def test_malformed_platforms_are_refused(text: str) -> None:
    with pytest.raises(InvalidPlatformError, match="invalid platform"):
        parse_platform(text)


def test_the_error_shows_the_expected_form() -> None:
    with pytest.raises(InvalidPlatformError, match=r"os\[/architecture\[/variant\]\]"):
        parse_platform("a/b/c/d")


@pytest.mark.parametrize(
    ("platform", "text"),
    [
        (Platform("linux", "amd64"), "linux/amd64"),
        (Platform("linux", "arm", "v7"), "linux/arm/v7"),
        (Platform("linux", "arm64", ""), "linux/arm64"),
    ],
)
def test_str_is_os_arch_and_variant(platform: Platform, text: str) -> None:
    assert str(platform) == text


@pytest.mark.parametrize(
    ("os", "arch", "variant", "expected"),
    [
        ("linux", "arm64", "v8", Platform("linux", "arm64")),
        ("linux", "arm64", "", Platform("linux", "arm64")),
        ("linux", "arm64", None, Platform("linux", "arm64")),
        ("linux", "arm", None, Platform("linux", "arm", "v7")),
        ("linux", "arm", "", Platform("linux", "arm", "v7")),
        ("linux", "armhf", "v6", Platform("linux", "arm", "v7")),
        ("linux", "x86_64", None, Platform("linux", "amd64")),
        ("Windows", "AMD64", None, Platform("windows", "amd64")),
        ("unknown", "unknown", None, Platform("unknown", "unknown")),
    ],
)
def test_normalize_index_entry_platforms(
    os: str, arch: str, variant: str | None, expected: Platform
) -> None:
    assert normalize(os, arch, variant) == expected


# Matching: does an index entry (os, architecture, variant) satisfy the platform asked?


@pytest.mark.parametrize(
    ("wanted", "entry"),
    [
        ("linux/amd64", ("linux", "amd64", None)),
        ("linux/amd64", ("linux", "x86_64", None)),
        ("linux/arm64", ("linux", "arm64", "v8")),
        ("linux/arm64", ("linux", "arm64", None)),
        ("linux/arm64", ("linux", "arm", "v8")),  # arm64 runs 32-bit arm
        ("linux/arm64/v9", ("linux", "arm64", None)),  # v9 runs v8 (arm64 without one)
        ("linux/arm64/v8", ("linux", "arm64", None)),
        ("linux/arm64/v8", ("linux", "aarch64", "8")),
        ("linux/arm", ("linux", "arm", "v7")),
        ("linux/arm", ("linux", "arm", None)),  # an arm entry without variant is v7
        ("linux/arm/v7", ("linux", "arm", "")),
        ("linux/arm/v6", ("linux", "arm", "v6")),
        ("linux/arm", ("linux", "arm", "v6")),  # linux/arm is v7, which runs v6
        ("linux/arm/v6", ("linux", "arm", None)),  # no variant named: any, taken last
        ("linux/amd64/v3", ("linux", "amd64", None)),  # v3 runs plain amd64
        ("linux/amd64", ("linux", "386", None)),  # and amd64 runs 386
        ("linux/arm64/v9", ("linux", "arm64", "v9")),
        ("windows/amd64", ("Windows", "amd64", None)),
    ],
)
def test_matches(wanted: str, entry: tuple[str, str, str | None]) -> None:
    assert parse_platform(wanted).matches(*entry)


@pytest.mark.parametrize(
    ("wanted", "entry"),
    [
        ("linux/amd64", ("linux", "arm64", None)),
        ("linux/amd64", ("windows", "amd64", None)),
        ("linux/amd64", ("linux", "amd64", "v3")),  # a newer variant never serves
        ("linux/arm64", ("linux", "arm64", "v9")),
        ("linux/arm64/v8", ("linux", "arm64", "v9")),
        ("linux/arm/v6", ("linux", "arm", "v7")),
        ("linux/amd64", ("unknown", "unknown", None)),
    ],
)
def test_does_not_match(wanted: str, entry: tuple[str, str, str | None]) -> None:
    assert not parse_platform(wanted).matches(*entry)


@pytest.mark.parametrize(
    ("machine_name", "expected"),
    [
        ("x86_64", Platform("linux", "amd64")),
        ("AMD64", Platform("linux", "amd64")),
        ("aarch64", Platform("linux", "arm64")),
        ("arm64", Platform("linux", "arm64")),
        ("armv7l", Platform("linux", "arm", "v7")),
        ("armv6l", Platform("linux", "arm", "v6")),
        ("armv5tel", Platform("linux", "arm", "v5")),
        ("armv8l", Platform("linux", "arm", "v7")),  # 32-bit userland on a 64-bit CPU
        ("i686", Platform("linux", "386")),
        ("ppc64le", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
    ],
)
def test_host_platform_from_the_machine_name(
    machine: Machine, machine_name: str, expected: Platform
) -> None:
    machine(machine_name)
    assert host_platform() == expected


def test_the_host_platform_matches_itself() -> None:
    host = host_platform()
    assert host.matches(host.os, host.architecture, host.variant)
    assert parse_platform(str(host)) == host


_OS_AND_ARCH = ["linux", "windows", "amd64", "x86_64", "arm64", "aarch64", "arm", "armhf", "386"]
_PARTS = st.sampled_from([*_OS_AND_ARCH, "v5", "v6", "v7", "v8", "8", "v9", "v1", "v3", ""])


@settings(derandomize=True, max_examples=300)
@given(st.lists(_PARTS, min_size=1, max_size=4))
def test_parsing_is_idempotent_and_raises_only_invalid_platform_error(parts: list[str]) -> None:
    text = "/".join(parts)
    try:
        platform = parse_platform(text)
    except InvalidPlatformError:
        return
    assert parse_platform(str(platform)) == platform
    assert platform.matches(platform.os, platform.architecture, platform.variant)


@pytest.mark.parametrize(
    ("wanted", "entry", "itself"),
    [
        ("linux/arm64", ("linux", "arm64", None), True),  # arm64 is arm64/v8
        ("linux/arm64/v8", ("linux", "aarch64", "8"), True),
        ("linux/arm", ("linux", "arm", "v7"), True),  # arm is arm/v7
        ("linux/amd64", ("linux", "x86_64", None), True),
        ("linux/arm/v7", ("linux", "arm", "v6"), False),  # runs it, but is not it
        ("linux/arm64", ("linux", "arm", "v8"), False),
        ("linux/amd64", ("linux", "386", None), False),
    ],
)
def test_a_platform_named_for_a_stored_image_takes_itself_only(
    wanted: str, entry: tuple[str, str, str | None], itself: bool
) -> None:
    """What push, save and load take for `--platform`, as docker's (`OnlyStrict`)."""
    assert parse_platform(wanted).is_platform_of(*entry) is itself
