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


# A loop's progress (the same message again, or `report(..., step=(done, total))`) is passed on at most this
# often: once the loop moved this much of the context's range AND this many seconds passed since the last
# line. Every report still checks the deadline.
LOOP_MIN_FRACTION = 0.1
LOOP_MIN_SECONDS = 1.0


@dataclass
class _Throttle:
    """What the last passed-on report was; shared by a stage's context and the sub-contexts made from it
    (dataclasses.replace copies the reference), so a step announced by the caller is not repeated by the
    loop it calls."""

    key: str | None = None
    fraction: float = -1.0
    at: float = 0.0


@dataclass
class StageContext:
    """Passed to every stage: which stage it is, the deadline, progress within the stage, and the stage's
    step clock.

    `report(f, msg)` maps the stage-local fraction f in [0, 1] onto the job's overall progress. One line per
    step: a new message is always passed on; a loop's ticks are throttled (see `report`).
    `with ctx.timed("unwrap"):` adds the block's wall seconds to `steps["unwrap"]` (meta.json's
    timings.steps). `sync` (torch.cuda.synchronize on a GPU worker) runs at both ends of a timed block, so
    queued GPU work counts in the step that queued it; steps run in threads beside each other may overlap.
    Copies made with dataclasses.replace (narrower spans) share the same `steps`.
    """

    stage: str
    deadline: Deadline
    progress: ProgressFn = no_progress
    span: tuple[float, float] = (0.0, 1.0)
    throttle: _Throttle = field(default_factory=_Throttle, repr=False, compare=False)
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

    def report(self, fraction: float, message: str, step: tuple[int, int] | None = None) -> None:
        """Progress at `fraction` of this context's range, then the deadline check.

        A loop either repeats the same message or passes `step=(done, total)` (shown as "message done/total").
        The first line of a step is always passed on; a repeat of the last line's message (a loop's tick) only
        when it is the loop's last step (done == total) or once it moved LOOP_MIN_FRACTION of the range and
        LOOP_MIN_SECONDS passed since the last line: a few lines per loop, however many iterations it has.
        """
        lo, hi = self.span
        f = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)  # of the whole job
        gate, now = self.throttle, time.monotonic()
        if message != gate.key or (step is not None and step[0] >= step[1]):
            send = True
        else:  # a loop's tick: how far it moved, as a share of this context's range
            moved = (f - gate.fraction) / (hi - lo) if hi > lo else 1.0
            send = moved >= LOOP_MIN_FRACTION - 1e-9 and now - gate.at >= LOOP_MIN_SECONDS
        if send:
            gate.key, gate.fraction, gate.at = message, f, now
            self.progress(self.stage, f, message if step is None else f"{message} {step[0]}/{step[1]}")
        self.check()
