"""The job queue of the local server: RunPod's job states, FIFO order, worker threads, cancel, retention.

It knows nothing about HTTP; `localserver.app` turns its snapshots into RunPod's response shapes.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.context import ProgressFn

log = logging.getLogger("serve.jobs")

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


class RunJobFn(Protocol):
    """handler.run_job: returns the contract's result or {"error": str}; never raises for a job failure."""

    def __call__(
        self, job_id: str, job_input: Any, *, progress: ProgressFn | None = None, cancel: threading.Event | None = None
    ) -> dict[str, Any]: ...


@dataclass
class _Job:
    id: str
    input: Any
    submitted: float
    execution_timeout: float | None  # seconds; past it the job is TIMED_OUT (RunPod's policy.executionTimeout)
    status: str = IN_QUEUE
    started: float | None = None
    finished: float | None = None
    progress: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class JobView:
    """A consistent copy of one job, taken under the queue's lock."""

    id: str
    status: str
    delay_seconds: float  # queued time (so far)
    execution_seconds: float  # running time (so far)
    progress: dict[str, Any] | None
    output: dict[str, Any] | None
    error: str | None


class JobQueue:
    """Jobs run in submission order on `workers` threads; one job per worker at a time.

    Finished jobs are kept `keep_seconds` after they end, then forgotten (status answers 404).
    """

    def __init__(
        self,
        run_job: RunJobFn,
        *,
        workers: int = 1,
        keep_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._run_job = run_job
        self._workers = workers
        self._keep = keep_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._jobs: dict[str, _Job] = {}
        self._busy = 0
        self._counts = {COMPLETED: 0, FAILED: 0, CANCELLED: 0, TIMED_OUT: 0}
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for n in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"serve-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything still queued or running and wait for the workers to return."""
        with self._cond:
            self._stopping = True
            for job in list(self._queue):
                self._end(job, CANCELLED, error="the server shut down before the job started")
            self._queue.clear()
            for job in self._jobs.values():
                if job.status == IN_PROGRESS:
                    job.cancel.set()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------ API
    def submit(self, job_input: Any, *, execution_timeout: float | None = None) -> JobView:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._sweep()
            job = _Job(id=str(uuid.uuid4()), input=job_input, submitted=self._clock(),
                       execution_timeout=execution_timeout)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._cond.notify()
            return self._view(job)

    def get(self, job_id: str) -> JobView | None:
        with self._cond:
            self._sweep()
            job = self._jobs.get(job_id)
            return None if job is None else self._view(job)

    def wait(self, job_id: str, timeout: float) -> JobView | None:
        """Block until the job ends or `timeout` seconds pass; return its state then."""
        end = self._clock() + timeout
        with self._cond:
            while True:
                job = self._jobs.get(job_id)
                if job is None or job.status in TERMINAL:
                    break
                left = end - self._clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            return None if job is None else self._view(job)

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued job at once, or a running one (its handler stops at the next deadline check)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == IN_QUEUE:
                self._queue.remove(job)
                self._end(job, CANCELLED)
            elif job.status == IN_PROGRESS:
                job.cancel.set()
                self._end(job, CANCELLED)
            return self._view(job)

    def purge_queue(self) -> int:
        """Cancel every job still waiting; running jobs go on (RunPod's /purge-queue)."""
        with self._cond:
            removed = list(self._queue)
            self._queue.clear()
            for job in removed:
                self._end(job, CANCELLED)
            return len(removed)

    def health(self) -> dict[str, dict[str, int]]:
        """RunPod's /health shape. `completed` and `failed` count since the server started."""
        with self._cond:
            self._sweep()
            in_progress = sum(1 for job in self._jobs.values() if job.status == IN_PROGRESS)
            return {
                "jobs": {
                    "completed": self._counts[COMPLETED],
                    "failed": self._counts[FAILED] + self._counts[TIMED_OUT],
                    "inProgress": in_progress,
                    "inQueue": len(self._queue),
                    "retried": 0,
                },
                "workers": {"idle": self._workers - self._busy, "running": self._busy},
            }

    # ------------------------------------------------------------ internals
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.status = IN_PROGRESS
                job.started = self._clock()
                self._busy += 1
                self._cond.notify_all()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        timer: threading.Timer | None = None
        if job.execution_timeout is not None:
            timer = threading.Timer(job.execution_timeout, self._time_out, args=(job,))
            timer.daemon = True
            timer.start()

        def progress(stage: str, fraction: float, message: str) -> None:
            with self._cond:
                if job.status == IN_PROGRESS:
                    job.progress = {"stage": stage, "progress": round(float(fraction), 3), "message": message}

        try:
            result = self._run_job(job.id, job.input, progress=progress, cancel=job.cancel)
        except Exception as exc:  # run_job promises not to raise; a bug there must not kill the worker thread
            log.exception("job %s crashed the handler", job.id)
            result = {"error": f"internal error: {type(exc).__name__}: {exc}"}
        finally:
            if timer is not None:
                timer.cancel()
        with self._cond:
            if job.status != IN_PROGRESS:  # cancelled or timed out meanwhile: that state stands
                return
            error = result.get("error") if isinstance(result, dict) else "the handler returned no result object"
            if error is not None:
                self._end(job, FAILED, error=str(error))
            else:
                self._end(job, COMPLETED, output=result)

    def _time_out(self, job: _Job) -> None:
        with self._cond:
            if job.status != IN_PROGRESS:
                return
            job.cancel.set()
            self._end(job, TIMED_OUT,
                      error=f"the job ran past its executionTimeout of {job.execution_timeout:g} s and was stopped")

    def _end(self, job: _Job, status: str, *, output: dict[str, Any] | None = None, error: str | None = None) -> None:
        # Caller holds the lock.
        job.status = status
        job.finished = self._clock()
        job.output = output
        job.error = error
        job.progress = None
        job.input = None  # the picture can be megabytes; a finished job no longer needs it
        self._counts[status] += 1
        self._cond.notify_all()

    def _sweep(self) -> None:
        # Caller holds the lock. Forget finished jobs older than the retention time.
        now = self._clock()
        expired = [jid for jid, job in self._jobs.items()
                   if job.finished is not None and now - job.finished > self._keep]
        for jid in expired:
            del self._jobs[jid]

    def _view(self, job: _Job) -> JobView:
        now = self._clock()
        started = job.started if job.started is not None else (job.finished or now)
        delay = started - job.submitted
        execution = 0.0 if job.started is None else (job.finished or now) - job.started
        return JobView(
            id=job.id,
            status=job.status,
            delay_seconds=max(delay, 0.0),
            execution_seconds=max(execution, 0.0),
            progress=None if job.progress is None else dict(job.progress),
            output=job.output,
            error=job.error,
        )
