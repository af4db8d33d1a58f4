"""An in-process stand-in for serve.py's worker process (localserver.worker.WorkerProcess), for fast tests of
JobQueue's supervision: the job's input says what the "process" does.

  {"behave": "ok"}            result after `seconds` (default 0): a COMPLETED job with a meta.json
  {"behave": "fail"}          an error result, with error.json written as the pipeline would
  {"behave": "crash"}         writes model.glb, then "dies" (recv raises WorkerDied: killed by SIGABRT)
  {"behave": "hang"}          writes model.glb, then ignores everything until killed
"""
from __future__ import annotations

import itertools
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from localserver.worker import WorkerDied

_PIDS = itertools.count(10_000)


class FakeWorker:
    def __init__(self, slot: int, root: Path) -> None:
        self.slot = slot
        self.root = root
        self.info: dict[str, Any] = {}
        self.pid: int | None = None
        self.killed = threading.Event()
        self._out: queue.Queue[tuple] = queue.Queue()
        self._cancel = threading.Event()
        self._death: str | None = None

    def start(self) -> None:
        self.pid = next(_PIDS)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        self.info = {"pid": self.pid, "gpu": {"device": "cpu"}}
        return self.info

    def send(self, message: tuple) -> None:
        if self._death is not None:
            raise WorkerDied(self._death)
        if message[0] == "job":
            threading.Thread(target=self._run, args=message[1:], daemon=True).start()
        elif message[0] == "cancel":
            self._cancel.set()

    def _write(self, job_id: str, name: str, body: bytes = b"x") -> None:
        path = self.root / job_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def _run(self, job_id: str, job_input: dict[str, Any]) -> None:
        behave = job_input.get("behave", "ok")
        self._out.put(("progress", job_id, "mesh", 0.3, "working"))
        if behave in ("crash", "hang"):
            self._write(job_id, "model.glb")
            if behave == "crash":
                self._death = "it was killed by SIGABRT"
                return
            self.killed.wait()
            return
        end = time.monotonic() + float(job_input.get("seconds", 0))
        while time.monotonic() < end:
            if self._cancel.wait(0.01):
                self._write(job_id, "error.json", b"{}")
                self._out.put(("result", job_id, {"error": "mesh: the job was cancelled"}))
                return
        if behave == "fail":
            self._write(job_id, "error.json", b"{}")
            self._out.put(("result", job_id, {"error": "mesh: no surface found"}))
        else:
            self._write(job_id, "model.glb")
            self._write(job_id, "meta.json", json.dumps({"job_id": job_id}).encode())
            self._out.put(("result", job_id, {"job_id": job_id, "glb_url": "x", "meta_url": "y"}))

    def recv(self, timeout: float) -> tuple | None:
        try:
            return self._out.get(timeout=timeout)
        except queue.Empty:
            if self._death is not None:
                raise WorkerDied(self._death) from None
            return None

    def kill(self) -> None:
        self._death = self._death or "it was killed by SIGKILL"
        self.killed.set()

    def stop(self, timeout: float = 3.0) -> None:
        self.kill()
