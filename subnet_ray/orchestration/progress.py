"""Step progress of a long stage as one short line with an ETA, throttled for a remote display.

Stages count steps (fine-tuning), languages searched (pruning) or examples sketched (influence).

A Tune trial runs in a worker; its driver shows only what the trial reports. `StepProgress` turns
(done, total) step counts into 'epoch 2/4, step 120/626 (19%), ETA 3m05s' at most every `interval`
seconds and hands the line to a sink (the trial's report to the driver). No Ray here.
"""
from __future__ import annotations

import time
from typing import Callable


def eta_text(seconds: float) -> str:
    """Returns a duration as '1h02m', '3m05s' or '42s'."""
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StepProgress:
    """Callable with (done, total, epoch, epochs): sends a progress line to `sink` at most every `interval` s,
    and always at the last step."""

    def __init__(self, label: str, sink: Callable[[str], None], interval: float = 5.0, clock=time.monotonic,
                 unit: str = "step"):
        self.label, self.sink, self.interval, self.clock, self.unit = label, sink, interval, clock, unit
        self.t0: float | None = None
        self.first = 0
        self.last_sent = float("-inf")

    def line(self, done: int, total: int, epoch: int | None = None, epochs: int | None = None) -> str:
        """Returns the progress line for `done` of `total` steps (ETA from the rate since the first call)."""
        now = self.clock()
        if self.t0 is None:
            self.t0, self.first = now, done
        rate = (done - self.first) / (now - self.t0) if now > self.t0 and done > self.first else None
        eta = f", ETA {eta_text((total - done) / rate)}" if rate else ""
        where = f"epoch {epoch}/{epochs}, " if epoch is not None else ""
        return f"{self.label}: {where}{self.unit} {done}/{total} ({100 * done // max(total, 1)}%){eta}"

    def __call__(self, done: int, total: int, epoch: int | None = None, epochs: int | None = None) -> None:
        text = self.line(done, total, epoch, epochs)
        now = self.clock()
        if now - self.last_sent >= self.interval or done >= total:
            self.last_sent = now
            self.sink(text)
