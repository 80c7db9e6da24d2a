"""The `ferryd` command: `serve` runs the daemon, every other command is a socket client.

Nothing is imported here beyond the standard library's `signal` and `sys`: a SIGHUP
between the start of `ferryd serve` and its daemon's own handler must not end it, and
the CLI's imports take a tenth of a second (see `main`).
"""

import signal
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command of `argv` (default: the process's arguments)."""
    if _command_of(sys.argv[1:] if argv is None else argv) == "serve":
        # SIGHUP's default action ends a process; `ferryd serve` asks for a reload with
        # it (as systemd's ExecReload does), which may come while the CLI is still being
        # imported: ignored from here until `_serve` installs its own handling. Only for
        # `serve`: a client command must still end with the terminal that hangs up.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from ferryd.cli.commands import main as run

    return run(argv)


def _command_of(argv: list[str]) -> str | None:
    """The command word of a command line, as the parser will read it: the first word
    that is not an option nor the value of `-H`/`--host` (which may be abbreviated)."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return next(words, None)
        if word == "-H" or (len(word) > 2 and "--host".startswith(word)):
            next(words, None)  # its value
        elif not word.startswith("-"):
            return word
    return None
