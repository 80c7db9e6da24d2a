"""A progress stream whose client stops reading: what waits for it stays a few lines a
layer, however long the job writes, and what the client is sent keeps each layer's
order."""

from __future__ import annotations

import anyio
import pytest

from ferryd.daemon.api import streaming
from ferryd.daemon.api.streaming import ProgressStream, _Backlog
from ferryd.distribution.progress import Message, ProgressOutput

pytestmark = pytest.mark.anyio


def _downloading(layer: str, current: int) -> Message:
    return Message(status="Downloading", id=layer, current=current, total=1000)


def test_a_layers_progress_update_replaces_the_one_still_waiting() -> None:
    backlog = _Backlog()
    backlog.write(Message(status="Pulling fs layer", id="a"))
    backlog.write(_downloading("a", 1))
    backlog.write(_downloading("b", 1))
    backlog.write(_downloading("a", 2))
    backlog.write(_downloading("b", 2))
    assert backlog.take_nowait() == [
        Message(status="Pulling fs layer", id="a"),
        _downloading("a", 2),
        _downloading("b", 2),
    ]


def test_an_update_after_another_line_of_its_layer_does_not_jump_ahead_of_it() -> None:
    backlog = _Backlog()
    backlog.write(_downloading("a", 1))
    backlog.write(Message(status="Retrying in 1 second", id="a"))
    backlog.write(_downloading("a", 2))
    backlog.write(Message(status="Extracting", id="a", current=5, total=9))
    backlog.write(Message(status="Extracting", id="a", current=9, total=9))
    assert backlog.take_nowait() == [
        _downloading("a", 1),
        Message(status="Retrying in 1 second", id="a"),
        _downloading("a", 2),
        Message(status="Extracting", id="a", current=9, total=9),
    ]


def test_lines_without_a_layer_and_errors_are_never_dropped() -> None:
    backlog = _Backlog()
    for line in ("Pulling from team/app", "Digest: sha256:0", "Status: done"):
        backlog.write(Message(status=line, update=False))
    backlog.write(Message(status="Downloading", id="a", current=1, error="cut"))
    backlog.write(_downloading("a", 2))
    assert len(backlog.take_nowait()) == 5


async def test_a_client_that_stops_reading_leaves_a_few_lines_per_layer_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """100,000 updates of 3 layers written while the client reads nothing: at most a
    few lines wait, and the client that reads again gets the newest of each layer."""
    written = anyio.Event()
    waiting: list[int] = []
    sent: list[bytes] = []
    reading = anyio.Event()
    backlogs: list[_Backlog] = []

    class Watched(_Backlog):
        def __init__(self) -> None:
            super().__init__()
            backlogs.append(self)

    monkeypatch.setattr(streaming, "_Backlog", Watched)

    async def job(output: ProgressOutput) -> None:
        for layer in ("a", "b", "c"):
            output.write(Message(status="Pulling fs layer", id=layer))
        await anyio.sleep(0.05)  # the first send goes out and blocks
        for current in range(100_000):
            for layer in ("a", "b", "c"):
                output.write(_downloading(layer, current))
        waiting.append(len(backlogs[0]._waiting))
        written.set()
        await reading.wait()

    async def receive() -> dict[str, object]:
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))  # type: ignore[arg-type]
            if len(sent) == 1:
                await reading.wait()  # the client reads nothing until the job has written

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ProgressStream(job, anyio.Event()), {}, receive, send)
            await written.wait()
            reading.set()
    assert waiting == [3]
    body = b"".join(sent)
    assert body.count(b'"Downloading"') == 3
    assert b'"current":99999' in body
