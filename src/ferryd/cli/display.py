"""Shows a docker progress stream: live per-layer lines on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
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


def finished(
    messages: Iterable[dict[str, Any]], is_last: Callable[[dict[str, Any]], bool], cut: str
) -> Iterator[dict[str, Any]]:
    """Pass `messages` on, and raise StreamError(`cut`) if they end before the one that
    says the work is done (`is_last`): a daemon killed mid-pull, or a connection cut,
    ends the stream early without an error, and must not look like a success."""
    last: dict[str, Any] | None = None
    for message in messages:
        last = message
        yield message
    if last is None or not is_last(last):
        raise StreamError(cut)


def pull_done(message: dict[str, Any]) -> bool:
    """A pull's stream ends with `Status: Downloaded newer image for …` (or `Image is up
    to date`)."""
    return str(message.get("status", "")).startswith("Status: ")


def push_done(message: dict[str, Any]) -> bool:
    """A push's stream ends with the aux `{Tag, Digest, Size}` of its (last) tag."""
    return "aux" in message


def _line(message: dict[str, Any]) -> str:
    text = str(message.get("status", ""))
    if message.get("progress"):
        text += " " + message["progress"]
    if message.get("id"):
        text = f"{message['id']}: {text}"
    return text


def _plain(messages: Iterable[dict[str, Any]], out: TextIO) -> dict[str, Any] | None:
    """One line per state change of each layer (Waiting, Downloading, Pushing, Pushed…):
    a log has no use for a bar drawn a hundred times, nor for a retry's countdown."""
    aux = None
    states: dict[str, str] = {}
    for message in messages:
        if "error" in message:
            raise StreamError(message["error"])
        if "aux" in message:
            aux = message["aux"]
            continue
        layer = message.get("id")
        if layer:
            state = _state(str(message.get("status", "")))
            if states.get(layer) == state:
                continue
            states[layer] = state
        out.write(_line({**message, "progress": None}) + "\n")
        out.flush()
    return aux


def _state(status: str) -> str:
    """`Retrying in 4 seconds` and `Retrying in 3 seconds` are one state."""
    return "Retrying" if status.startswith("Retrying in ") else status


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
