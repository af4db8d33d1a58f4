"""What every stage receives besides its data: the deadline and the progress sink."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.errors import JobCancelled, JobTimeout

ProgressFn = Callable[[str, float, str], None]
"""progress(stage, fraction in [0, 1] of the whole job, message)."""


def no_progress(stage: str, fraction: float, message: str) -> None:
    """A progress sink that drops everything (library use, tests)."""


@dataclass
class Deadline:
    """The job's time cap and cancel flag.

    Stages call `check()` between steps and inside every long loop; it raises
    JobTimeout past the cap and JobCancelled once `cancel()` was called.
    """

    seconds: float
    started: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return self.remaining() <= 0 or self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def check(self, stage: str) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled("the job was cancelled", stage=stage)
        if self.remaining() <= 0:
            raise JobTimeout(
                f"the job ran past its time cap of {self.seconds:g} s (MAX_SECONDS); "
                "lower target_faces or texture_size, or raise MAX_SECONDS",
                stage=stage,
            )


@dataclass
class StageContext:
    """Passed to every stage: which stage it is, the deadline, and progress within the stage.

    `report(f, msg)` maps the stage-local fraction f in [0, 1] onto the job's overall progress.
    """

    stage: str
    deadline: Deadline
    progress: ProgressFn = no_progress
    span: tuple[float, float] = (0.0, 1.0)

    def check(self) -> None:
        self.deadline.check(self.stage)

    def report(self, fraction: float, message: str) -> None:
        lo, hi = self.span
        f = min(max(fraction, 0.0), 1.0)
        self.progress(self.stage, lo + (hi - lo) * f, message)
        self.check()
