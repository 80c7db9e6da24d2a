"""structlog set-up (JSON lines for journald, or console) and the image event logger."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Literal

import anyio
import structlog
import structlog.tracebacks

from ferryd.errors import FerrydError

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_TRACEBACKS: dict[str, structlog.typing.Processor] = {
    # Without frame locals: they hold settings, credentials and tokens.
    "json": structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    ),
    "console": structlog.processors.format_exc_info,
}


def configure(level: str = "info", fmt: Literal["json", "console"] = "json") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    tracebacks = _TRACEBACKS[fmt]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        # Not cached: a reload may change the level, and loggers are module globals.
        cache_logger_on_first_use=False,
    )
    _capture_stdlib_logging(level, tracebacks, renderer)


_events = structlog.get_logger("ferryd.distribution.events")


def log_image_event(image_id: str, name: str, action: str, **fields: object) -> None:
    """The seed's ImageEventLogger: one structured event per image action."""
    _events.info(f"image.{action}", action=action, image_id=image_id, reference=name, **fields)


def _capture_stdlib_logging(
    level: str, tracebacks: structlog.typing.Processor, renderer: structlog.typing.Processor
) -> None:
    """Libraries (uvicorn, httpx) log through `logging`: render them as ours, so every
    line on stdout is one JSON object in JSON mode."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Library chatter (httpx logs every request at info) only at warning and above.
    root.setLevel(max(_LEVELS[level], logging.WARNING))


@contextlib.contextmanager
def failure_logged(action: str, reference: str) -> Iterator[None]:
    """One `image.<action>_failed` line when the block fails or is cancelled (the client
    left, the daemon stopped); the exception goes on."""
    started = time.monotonic()

    def failed(error: str) -> None:
        _events.warning(
            f"image.{action}_failed",
            action=action,
            reference=reference,
            error=error,
            seconds=round(time.monotonic() - started, 3),
        )

    try:
        yield
    except FerrydError as exc:
        failed(str(exc))
        raise
    except anyio.get_cancelled_exc_class():
        failed("cancelled")
        raise
