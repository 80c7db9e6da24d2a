"""Platforms (`os/arch[/variant]`), normalised as containerd does."""

from __future__ import annotations

import functools
import platform as _host
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ferryd.errors import InvalidPlatformError, PlatformNotFoundError

_OS_ALIASES = {"macos": "darwin"}
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "i686": "386",
}
# Names that fix the variant as well as the architecture (containerd's NormalizeArch).
_ARCH_WITH_VARIANT = {"armhf": ("arm", "v7"), "armel": ("arm", "v6")}
# Variants that say nothing beyond the architecture, so they are dropped: arm64 is v8
# unless told otherwise, amd64 is v1.
_IMPLIED_VARIANT = {"arm64": ("v8", "v8.0"), "amd64": ("v1",)}
# Spellings of a variant containerd rewrites.
_VARIANT_ALIASES = {"arm64": {"v9.0": "v9", "9.0": "v9"}}
# 32-bit arm means v7 when no variant is written.
_DEFAULT_VARIANT = {"arm": "v7"}
# What containerd takes for an OS or an architecture when the platform is one word.
_KNOWN_OS = frozenset(
    [
        "aix",
        "android",
        "darwin",
        "dragonfly",
        "freebsd",
        "hurd",
        "illumos",
        "ios",
        "js",
        "linux",
        "nacl",
        "netbsd",
        "openbsd",
        "plan9",
        "solaris",
        "windows",
        "zos",
    ]
)
_KNOWN_ARCH = frozenset(
    [
        "386",
        "amd64",
        "amd64p32",
        "arm",
        "armbe",
        "arm64",
        "arm64be",
        "ppc64",
        "ppc64le",
        "loong64",
        "mips",
        "mipsle",
        "mips64",
        "mips64le",
        "mips64p32",
        "mips64p32le",
        "ppc",
        "riscv",
        "riscv64",
        "s390",
        "s390x",
        "sparc",
        "sparc64",
        "wasm",
    ]
)
_PART = re.compile(r"[A-Za-z0-9_.-]+")
_ARM_MACHINE = re.compile(r"armv(\d+)")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def matches(self, os: str, architecture: str, variant: str | None) -> bool:
        """Does an image of platform (os, architecture, variant), an index entry's or a
        config's, serve this one? See `preference`."""
        return self.preference(os, architecture, variant) is not None

    def is_platform_of(self, os: str, architecture: str, variant: str | None) -> bool:
        """Is (os, architecture, variant) this platform itself, once both are normalised
        (arm64 is arm64/v8, arm is arm/v7)? What docker takes for a stored image named
        with `--platform` (containerd's `platforms.OnlyStrict`: push, save, load), where
        a pull takes the older platforms this one runs too (`matches`)."""
        return normalize(os, architecture, variant) == normalize(
            self.os, self.architecture, self.variant
        )

    def preference(self, os: str, architecture: str, variant: str | None) -> int | None:
        """How well an image of platform (os, architecture, variant) serves this one: 0
        is this platform itself, a higher number an older one it runs too (containerd's
        `platforms.Only`: arm/v7 takes v6 then v5, arm64 takes 32-bit arm, amd64/v3
        takes v2, v1, then 386); None when it does not serve it.

        An image that names no variant (a plain `arm` entry or config, from tools that
        wrote none) is taken last for any variant of its architecture, as dockerd takes
        it (moby's legacy arm fallback and `OnlyPlatformWithFallback`). A variant above
        the one asked for never serves it: `linux/amd64` does not take amd64/v3.
        """
        other = normalize(os, architecture, variant)
        order = _serving_order(normalize(self.os, self.architecture, self.variant))
        if other in order:
            return order.index(other)
        # `armhf` and `armel` name their variant in the architecture.
        if (
            not variant
            and architecture.lower() not in _ARCH_WITH_VARIANT
            and (other.os, other.architecture) == (self.os, self.architecture)
        ):
            return len(order)
        return None


def normalize(os: str, architecture: str, variant: str | None = None) -> Platform:
    """containerd's Normalize: `x86_64` → amd64, `aarch64/v8` → arm64, `arm` → arm/v7."""
    os = os.lower()
    os = _OS_ALIASES.get(os, os)
    arch = architecture.lower()
    var: str | None = (variant or "").lower() or None
    if arch in _ARCH_WITH_VARIANT:
        arch, var = _ARCH_WITH_VARIANT[arch]
    arch = _ARCH_ALIASES.get(arch, arch)
    if var is not None and arch in ("arm", "arm64") and var[0].isdigit():
        var = "v" + var
    if var is not None:
        var = _VARIANT_ALIASES.get(arch, {}).get(var, var)
    if var is None:
        var = _DEFAULT_VARIANT.get(arch)
    if var in _IMPLIED_VARIANT.get(arch, ()):
        var = None
    return Platform(os, arch, var)


