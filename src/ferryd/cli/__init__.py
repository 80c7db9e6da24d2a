"""The `ferryd` command: `serve` runs the daemon, every other command is a socket client."""

from ferryd.cli.commands import main

__all__ = ["main"]
