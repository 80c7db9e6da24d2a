"""`ferryd reload [PID]`: make a running daemon read its config again (SIGHUP).

The unit's `ExecReload=` runs `ferryd reload $MAINPID`: a minimal system has no
/bin/kill (procps), and systemd 252 has no Type=notify-reload to send the signal
itself. The daemon answers SIGHUP as always: RELOADING=1, the reload, READY=1, and a
`daemon.reloaded` (or `daemon.reload_failed`) log line. Nothing is printed on success,
so that the journal of the unit stays JSON lines.

Only a `ferryd serve` process is signalled: SIGHUP ends most programs, and PID 1 takes
it as `systemctl daemon-reexec`. Without a PID, the one `ferryd serve` running on the
machine is meant.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ferryd.untrusted import decimal

PROC = Path("/proc")


class ReloadError(Exception):
    """The daemon to reload cannot be found or signalled; the message says why."""


def reload_daemon(pid: str | None, proc: Path = PROC) -> int:
    """Send SIGHUP to the daemon `pid` (or the only one running); its PID."""
    if pid is None:
        target = _the_daemon(proc)
    else:
        # ASCII digits only: "²" is a digit to str.isdigit but not to int(), and int()
        # reads "١٢" as 12, a PID never given.
        number = decimal(pid)
        if not number:
            # An empty $MAINPID: the service has no main process.
            raise ReloadError(f"{pid!r} is not a process ID: give the PID of `ferryd serve`")
        target = number
        command = _command_line(proc, target)
        if command is None:
            raise ReloadError(f"there is no process with PID {target}")
        if not _is_daemon(command):
            shown = " ".join(command)[:200] or "a kernel thread"
            raise ReloadError(
                f"PID {target} is not a ferryd daemon ({shown}); give the PID of `ferryd serve`"
            )
    try:
        os.kill(target, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"the ferryd daemon with PID {target} has exited") from None
    except PermissionError:
        raise ReloadError(
            f"may not signal the ferryd daemon with PID {target}: run this as root or as "
            "the daemon's user"
        ) from None
    return target


def _the_daemon(proc: Path) -> int:
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        command = _command_line(proc, int(entry.name))
        if command is not None and _is_daemon(command):
            found.append(int(entry.name))
    if not found:
        raise ReloadError("no ferryd daemon (`ferryd serve`) is running on this machine")
    if len(found) > 1:
        pids = ", ".join(str(pid) for pid in sorted(found))
        raise ReloadError(f"several ferryd daemons are running (PIDs {pids}): name the one")
    return found[0]


def _command_line(proc: Path, pid: int) -> list[str] | None:
    """The arguments of process `pid`, or None when there is no such process."""
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    except OSError:
        return []  # there, but not ours to read: not one we can say is ferryd
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_daemon(command: list[str]) -> bool:
    """`…/ferryd [-H HOST] serve …`, or `python -m ferryd serve …`."""
    for index, arg in enumerate(command):
        if Path(arg).name != "ferryd":
            continue
        rest = iter(command[index + 1 :])
        for word in rest:
            if word in ("-H", "--host"):
                next(rest, None)
            elif not word.startswith("-"):
                return word == "serve"
        return False
    return False
