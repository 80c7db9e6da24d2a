"""A process's CPU seconds, to the microsecond where the machine allows.

/proc/PID/stat counts in clock ticks (10 ms): a 24-layer pull's ~0.2 CPU s reads as
0.19 or 0.20, which per layer is a step of 0.4 ms. A cgroup counts the CPU of every
thread in it, threads that have ended too, in nanoseconds (cgroup v1's cpuacct.usage)
or microseconds (cgroup v2's cpu.stat, present whatever controllers are enabled). So
for a measurement the process is moved into a cgroup of its own, and back where it was
afterwards; where no cgroup can be made (no permission, no such hierarchy), the ticks.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

TICKS = os.sysconf("SC_CLK_TCK")
_V1 = Path("/sys/fs/cgroup/cpuacct")


def ticks_seconds(pid: int) -> float:
    """user + sys CPU seconds of every thread of `pid` so far, in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuClock:
    """`with CpuClock(pid) as clock:` … `clock.seconds()` … — `pid`'s CPU seconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.source = "ticks"  # or "cgroup v1", "cgroup v2"
        self._group: Path | None = None
        self._home: Path | None = None  # the cgroup the process came from

    def __enter__(self) -> CpuClock:
        for source, home in self._homes():
            group = home / f"ferryd-bench-{self.pid}"
            try:
                group.mkdir(exist_ok=True)
                (group / "cgroup.procs").write_text(f"{self.pid}\n")
            except OSError:
                with contextlib.suppress(OSError):
                    group.rmdir()
                continue
            self.source, self._group, self._home = source, group, home
            break
        return self

    def seconds(self) -> float:
        if self._group is None:
            return ticks_seconds(self.pid)
        if self.source == "cgroup v1":
            return int((self._group / "cpuacct.usage").read_text()) / 1e9
        for line in (self._group / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise RuntimeError(f"{self._group}/cpu.stat has no usage_usec")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._group is None or self._home is None:
            return
        with contextlib.suppress(OSError):  # it has ended: nothing to move back
            (self._home / "cgroup.procs").write_text(f"{self.pid}\n")
        with contextlib.suppress(OSError):
            self._group.rmdir()

    def _homes(self) -> list[tuple[str, Path]]:
        """The cgroups the process is in that count CPU: v1's cpuacct, then v2's."""
        homes: list[tuple[str, Path]] = []
        try:
            lines = Path(f"/proc/{self.pid}/cgroup").read_text().splitlines()
        except OSError:
            return homes
        v2_root = Path("/sys/fs/cgroup")
        if not (v2_root / "cgroup.controllers").exists():
            v2_root = v2_root / "unified"  # a hybrid layout
        for line in lines:
            _, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            if "cpuacct" in controllers.split(",") and _V1.is_dir():
                homes.insert(0, ("cgroup v1", _V1 / relative))
            elif controllers == "" and (v2_root / "cgroup.controllers").exists():
                homes.append(("cgroup v2", v2_root / relative))
        return homes
