"""structlog set-up: JSON lines for journald, or console; library logs rendered as ours."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Literal

import structlog
import structlog.tracebacks
from urllib3.exceptions import InsecureRequestWarning

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
    # urllib3 (small blobs, registry/blocking.py) would print a warning to stderr at every
    # request to a registry whose certificate is not checked: an insecure registry, the
    # operator's choice, of which httpx says nothing either.
    warnings.filterwarnings("ignore", category=InsecureRequestWarning)


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
    # Library chatter (httpx logs every request at info) only at warning and above,
    # unless asked for debug; httpcore's per-read lines even then stay out.
    root.setLevel(_LEVELS[level] if level == "debug" else max(_LEVELS[level], logging.WARNING))
    logging.getLogger("httpcore").setLevel(logging.INFO)
