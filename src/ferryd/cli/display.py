"""Shows a docker progress stream: live per-layer lines on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO


class StreamError(Exception):
    """The stream ended with an error message."""


def show(messages: Iterable[dict[str, Any]], out: TextIO | None = None) -> dict[str, Any] | None:
    """Print every message; return the last `aux` payload; raise StreamError on an error."""
    out = out or sys.stdout
    if out.isatty():
        return _live(messages, out)
    return _plain(messages, out)


def drain(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read a stream without showing it: its `aux` payloads; raise StreamError on an error."""
    payloads = []
    for message in messages:
        if "error" in message:
            raise StreamError(message["error"])
        if "aux" in message:
            payloads.append(message["aux"])
    return payloads


def _line(message: dict[str, Any]) -> str:
    text = str(message.get("status", ""))
    if message.get("progress"):
        text += " " + message["progress"]
    if message.get("id"):
        text = f"{message['id']}: {text}"
    return text


def _plain(messages: Iterable[dict[str, Any]], out: TextIO) -> dict[str, Any] | None:
    aux = None
    for message in messages:
        if "error" in message:
            raise StreamError(message["error"])
        if "aux" in message:
            aux = message["aux"]
            continue
        if message.get("status") == "Downloading":
            continue  # a log has no use for a bar drawn a hundred times
        out.write(_line(message) + "\n")
        out.flush()
    return aux


def _live(messages: Iterable[dict[str, Any]], out: TextIO) -> dict[str, Any] | None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    console = Console(file=out)
    lines: dict[str, str] = {}
    order: list[str] = []
    aux = None

    def render() -> Group:
        return Group(*(Text(lines[key]) for key in order))

    with Live(render(), console=console, refresh_per_second=10, transient=False) as live:
        for index, message in enumerate(messages):
            if "error" in message:
                live.update(render())
                raise StreamError(message["error"])
            if "aux" in message:
                aux = message["aux"]
                continue
            key = message.get("id") or f"#{index}"
            if key not in lines:
                order.append(key)
            lines[key] = _line(message)
            live.update(render())
    return aux
