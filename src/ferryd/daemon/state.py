"""What the daemon knows about itself while it runs: its settings (swapped on reload),
its event hub, its metrics, when it started, and whether running jobs must stop now."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio

from ferryd.daemon.looplag import LoopLag
from ferryd.daemon.settings import Settings
from ferryd.distribution.events import EventHub
from ferryd.metrics import Metrics


@dataclass
class DaemonState:
    settings: Settings
    events: EventHub = field(default_factory=EventHub)
    # GET /metrics; the transfer managers and the image service count into it too.
    metrics: Metrics = field(default_factory=Metrics)
    loop_lag: LoopLag = field(default_factory=LoopLag)
    started: float = field(default_factory=time.time)
    # Set when the shutdown grace period is over: running pulls and pushes stop.
    stop_jobs: anyio.Event = field(default_factory=anyio.Event)
