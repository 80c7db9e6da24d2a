"""Log lines: JSON objects, failures logged once, and no secrets even in tracebacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from ferryd.daemon import logs
from ferryd.daemon.settings import Settings
from support.daemon import Daemon, errors


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The daemon's log set-up, writing into a string; structlog's configuration and the
    root logger's handlers are put back afterwards, for the tests that follow."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure("info", "json")
    yield out
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


def _fail(password: str) -> None:
    raise RuntimeError("boom")


def test_tracebacks_in_json_logs_carry_no_frame_locals(captured: io.StringIO) -> None:
    for logger in (structlog.get_logger("t").exception, logging.getLogger("lib").exception):
        try:
            _fail(password="hunter2-secret")
        except RuntimeError:
            logger("crashed")

    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["crashed", "crashed"]
    assert all("exception" in line for line in lines)
    assert "hunter2-secret" not in captured.getvalue()


def test_the_settings_repr_hides_a_proxy_password() -> None:
    text = repr(Settings(proxy="http://alice:hunter2@proxy.example:3128"))

    assert "hunter2" not in text
    assert "proxy='http://alice:xxxxx@proxy.example:3128'" in text


def test_a_failed_push_is_one_structured_log_event(daemon: Daemon) -> None:
    messages = list(
        daemon.client().stream("POST", "/images/127.0.0.1:9/nothing/here/push", {"tag": "v1"})
    )

    [error] = errors(messages)
    [event] = daemon.log_events("image.push_failed")
    assert event["reference"] == "127.0.0.1:9/nothing/here:v1"
    assert event["error"] == error
