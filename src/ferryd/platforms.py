"""Platforms (`os/arch[/variant]`), normalised as containerd does."""

from __future__ import annotations

import platform as _host
from dataclasses import dataclass

from ferryd.errors import FerrydError

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}
# Variants that say nothing beyond the architecture: containerd drops arm64's v8 and
# gives arm v7 when none is written.
_IMPLIED_VARIANT = {"arm64": "v8"}
_DEFAULT_VARIANT = {"arm": "v7"}


class InvalidPlatformError(FerrydError):
    """A platform string that is not `os[/arch[/variant]]`."""


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def matches(self, os: str, architecture: str, variant: str | None) -> bool:
        """Does an index entry's platform satisfy this one?

        A platform asked for without a variant takes any variant of its architecture.
        """
        other = normalize(os, architecture, variant)
        if (other.os, other.architecture) != (self.os, self.architecture):
            return False
        if self.variant is None:
            return True
        return other.variant == self.variant


def normalize(os: str, architecture: str, variant: str | None = None) -> Platform:
    arch = _ARCH_ALIASES.get(architecture.lower(), architecture.lower())
    var = (variant or "").lower() or _DEFAULT_VARIANT.get(arch)
    if var is not None and not var.startswith("v") and arch in ("arm", "arm64"):
        var = "v" + var
    if var == _IMPLIED_VARIANT.get(arch):
        var = None
    return Platform(os.lower(), arch, var)


def parse_platform(text: str) -> Platform:
    """Parse `linux`, `linux/arm64`, `linux/arm/v7`; the OS alone means this host's arch."""
    parts = text.strip().split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise InvalidPlatformError(
            f"invalid platform {text!r}: expected os[/architecture[/variant]], e.g. linux/arm64"
        )
    if len(parts) == 1:
        host = host_platform()
        return Platform(parts[0].lower(), host.architecture, host.variant)
    return normalize(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    """The platform this daemon runs on: linux and the machine's architecture."""
    machine = _host.machine().lower()
    arch = _ARCH_ALIASES.get(machine, machine)
    return Platform("linux", arch, None)
