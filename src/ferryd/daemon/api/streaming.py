"""A response that streams docker's JSON progress messages while a job runs.

The job runs in the response's own task group: when the client disconnects, the job
is cancelled (and with it this client's hold on any shared transfer). When the daemon's
shutdown grace period runs out, the job is cancelled too, and the client is told why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import msgspec
import structlog
from starlette.types import Receive, Scope, Send

from ferryd.concurrency import single_errors
from ferryd.distribution.progress import Message, ProgressOutput
from ferryd.errors import FerrydError

log = structlog.get_logger("ferryd.api")

Job = Callable[[ProgressOutput], Awaitable[None]]

# Seconds a message waits for others to share its send: the 24-layer pull's ~50 sends
# (each a pass through the middleware and a write that wakes the client) became ~14,
# ~2 ms less daemon CPU per pull. Nobody sees 10 ms, and "Downloading" updates come at
# most every 100 ms anyway; the job's last messages go at once.
_GATHER = 0.01


class ProgressStream:
    """An ASGI response: 200, then one JSON message per line until the job ends.

    As dockerd: a job that fails before it has said anything (no such manifest, login
    refused) is answered with an HTTP error status and `{"message": …}` instead, which
    clients such as docker-py turn into their own exceptions.
    """

    def __init__(self, job: Job, deadline: anyio.Event) -> None:
        self._job = job
        self._deadline = deadline  # set when running jobs must stop (shutdown)
        self._failure: FerrydError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        backlog = _Backlog()
        started = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
            tg.start_soon(self._run, backlog)
            while messages := await backlog.take():
                first = messages[0]
                if not started and first.error is not None and self._failure is not None:
                    await _send_error(send, self._failure.status, first.error)
                    tg.cancel_scope.cancel()
                    return
                if not started:
                    await _start(send)
                    started = True
                # What arrives within _GATHER goes in the same send (the job's end
                # sends at once): a pull of many small layers writes hundreds of
                # messages, and each send costs the loop (and wakes the client).
                with anyio.move_on_after(_GATHER):
                    await backlog.ended.wait()
                messages += backlog.take_nowait()
                body = b"".join(_line(m) for m in messages)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if not started:
                await _start(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    async def _run(self, backlog: _Backlog) -> None:
        try:
            await self._job_with_errors(backlog)
        finally:
            backlog.end()

    async def _job_with_errors(self, output: ProgressOutput) -> None:
        try:
            cut_short: list[bool] = []
            with single_errors():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when_set, self._deadline, tg.cancel_scope, cut_short)
                    await self._job(output)
                    tg.cancel_scope.cancel()
            if cut_short:
                output.write(
                    Message(error="ferryd is shutting down; run the command again to resume")
                )
        except FerrydError as exc:
            self._failure = exc
            output.write(Message(error=str(exc)))
        except Exception as exc:  # a bug: tell the client, keep the daemon
            log.exception("api.job_crashed")
            output.write(Message(error=f"internal error: {exc!r}"))


class _Backlog:
    """The job's messages that the client has not been sent yet (the job's output: a
    write never waits, so a slow client cannot slow a transfer).

    A client that stops reading leaves them waiting for as long as it keeps its
    connection: a progress update of a layer replaces the one before it when nothing of
    that layer has been written since (the client would draw the newer bar over it), so
    what waits is a few lines per layer, not ten updates a second per layer for as long
    as the pull runs.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, Message] = {}  # in the order written
        self._newest: dict[str, int] = {}  # a layer's last message waiting
        self._count = 0
        self._more = anyio.Event()
        self.ended = anyio.Event()  # the job has written its last message

    def write(self, message: Message) -> None:
        if self.ended.is_set():
            return
        layer = message.id
        if layer is not None:
            newest = self._newest.get(layer)
            if newest is not None and _replaces(message, self._waiting[newest]):
                self._waiting[newest] = message
                return
            self._newest[layer] = self._count
        self._waiting[self._count] = message
        self._count += 1
        self._more.set()

    def end(self) -> None:
        self.ended.set()
        self._more.set()

    async def take(self) -> list[Message]:
        """The messages waiting, once there is one; [] once the job has ended and all
        have been taken."""
        while not self._waiting and not self.ended.is_set():
            await self._more.wait()
            self._more = anyio.Event()
        return self.take_nowait()

    def take_nowait(self) -> list[Message]:
        taken = list(self._waiting.values())
        self._waiting.clear()
        self._newest.clear()
        return taken


def _replaces(message: Message, waiting: Message) -> bool:
    """Whether `message` makes `waiting` (the same layer's) of no use: both a progress
    update ("Downloading", "Extracting", "Pushing" with a size) of the same status."""
    return (
        message.current is not None
        and waiting.current is not None
        and message.status == waiting.status
        and message.error is None
        and waiting.error is None
    )


def _line(message: Message) -> bytes:
    return msgspec.json.encode(message.to_json()) + b"\r\n"


async def _start(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )


async def _send_error(send: Send, status: int, message: str) -> None:
    body = msgspec.json.encode({"message": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _cancel_when_set(
    event: anyio.Event, scope: anyio.CancelScope, cut_short: list[bool]
) -> None:
    """Cancel the job once `event` is set, and say so (a job that ended in time
    cancels this waiter instead, and nothing is said)."""
    await event.wait()
    cut_short.append(True)
    scope.cancel()


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel `scope` when the client goes away: nobody is left to answer."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
