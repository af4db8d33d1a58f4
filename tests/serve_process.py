"""Run `serve.py` in a subprocess on a free loopback port, for the server and addon tests."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tests.helpers import REPO

START_SECONDS = 120.0  # importing the worker (torch) on a busy 2-core CI machine


@dataclass
class ServeProcess:
    url: str  # http://127.0.0.1:<port>
    token: str | None
    log_path: Path
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2/test-endpoint"

    def call(self, method: str, path: str, body: Any = None, *, token: str | None = "default",
             headers: Mapping[str, str] = (), timeout: float = 30.0) -> tuple[int, Any]:
        """(HTTP status, parsed JSON or raw bytes) of `path`: a full URL, '/files/...' under the server, or a
        route under the endpoint ('/run', '/status/<id>', ...)."""
        if path.startswith("http"):
            url = path
        elif path.startswith("/files/"):
            url = self.url + path
        else:
            url = self.endpoint + path
        headers = {"Content-Type": "application/json", **dict(headers)}
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        try:
            with urlopen(Request(url, data=data, headers=headers, method=method), timeout=timeout) as response:
                raw, status = response.read(), response.status
        except HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(tmp: Path, extra: Mapping[str, str] = ()) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("S3_BUCKET", "BUCKET_NAME", "STORAGE", "SERVE_TOKEN"):
        env.pop(name, None)
    env.update({
        "HF_HUB_OFFLINE": "1",
        "STORAGE": "local",
        "LOCAL_OUTPUT_DIR": str(tmp / "outputs"),
        "MODELS_DIR": str(tmp / "models"),
        "MAX_SECONDS": "120",
        "PRELOAD_MODELS": "",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.update(dict(extra))
    return env


@contextmanager
def running_server(tmp: Path, *, env: Mapping[str, str] = (), token: str | None = None,
                   args: tuple[str, ...] = (), port: int | None = None) -> Iterator[ServeProcess]:
    """Start serve.py, wait until /health answers, stop it (SIGTERM, then SIGKILL) on exit.
    Its job database is `tmp`/jobs.sqlite3 unless `args` name another --db (a restart in the same `tmp`
    finds the jobs the last server left)."""
    server = start_server(tmp, env=env, token=token, args=args, port=port)
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_server(server)


def start_server(tmp: Path, *, env: Mapping[str, str] = (), token: str | None = None,
                 args: tuple[str, ...] = (), port: int | None = None) -> ServeProcess:
    port = port or free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"serve-{port}.log"
    command = [sys.executable, str(REPO / "serve.py"), "--host", "127.0.0.1", "--port", str(port), *args]
    if "--db" not in args:
        command += ["--db", str(tmp / "jobs.sqlite3")]
    if token:
        command += ["--token", token]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=worker_env(tmp, env), stdout=log, stderr=subprocess.STDOUT)
    return ServeProcess(url=f"http://127.0.0.1:{port}", token=token, log_path=log_path, process=process)


def stop_server(server: ServeProcess, timeout: float = 20.0) -> int:
    """SIGTERM (the server drains its running jobs), then SIGKILL; the exit status."""
    server.process.terminate()
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return server.process.wait()


def wait_healthy(server: ServeProcess) -> None:
    end = time.monotonic() + START_SECONDS
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve.py exited with {server.process.returncode}:\n{server.log()}")
        try:
            status, _ = server.call("GET", "/health", timeout=2)
            if status == 200:
                return
        except (URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"serve.py did not answer /health within {START_SECONDS:g} s:\n{server.log()}")
