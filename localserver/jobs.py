"""The job queue of the local server: RunPod's job states, FIFO order, one child process per worker slot,
hard time limits, cancel, retention, and a SQLite table that survives a restart.

Each slot is a thread of the server that supervises one long-lived worker process (localserver.worker): it
hands the process one job at a time, relays its progress, and ends the job whatever the process does:

  - the process returns a result                     -> COMPLETED / FAILED (TIMED_OUT past MAX_SECONDS)
  - the process dies (native crash, kill -9, OOM)    -> FAILED naming how it died; the process is restarted
  - cancel                                           -> CANCELLED at once; the process is asked to stop and is
                                                        killed if it has not within `cancel_grace` seconds
  - policy.executionTimeout passes                   -> TIMED_OUT at once; killed after `grace_seconds`
  - MAX_SECONDS + `grace_seconds` pass, no result    -> TIMED_OUT; the process is killed
  - the server shuts down while the job runs         -> FAILED after `drain_seconds`; the process is killed

Every job that does not end COMPLETED has its storage folder settled (localserver.bundles): what it had
uploaded is removed and error.json is left. A job that fails by itself is settled before its state is
published; a cancelled or timed-out one is published at once and settled when its process has stopped. It knows nothing about HTTP; `localserver.app` does.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from localserver.bundles import settle_safely
from localserver.store import JobStore, Row
from localserver.worker import WorkerDied
from utils.storage import Storage, job_prefix

log = logging.getLogger("serve.jobs")

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})


class QueueFull(Exception):
    """The queue holds max_queue jobs already."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new jobs."""


class Worker(Protocol):
    """What a slot needs from its process (localserver.worker.WorkerProcess)."""

    info: dict[str, Any]
    pid: int | None

    def start(self) -> None: ...
    def wait_ready(self, timeout: float) -> dict[str, Any]: ...
    def send(self, message: tuple) -> None: ...
    def recv(self, timeout: float) -> tuple | None: ...
    def kill(self) -> None: ...
    def stop(self, timeout: float = 3.0) -> None: ...


@dataclass
class _Live:
    """A running job's in-memory state (progress is not worth a disk write per update)."""

    id: str
    prefix: str
    slot: int
    progress: dict[str, Any] | None = None
    stop_reason: str | None = None  # the state the job was ended with while its process still ran


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


@dataclass
class _Slot:
    state: str = "starting"  # starting | idle | running | failed
    pid: int | None = None
    error: str | None = None
    job: str | None = None