@functools.cache
def _serving_order(wanted: Platform) -> tuple[Platform, ...]:
    """`wanted` (normalised), then the platforms whose images it runs as well, best
    first: the order containerd's `platformVector` gives."""
    os, arch, variant = wanted.os, wanted.architecture, wanted.variant
    order = [wanted]
    if arch == "amd64":
        # x86-64 micro-architecture levels run the lower ones' code, and 32-bit x86's.
        level = _variant_number(variant) or 1
        order += [normalize(os, arch, f"v{n}") for n in range(level - 1, 0, -1)]
        order.append(normalize(os, "386"))
    elif arch == "arm":
        level = _variant_number(variant) or 0
        order += [normalize(os, arch, f"v{n}") for n in range(level - 1, 4, -1)]
    elif arch == "arm64":
        order += _arm64_fallbacks(os, variant or "v8")
    return tuple(dict.fromkeys(order))


def _arm64_fallbacks(os: str, variant: str) -> list[Platform]:
    """What an arm64 CPU of `variant` (v8, v8.2, v9.1) runs besides its own images: the
    earlier minor versions of its major, then 32-bit arm."""
    order: list[Platform] = []
    major_text, _, minor_text = variant.removeprefix("v").partition(".")
    if major_text.isdigit() and int(major_text) >= 8:
        major = int(major_text)
        minor = int(minor_text) if minor_text.isdigit() else 0
        if major == 9:
            order += [normalize(os, "arm64", f"v9.{n}") for n in range(minor - 1, -1, -1)]
            # v9.0 branched from v8.5, each v9.x then keeping up with v8.(x+5) up to v8.9.
            major, minor = 8, min(minor + 5, 9)
            order.append(normalize(os, "arm64", f"v8.{minor}"))
        order += [normalize(os, "arm64", f"v{major}.{n}") for n in range(minor - 1, -1, -1)]
    # Then 32-bit arm code: from arm/v8 for any v8.x or v9.x, from arm/vN for a bare vN
    # (containerd's choice, kept so both pick the same image).
    arm = "v8" if variant.startswith(("v8.", "v9.")) else variant
    return order + list(_serving_order(normalize(os, "arm", arm)))


def _variant_number(variant: str | None) -> int | None:
    digits = (variant or "").removeprefix("v")
    return int(digits) if digits.isdigit() else None


def check_platform(
    name: str,
    wanted: Sequence[Platform],
    os: str,
    architecture: str,
    variant: str | None,
    *,
    strict: bool = False,
) -> None:
    """Refuse the image `name` gives when its platform (os, architecture, variant) is
    none of `wanted` (empty: any will do), in dockerd's words: a PlatformNotFoundError.
    `strict`: only the platform itself will do (`Platform.is_platform_of`), not an older
    one it runs."""
    if not wanted or any(
        platform.is_platform_of(os, architecture, variant)
        if strict
        else platform.matches(os, architecture, variant)
        for platform in wanted
    ):
        return
    actual = normalize(os, architecture, variant)
    raise PlatformNotFoundError(
        f"image with reference {name} was found but does not match the specified "
        f"platform: wanted {', '.join(map(str, wanted))}, actual: {actual}"
    )


def platform_of_parts(os: str, architecture: str, variant: str | None, *, given: str) -> Platform:
    """A platform given in parts (dockerd's JSON `platform`: `given`), each part checked
    as `parse_platform` checks the parts of `os/arch/variant`: they reach messages, logs
    and registries."""
    for part in (os, architecture, variant):
        if part is not None and not _PART.fullmatch(part):
            raise InvalidPlatformError(
                f"invalid platform {given!r}: {part!r} is not an os, architecture or variant"
            )
    return normalize(os, architecture, variant)


def parse_platform(text: str) -> Platform:
    """Parse `linux`, `linux/arm64`, `linux/arm/v7`; the OS alone means this host's arch.

    One word that is an architecture (`arm64`) means that architecture on linux.
    """
    parts = text.strip().split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.fullmatch(part) for part in parts):
        raise InvalidPlatformError(
            f"invalid platform {text!r}: expected os[/architecture[/variant]], e.g. linux/arm64"
        )
    if len(parts) == 1:
        word = parts[0].lower()
        if _OS_ALIASES.get(word, word) in _KNOWN_OS:
            host = host_platform()
            return Platform(_OS_ALIASES.get(word, word), host.architecture, host.variant)
        arch_only = normalize("linux", word)
        if arch_only.architecture in _KNOWN_ARCH:
            return arch_only
        raise InvalidPlatformError(
            f"invalid platform {text!r}: unknown operating system or architecture"
        )
    return normalize(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    """The platform this daemon runs on: linux and the machine's architecture."""
    machine = _host.machine().lower()
    arm = _ARM_MACHINE.match(machine)
    if arm is not None:
        # armv7l, armv6l: 32-bit arm. A 32-bit userland on a v8 CPU (armv8l) runs v7.
        return normalize("linux", "arm", "v" + str(min(int(arm.group(1)), 7)))
    return normalize("linux", machine)
