"""One worker slot's child process: the models load once in it, jobs run in it, and whatever a job does to it
(a native crash, a hang, running out of memory) ends that process, not the server.

The server never imports torch or touches CUDA; each child is started with multiprocessing's 'spawn' context
(a fresh interpreter, no inherited locks or CUDA state) and talks to the server over a Pipe:

  server -> child   ("job", job_id, input)   ("cancel", job_id)   ("stop",)
  child -> server   ("ready", info)   ("failed", message)   ("progress", job_id, stage, fraction, message)
                    ("result", job_id, result)

`info` is {"pid", "device", "gpu"}: the GPU state for /health comes from the process that uses the GPU.
A child whose server goes away (even kill -9) sees its pipe close and exits at once.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("serve.worker")

_CTX = multiprocessing.get_context("spawn")


class WorkerDied(RuntimeError):
    """The child process ended (or its pipe broke); the message says how."""


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGKILL to this process when the server process ends, however it ends.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _gpu_info(services: Any) -> dict[str, Any]:
    device = services.models.device if services.models is not None else "cpu"
    info: dict[str, Any] = {"device": device}
    if str(device).startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        free, total = torch.cuda.mem_get_info(index)
        info.update(name=torch.cuda.get_device_name(index), free_bytes=int(free), total_bytes=int(total))
    return info


def child_main(conn: Connection, slot: int, log_level: str) -> None:
    """Entry point of a worker process (runs in the child)."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the server decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker-{slot} %(name)s: %(message)s",
                        stream=sys.stdout)
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (OSError, ValueError):
                os._exit(0)  # the server is gone

    try:
        import handler  # the worker's entry point: same validation, pipeline and storage as on RunPod
        from utils.selfcheck import check_gpu, cuda_probe

        services = handler.get_services()
        problems = check_gpu(services.settings, cuda_probe)
        if problems:
            raise RuntimeError("; ".join(p.message for p in problems))
        info = {"pid": os.getpid(), "gpu": _gpu_info(services)}
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which refuses to start
        send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    send(("ready", info))

    jobs: queue.Queue[tuple | None] = queue.Queue()
    current: dict[str, threading.Event] = {}

    def read() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the server went away: nothing to report the job to
            if message[0] == "job":
                current.clear()
                current[message[1]] = threading.Event()
                jobs.put(message)
            elif message[0] == "cancel":
                event = current.get(message[1])
                if event is not None:
                    event.set()
            elif message[0] == "stop":
                jobs.put(None)

    threading.Thread(target=read, name="worker-pipe", daemon=True).start()
    while True:
        message = jobs.get()
        if message is None:
            return
        _, job_id, job_input = message

        def progress(stage: str, fraction: float, text: str, job_id: str = job_id) -> None:
            send(("progress", job_id, stage, round(float(fraction), 3), text))

        try:
            result = handler.run_job(job_id, job_input, progress=progress, cancel=current.get(job_id))
        except BaseException as exc:  # noqa: BLE001 - run_job promises not to raise; report it if it does
            result = {"error": f"internal error: {type(exc).__name__}: {exc}"}
        send(("result", job_id, result))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "its pipe closed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"it was killed by {name}"
    return f"it exited with status {code}"


class WorkerProcess:
    """The server's handle on one child: start, send, receive with a timeout, kill."""

    def __init__(self, slot: int, *, log_level: str = "INFO") -> None:
        self.slot = slot
        self.log_level = log_level
        self.process: Any = None
        self.conn: Connection | None = None
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        parent, child = _CTX.Pipe(duplex=True)
        self.process = _CTX.Process(target=child_main, args=(child, self.slot, self.log_level),
                                    name=f"serve-worker-{self.slot}", daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Block until the child has loaded everything; raise WorkerDied with its reason otherwise."""
        end = time.monotonic() + timeout
        while True:
            message = self.recv(max(end - time.monotonic(), 0.0))
            if message is None:
                if time.monotonic() >= end:
                    self.kill()
                    raise WorkerDied(f"the worker process did not start within {timeout:g} s")
                continue
            if message[0] == "ready":
                self.info = dict(message[1])
                return self.info
            if message[0] == "failed":
                self.kill()
                raise WorkerDied(f"the worker process could not start: {message[1]}")

    def send(self, message: tuple) -> None:
        assert self.conn is not None
        try:
            self.conn.send(message)
        except (OSError, ValueError) as exc:
            raise WorkerDied(self._death()) from exc

    def recv(self, timeout: float) -> tuple | None:
        """The next message, or None after `timeout` seconds; WorkerDied when the child is gone."""
        assert self.conn is not None
        try:
            if not self.conn.poll(timeout):
                if not self.process.is_alive():
                    raise WorkerDied(self._death())
                return None
            return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerDied(self._death()) from exc

    def _death(self) -> str:
        if self.process is not None:
            self.process.join(2.0)
            return describe_exit(self.process.exitcode)
        return "it was never started"

    def kill(self) -> None:
        """SIGKILL the child and reap it (a no-op when it is already gone)."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
        if self.process is not None:
            self.process.join(5.0)
        if self.conn is not None:
            self.conn.close()

    def stop(self, timeout: float = 3.0) -> None:
        """Ask an idle child to exit; kill it if it does not."""
        if self.process is None:
            return
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        self.kill()
