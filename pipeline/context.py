"""What every stage receives besides its data: the deadline and the progress sink."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def no_sync() -> None:
    """The clock's default device barrier: nothing to wait for on the CPU."""


@dataclass
class StageContext:
    """Passed to every stage: which stage it is, the deadline, progress within the stage, and the stage's
    step clock.

    `report(f, msg)` maps the stage-local fraction f in [0, 1] onto the job's overall progress.
    `with ctx.timed("unwrap"):` adds the block's wall seconds to `steps["unwrap"]` (meta.json's
    timings.steps). `sync` (torch.cuda.synchronize on a GPU worker) runs at both ends of a timed block, so
    queued GPU work counts in the step that queued it; steps run in threads beside each other may overlap.
    Copies made with dataclasses.replace (narrower spans) share the same `steps`.
    """

    stage: str
    deadline: Deadline
    progress: ProgressFn = no_progress
    span: tuple[float, float] = (0.0, 1.0)
    steps: dict[str, float] = field(default_factory=dict)
    sync: Callable[[], None] = no_sync

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        self.sync()
        started = time.monotonic()
        try:
            yield
        finally:
            self.sync()
            self.steps[step] = round(self.steps.get(step, 0.0) + time.monotonic() - started, 4)

    def check(self) -> None:
        self.deadline.check(self.stage)

    def report(self, fraction: float, message: str) -> None:
        lo, hi = self.span
        f = min(max(fraction, 0.0), 1.0)
        self.progress(self.stage, lo + (hi - lo) * f, message)
        self.check()
