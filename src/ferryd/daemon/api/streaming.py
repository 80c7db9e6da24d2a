"""A response that streams docker's JSON progress messages while a job runs.

The job runs in the response's own task group: when the client disconnects, the job
is cancelled (and with it this client's hold on any shared transfer). When the daemon's
shutdown grace period runs out, the job is cancelled too, and the client is told why.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import anyio
import msgspec
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.types import Receive, Scope, Send

from ferryd.concurrency import single_errors
from ferryd.distribution.progress import Message, ProgressOutput, StreamOutput
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
        sender, messages = anyio.create_memory_object_stream[Message](math.inf)
        ended = anyio.Event()  # the job has written its last message
        started = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
            tg.start_soon(self._run, sender, ended)
            async with messages:
                async for message in messages:
                    if not started and message.error is not None and self._failure is not None:
                        await _send_error(send, self._failure.status, message.error)
                        tg.cancel_scope.cancel()
                        return
                    if not started:
                        await _start(send)
                        started = True
                    # What arrives within _GATHER goes in the same send (the job's end
                    # sends at once): a pull of many small layers writes hundreds of
                    # messages, and each send costs the loop (and wakes the client).
                    with anyio.move_on_after(_GATHER):
                        await ended.wait()
                    body = _line(message) + b"".join(_line(m) for m in _queued(messages))
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            if not started:
                await _start(send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    async def _run(self, sender: anyio.abc.ObjectSendStream[Message], ended: anyio.Event) -> None:
        try:
            await self._job_with_errors(sender)
        finally:
            ended.set()

    async def _job_with_errors(self, sender: anyio.abc.ObjectSendStream[Message]) -> None:
        async with sender:
            output = StreamOutput(sender)  # type: ignore[arg-type]
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


def _line(message: Message) -> bytes:
    return msgspec.json.encode(message.to_json()) + b"\r\n"


def _queued(messages: MemoryObjectReceiveStream[Message]) -> list[Message]:
    """The messages waiting in `messages` now, without waiting for more."""
    waiting: list[Message] = []
    while True:
        try:
            waiting.append(messages.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            return waiting


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