class JobQueue:
    def __init__(
        self,
        store: JobStore,
        worker_factory: Callable[[int], Worker],
        *,
        storage: Storage | None,
        workers: int = 1,
        keep_seconds: float = 3600.0,
        max_queue: int = 100,
        max_seconds: float = 180.0,
        grace_seconds: float = 10.0,
        cancel_grace: float = 1.0,
        start_timeout: float = 600.0,
        settle_retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._store = store
        self._factory = worker_factory
        self._storage = storage
        self._workers = workers
        self._keep = keep_seconds
        self._max_queue = max_queue
        self._max_seconds = max_seconds
        self._grace = grace_seconds
        self._cancel_grace = cancel_grace
        self._start_timeout = start_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._live: dict[str, _Live] = {}
        self._slots = [_Slot() for _ in range(workers)]
        self._ready = threading.Event()
        self._counts = {COMPLETED: 0, FAILED: 0, CANCELLED: 0, TIMED_OUT: 0}
        self._restarts = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._last_sweep = 0.0
        self._settle_retry = settle_retry_seconds
        self._pending: dict[str, tuple[str, str, str, float]] = {}  # folders whose settling failed; retried
        self._janitor: threading.Thread | None = None
        self.storage_state: dict[str, Any] = {"kind": storage.kind if storage else None, "ok": True}
        self.gpu: dict[str, Any] | None = None
        self._queued = store.count(IN_QUEUE)
        self._recovered = self._recover()

    # ------------------------------------------------------------ lifecycle
    def _recover(self) -> list[Row]:
        """Jobs the last server left IN_PROGRESS (it was killed, or crashed) end FAILED; their folders are
        settled once start() runs. Queued jobs stay queued, in order."""
        rows = self._store.with_status(IN_PROGRESS)
        for row in rows:
            self._store.finish(row.id, FAILED, self._clock(),
                               error="the server stopped while the job was running; submit it again")
        if rows or self._queued:
            log.info("job database %s: %d queued job(s) kept, %d interrupted job(s) marked FAILED",
                     self._store.path, self._queued, len(rows))
        return rows

    def start(self) -> None:
        for n in range(self._workers):
            thread = threading.Thread(target=self._slot_loop, args=(n,), name=f"serve-slot-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self._recovered:
            threading.Thread(target=self._settle_recovered, name="serve-recover", daemon=True).start()

    def _settle_recovered(self) -> None:
        for row in self._recovered:
            self._settle(row.id, row.prefix, "job", row.error or "the server stopped while the job was running",
                         0.0)

    def wait_ready(self, timeout: float) -> None:
        """Block until every slot has a worker process ready; raise WorkerDied with the first failure."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cond:
                failed = [s for s in self._slots if s.state == "failed"]
                if failed:
                    raise WorkerDied(failed[0].error or "the worker process failed to start")
                if all(s.state != "starting" for s in self._slots):
                    return
                self._cond.wait(0.2)
        raise WorkerDied(f"the worker processes did not start within {timeout:g} s")

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Take no new jobs; let running jobs finish for `drain_seconds`, then fail them (their processes are
        killed and their folders settled). Queued jobs stay in the database for the next start."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            end = time.monotonic() + drain_seconds
            while self._live and time.monotonic() < end:
                self._cond.wait(0.1)
            for live in list(self._live.values()):
                self._end_live(live, FAILED, error=f"the server shut down while the job was running "
                                                  f"(it waited {drain_seconds:g} s for it); submit it again")
        for thread in self._threads:
            thread.join(self._cancel_grace + 15.0)

    # ------------------------------------------------------------ API
    def submit(self, job_input: Any, *, output_prefix: str | None = None,
               execution_timeout: float | None = None) -> JobView:
        job_id = str(uuid.uuid4())
        prefix = job_prefix(output_prefix, job_id)
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._sweep()
            if self._queued >= self._max_queue:
                raise QueueFull(f"the queue is full ({self._max_queue} jobs waiting); retry later")
            self._store.add(job_id, job_input, prefix=prefix, execution_timeout=execution_timeout,
                            submitted=self._clock())
            self._queued += 1
            self._cond.notify_all()
            return self._view_locked(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> JobView | None:
        with self._cond:
            self._sweep()
            return self._view_locked(job_id)

    def wait(self, job_id: str, timeout: float) -> JobView | None:
        """Block (a thread) until the job ends or `timeout` seconds pass. The app polls get() instead."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                view = self._view_locked(job_id)
                if view is None or view.status in TERMINAL or time.monotonic() >= end:
                    return view
                self._cond.wait(min(end - time.monotonic(), 0.5))

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued job at once, or a running one (its process is stopped within `cancel_grace` s)."""
        with self._cond:
            row = self._store.get(job_id)
            if row is None:
                return None
            if row.status == IN_QUEUE:
                self._store.finish(job_id, CANCELLED, self._clock())
                self._queued -= 1
                self._counts[CANCELLED] += 1
            elif row.status == IN_PROGRESS and job_id in self._live:
                self._end_live(self._live[job_id], CANCELLED)
            return self._view_locked(job_id)

    def purge_queue(self) -> int:
        """Cancel every job still waiting; running jobs go on (RunPod's /purge-queue)."""
        with self._cond:
            rows = self._store.with_status(IN_QUEUE)
            for row in rows:
                self._store.finish(row.id, CANCELLED, self._clock())
                self._counts[CANCELLED] += 1
            self._queued = 0
            return len(rows)

    def health(self) -> dict[str, Any]:
        """RunPod's /health shape (`completed` and `failed` count since the server started), plus the worker
        processes, storage and GPU state."""
        with self._cond:
            self._sweep()
            running = sum(1 for s in self._slots if s.state == "running")
            return {
                "jobs": {
                    "completed": self._counts[COMPLETED],
                    "failed": self._counts[FAILED] + self._counts[TIMED_OUT],
                    "inProgress": len(self._live),
                    "inQueue": self._queued,
                    "retried": 0,
                },
                "workers": {
                    "idle": sum(1 for s in self._slots if s.state == "idle"),
                    "running": running,
                    "starting": sum(1 for s in self._slots if s.state in ("starting", "failed")),
                    "restarts": self._restarts,
                    "processes": [{"pid": s.pid, "state": s.state, "job": s.job} for s in self._slots],
                },
                "storage": dict(self.storage_state),
                "gpu": self.gpu,
            }

    # ------------------------------------------------------------ slots
    def _set_slot(self, n: int, state: str, **fields: Any) -> None:
        with self._cond:
            slot = self._slots[n]
            slot.state = state
            for name, value in fields.items():
                setattr(slot, name, value)
            self._cond.notify_all()

    def _slot_loop(self, n: int) -> None:
        worker: Worker | None = None
        failures = 0
        while True:
            if worker is None:
                with self._cond:
                    if self._stopping:
                        return
                self._set_slot(n, "starting", pid=None)
                worker = self._factory(n)
                try:
                    worker.start()
                    info = worker.wait_ready(self._start_timeout)
                except WorkerDied as exc:
                    failures += 1
                    log.error("worker %d: %s", n, exc)
                    self._set_slot(n, "failed", error=str(exc))
                    worker = None
                    time.sleep(min(2.0 * failures, 30.0))
                    continue
                failures = 0
                with self._cond:
                    self.gpu = self.gpu or info.get("gpu")
                self._set_slot(n, "idle", pid=worker.pid, error=None)
                log.info("worker %d ready (pid %s, %s)", n, worker.pid, (info.get("gpu") or {}).get("device"))
            row = self._claim(n)
            if row is None:
                worker.stop()
                return
            try:
                keep = self._run(n, worker, row)
            except Exception:  # noqa: BLE001 - a bug here must not end the slot
                log.exception("worker %d: supervising job %s failed", n, row.id)
                keep = False
            if not keep:
                worker.kill()
                worker = None
                with self._cond:
                    self._restarts += 1
            else:
                self._set_slot(n, "idle")

    def _claim(self, n: int) -> Row | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                if self._queued > 0:
                    rows = self._store.with_status(IN_QUEUE, limit=1)
                    if rows:
                        row = rows[0]
                        self._store.start(row.id, self._clock())
                        self._queued -= 1
                        self._live[row.id] = _Live(id=row.id, prefix=row.prefix, slot=n)
                        self._slots[n].state = "running"
                        self._slots[n].job = row.id
                        self._cond.notify_all()
                        return row
                    self._queued = 0
                self._cond.wait(1.0)

    def _run(self, n: int, worker: Worker, row: Row) -> bool:
        """Run one job on the slot's process; True when the process may take the next job."""
        live = self._live[row.id]
        started = time.monotonic()
        hard_end = started + self._max_seconds + self._grace
        timeout_at = None if row.execution_timeout is None else started + row.execution_timeout
        kill_at: float | None = None
        result: dict[str, Any] | None = None
        death: str | None = None
        with self._cond:
            job_input = self._store.input_of(row.id)
        try:
            worker.send(("job", row.id, job_input))
            while True:
                message = worker.recv(0.1)
                if message is not None:
                    if message[0] == "progress" and message[1] == row.id:
                        with self._cond:
                            live.progress = {"stage": message[2], "progress": message[3], "message": message[4]}
                    elif message[0] == "result" and message[1] == row.id:
                        result = message[2]
                        break
                    continue
                now = time.monotonic()
                with self._cond:
                    if timeout_at is not None and now >= timeout_at and live.stop_reason is None:
                        self._end_live(live, TIMED_OUT, error=f"the job ran past its executionTimeout of "
                                                             f"{row.execution_timeout:g} s and was stopped")
                    if now >= hard_end and live.stop_reason is None:
                        self._end_live(live, TIMED_OUT, error=(
                            f"the job ran past its time cap of {self._max_seconds:g} s (MAX_SECONDS) and did not "
                            f"stop within {self._grace:g} s more; its process was killed"))
                        kill_at = now
                    stop = live.stop_reason
                if stop is not None and kill_at is None:
                    worker.send(("cancel", row.id))
                    kill_at = now + (self._cancel_grace if stop == CANCELLED else self._grace)
                    if stop == FAILED:  # shutting down
                        kill_at = now + self._cancel_grace
                if kill_at is not None and now >= kill_at:
                    worker.kill()
                    death = "killed"
                    break
        except WorkerDied as exc:
            death = str(exc)
        seconds = time.monotonic() - started
        stage = (live.progress or {}).get("stage", "job")
        settled = False
        with self._cond:
            ending: tuple[str, dict[str, Any] | None, str | None] | None = None
            if live.stop_reason is None:
                if death is not None:
                    error = (f"{stage}: the job's worker process crashed ({death}); the worker was restarted. "
                             "The job may have hit a bug in native code; submit it again or change its settings")
                    log.error("worker %d (pid %s): job %s: %s", n, worker.pid, row.id, error)
                    ending = (FAILED, None, error)
                else:
                    ending = self._classify(result, seconds)
                if ending[0] == COMPLETED:
                    self._end_live(live, COMPLETED, output=ending[1])
                    ending = None
        if ending is not None:
            # A job that failed by itself is published only once its folder holds error.json alone, so a
            # client that sees FAILED never sees a half-settled folder.
            self._settle(row.id, row.prefix, stage, ending[2] or ending[0], seconds)
            settled = True
        with self._cond:
            if ending is not None:
                self._end_live(live, ending[0], output=ending[1], error=ending[2])
            status = live.stop_reason
            error = self._store.get(row.id).error if self._store.get(row.id) else None  # type: ignore[union-attr]
            del self._live[row.id]
            self._slots[n].job = None
            self._cond.notify_all()
        if status != COMPLETED and not settled:
            self._settle(row.id, row.prefix, stage, error or status, seconds)
        return death is None

    def _classify(self, result: Any, seconds: float) -> tuple[str, dict[str, Any] | None, str | None]:
        if not isinstance(result, dict):
            return FAILED, None, "the handler returned no result object"
        error = result.get("error")
        if error is None:
            return COMPLETED, result, None
        if "time cap" in str(error) and seconds >= self._max_seconds - 1.0:
            return TIMED_OUT, None, str(error)
        return FAILED, None, str(error)

    def _end_live(self, live: _Live, status: str, *, output: dict[str, Any] | None = None,
                  error: str | None = None) -> None:
        # Caller holds the lock. The first end stands: a late result does not overwrite a cancel.
        if live.stop_reason is not None:
            return
        live.stop_reason = status
        live.progress = None
        self._store.finish(live.id, status, self._clock(), output=output, error=error)
        self._counts[status] += 1
        self._cond.notify_all()

    def _settle(self, job_id: str, prefix: str, stage: str, message: str, seconds: float) -> None:
        """Settle a job's folder now; when the storage fails (a hung or unreachable endpoint), keep it pending:
        the janitor thread retries every `settle_retry_seconds` until it works."""
        if self._storage is None:
            return
        problem = settle_safely(self._storage, prefix, job_id=job_id, stage=stage, message=message, seconds=seconds)
        with self._cond:
            if problem is None:
                if not self._pending:
                    self.storage_state = {"kind": self._storage.kind, "ok": True}
                return
            log.error("job %s: could not settle its storage folder %s (will retry): %s", job_id, prefix, problem)
            self.storage_state = {"kind": self._storage.kind, "ok": False, "error": problem, "job": job_id}
            self._pending[job_id] = (prefix, stage, message, seconds)
            if self._janitor is None:
                self._janitor = threading.Thread(target=self._retry_pending, name="serve-janitor", daemon=True)
                self._janitor.start()

    def _retry_pending(self) -> None:
        while True:
            time.sleep(self._settle_retry)
            with self._cond:
                pending = list(self._pending.items())
                if self._stopping and not pending:
                    return
            for job_id, (prefix, stage, message, seconds) in pending:
                with self._cond:
                    self._pending.pop(job_id, None)
                self._settle(job_id, prefix, stage, message, seconds)

    # ------------------------------------------------------------ views
    def _sweep(self) -> None:
        # Caller holds the lock. Forget finished jobs older than the retention time (at most once a second).
        now = self._clock()
        if abs(now - self._last_sweep) < 1.0:
            return
        self._last_sweep = now
        self._store.expire(now - self._keep)

    def _view_locked(self, job_id: str) -> JobView | None:
        row = self._store.get(job_id)
        if row is None:
            return None
        now = self._clock()
        started = row.started if row.started is not None else (row.finished or now)
        execution = 0.0 if row.started is None else (row.finished or now) - row.started
        live = self._live.get(job_id)
        progress = None if live is None or row.status != IN_PROGRESS or live.progress is None else dict(live.progress)
        return JobView(
            id=row.id,
            status=row.status,
            delay_seconds=max(started - row.submitted, 0.0),
            execution_seconds=max(execution, 0.0),
            progress=progress,
            output=row.output,
            error=row.error,
        )
