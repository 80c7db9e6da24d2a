"""Pulls and pushes as jobs, visible from the moment they are asked for.

A transfer shows only once a layer moves; a pull waiting on a slow registry for its
token or manifest would be invisible. A job is registered when the request arrives,
says which phase it is in (resolving, manifest, layers, committing; following, when it
shows an identical pull's progress), and watches its
own progress stream to know its layers and how far each has got.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import structlog

from ferryd.distribution.progress import Message, ProgressOutput

# "following": an identical pull runs already; this one shows its progress and result.
Phase = Literal["resolving", "manifest", "layers", "committing", "following"]

_ids = itertools.count(1)


@dataclass
class LayerState:
    status: str
    current: int | None = None
    total: int | None = None


@dataclass(eq=False)
class Job:
    action: str  # pull, push
    reference: str
    output: ProgressOutput  # where the job's progress goes (the client)
    id: str = field(default_factory=lambda: f"job-{next(_ids)}")
    request_id: str | None = field(
        default_factory=lambda: structlog.contextvars.get_contextvars().get("request_id")
    )
    phase: Phase = "resolving"
    started: float = field(default_factory=time.time)
    layers: dict[str, LayerState] = field(default_factory=dict)

    def write(self, message: Message) -> None:
        """A ProgressOutput: note what a layer message says, then pass it on."""
        # Layer states are docker's progress updates; "Pulling from TAG" is not one.
        if message.id is not None and message.update and message.error is None:
            layer = self.layers.get(message.id)
            if layer is None:
                layer = self.layers[message.id] = LayerState(message.status)
            layer.status = message.status
            if message.current is not None:
                layer.current, layer.total = message.current, message.total
        self.output.write(message)


class JobBoard:
    """The jobs running now."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    @contextmanager
    def track(self, action: str, reference: str, output: ProgressOutput) -> Iterator[Job]:
        job = Job(action, reference, output)
        self._jobs[job.id] = job
        try:
            yield job
        finally:
            del self._jobs[job.id]

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda job: job.started)

    def count(self, action: str) -> int:
        return sum(job.action == action for job in self._jobs.values())
