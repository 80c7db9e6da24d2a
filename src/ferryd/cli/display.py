"""Shows a docker progress stream: live per-layer lines on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from ferryd.cli.client import CutAnswer


class StreamError(Exception):
    """The stream ended with an error message."""


def show(messages: Iterable[dict[str, Any]], out: TextIO | None = None) -> dict[str, Any] | None:
    """Print every message; return the last `aux` payload; raise StreamError on an error."""
    out = out or sys.stdout
    if out.isatty():
        return _live(_checked(messages), out)
    return _plain(_checked(messages), out)


def drain(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Read a stream without showing it: its `aux` payloads; raise StreamError on an error."""
    payloads = []
    for message in _checked(messages):
        if "error" in message:
            raise StreamError(str(message["error"]))
        if "aux" in message:
            payloads.append(_aux(message))
    return payloads


def _checked(messages: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`messages`, each a JSON object: `Client.stream` yields nothing else, but these
    functions take any caller's stream, and a list or a number has no fields to show."""
    for message in messages:
        if not isinstance(message, dict):
            raise StreamError(_malformed(f"a message is not a JSON object: {message!r:.80}"))
        yield message


def _aux(message: dict[str, Any]) -> dict[str, Any]:
    """The `aux` payload of `message`: callers read its fields (a push's `Digest`)."""
    aux = message["aux"]
    if not isinstance(aux, dict):
        raise StreamError(_malformed(f"an aux is not a JSON object: {aux!r:.80}"))
    return aux


def _malformed(problem: str) -> str:
    return f"the daemon's progress stream is malformed: {problem}"


def finished(
    messages: Iterable[dict[str, Any]], is_last: Callable[[dict[str, Any]], bool], cut: str
) -> Iterator[dict[str, Any]]:
    """Pass `messages` on, and raise StreamError(`cut`) if they end before the one that
    says the work is done (`is_last`): a daemon killed mid-pull, or a connection cut,
    ends the stream early without an error (or cut, as `Client.stream` tells), and must
    not look like a success."""
    last: dict[str, Any] | None = None
    try:
        for message in _checked(messages):
            last = message
            yield message
    except CutAnswer:
        raise StreamError(cut) from None
    if last is None or not is_last(last):
        raise StreamError(cut)


def pull_done(message: dict[str, Any]) -> bool:
    """A pull's stream ends with `Status: Downloaded newer image for …` (or `Image is up
    to date`)."""
    return str(message.get("status", "")).startswith("Status: ")


def push_done(message: dict[str, Any]) -> bool:
    """A push's stream ends with the aux `{Tag, Digest, Size}` of its last tag. A push of
    a repository sends one per tag, and nothing after the last says how many there were
    (dockerd's neither; docker's CLI reads to the end of the answer): that the aux was
    the last is known from the stream's clean end, which `Client.stream` checks (a
    daemon killed between two tags cuts the answer before its last chunk)."""
    return "aux" in message


def _line(message: dict[str, Any]) -> str:
    text = str(message.get("status", ""))
    if message.get("progress"):
        text += f" {message['progress']}"
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
            raise StreamError(str(message["error"]))
        if "aux" in message:
            aux = _aux(message)
            continue
        layer = str(message.get("id") or "")
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
                raise StreamError(str(message["error"]))
            if "aux" in message:
                aux = _aux(message)
                continue
            key = str(message.get("id") or f"#{index}")
            if key not in lines:
                order.append(key)
            lines[key] = _line(message)
            live.update(render())
    return aux
