"""serve.py under faults: a job can end badly, but nothing is lost and nothing is left half-written.

Every test checks the same two rules after the faults: each submitted job reaches a final state (none lost,
none stuck), and its storage folder is whole (COMPLETED: meta.json and model.glb, no error.json) or holds
error.json alone (any other end; nothing at all for a job cancelled before it started).

The first tests drive JobQueue in-process with tests/fake_worker.py (fast, no child processes); the rest run
the real serve.py with real worker processes and real silhouette jobs. Faults in those are real too: kill -9
of a worker, and jobs that abort or hang inside the worker's process through tests/fault_hook (a
sitecustomize put on the server's PYTHONPATH; nothing in the project imports it).
"""
from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from localserver.jobs import (
    CANCELLED, COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, TERMINAL, TIMED_OUT, JobQueue, QueueFull,
)
from localserver.store import JobStore
from tests.fake_worker import FakeWorker
from tests.drip_server import drip_handler
from tests.helpers import REPO, fast_request
from tests.serve_process import ServeProcess, running_server, start_server, stop_server, wait_healthy
from tests.s3_fixtures import S3Server, s3_server  # noqa: F401 - fixture
from utils.storage import LocalStorage

ABORT_SEED, HANG_SEED = 7001, 7002  # tests/fault_hook: os.abort() mid-upload / hang in the texture stage


def tiny(**overrides: Any) -> dict[str, Any]:
    """A real silhouette job of about a second or three on a CPU."""
    return fast_request(target_faces=2000, texture_size=512, **overrides)


def assert_folder_whole(root: Path, job_id: str, status: str) -> None:
    folder = root / job_id
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else []
    if status == COMPLETED:
        assert "meta.json" in names and "model.glb" in names and "error.json" not in names, (job_id, names)
        assert not [n for n in names if n.split("/")[-1].startswith(".")], (job_id, names)
    elif names:
        assert names == ["error.json"], (job_id, status, names)
        body = json.loads((folder / "error.json").read_text())
        assert body["job_id"] == job_id and body["status"] == "failed" and body["error"]
        jsonschema.validate(body, json.loads((REPO / "schemas" / "error.schema.json").read_text()))


# ---------------------------------------------------------------- in-process: JobQueue's supervision


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[Callable[..., tuple[JobQueue, Path]]]:
    made: list[tuple[JobQueue, JobStore]] = []

    def make(**kwargs: Any) -> tuple[JobQueue, Path]:
        root = tmp_path / "out"
        store = JobStore(tmp_path / "jobs.sqlite3")
        options = {"max_seconds": 30.0, "grace_seconds": 0.3, "cancel_grace": 0.3, **kwargs}
        storage = options.pop("storage", None) or LocalStorage(root)
        queue = JobQueue(store, lambda n: FakeWorker(n, root), storage=storage, **options)
        queue.start()
        queue.wait_ready(10)
        made.append((queue, store))
        return queue, root

    yield make
    for queue, store in made:
        queue.stop(drain_seconds=0)
        store.close()


def test_a_hung_job_is_killed_past_the_cap_and_its_upload_removed(make_queue: Callable) -> None:
    queue, root = make_queue(max_seconds=0.5)
    hung = queue.submit({"behave": "hang"})
    after = queue.submit({"behave": "ok"})
    done = queue.wait(hung.id, 10)
    assert done is not None and done.status == TIMED_OUT and "MAX_SECONDS" in done.error
    assert queue.wait(after.id, 10).status == COMPLETED  # the slot got a new process and went on
    assert queue.health()["workers"]["restarts"] == 1
    assert_folder_whole(root, hung.id, TIMED_OUT)
    assert (root / hung.id / "error.json").is_file()
    assert_folder_whole(root, after.id, COMPLETED)


def test_cancel_of_a_job_that_ignores_it_kills_its_process(make_queue: Callable) -> None:
    queue, root = make_queue()
    hung = queue.submit({"behave": "hang"})
    while queue.get(hung.id).status == IN_QUEUE:
        time.sleep(0.01)
    assert queue.cancel(hung.id).status == CANCELLED  # at once
    end = time.monotonic() + 10
    while queue.health()["workers"]["restarts"] == 0 and time.monotonic() < end:
        time.sleep(0.01)
    assert queue.health()["workers"]["restarts"] == 1
    assert queue.get(hung.id).status == CANCELLED
    assert_folder_whole(root, hung.id, CANCELLED)
    # A job that does stop when asked keeps its process: no restart.
    polite = queue.submit({"behave": "ok", "seconds": 30})
    while queue.get(polite.id).status == IN_QUEUE:
        time.sleep(0.01)
    queue.cancel(polite.id)
    while queue.health()["workers"]["running"]:
        time.sleep(0.01)
    assert queue.health()["workers"]["restarts"] == 1


def test_a_crash_fails_the_job_and_the_next_one_runs(make_queue: Callable) -> None:
    queue, root = make_queue()
    crash = queue.submit({"behave": "crash"})
    ok = queue.submit({"behave": "ok"})
    done = queue.wait(crash.id, 10)
    assert done.status == FAILED and "SIGABRT" in done.error and "restarted" in done.error
    assert queue.wait(ok.id, 10).status == COMPLETED
    assert_folder_whole(root, crash.id, FAILED)
    assert (root / crash.id / "error.json").is_file()


class SlowLocalStorage(LocalStorage):
    """Local storage whose writes take a while, as a network share's would."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> str:
        time.sleep(0.5)
        return super().put_bytes(key, data, content_type)


def test_failed_is_published_only_once_the_folder_is_settled(make_queue: Callable, tmp_path: Path) -> None:
    # A client that sees FAILED must find error.json alone, even while the server is still writing it.
    queue, root = make_queue(storage=SlowLocalStorage(tmp_path / "out"))
    crash = queue.submit({"behave": "crash"})
    done = queue.wait(crash.id, 10)
    assert done.status == FAILED
    assert sorted(p.name for p in (root / crash.id).iterdir()) == ["error.json"]


def test_the_queue_limit(make_queue: Callable) -> None:
    queue, _ = make_queue(max_queue=2)
    running = queue.submit({"behave": "ok", "seconds": 30})
    while queue.get(running.id).status == IN_QUEUE:
        time.sleep(0.01)
    queue.submit({"behave": "ok"})
    queue.submit({"behave": "ok"})
    with pytest.raises(QueueFull):
        queue.submit({"behave": "ok"})
    assert queue.purge_queue() == 2
    queue.submit({"behave": "ok"})


def test_jobs_survive_a_restart_in_order(tmp_path: Path) -> None:
    root = tmp_path / "out"
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, lambda n: FakeWorker(n, root), storage=LocalStorage(root))
    ids = [queue.submit({"behave": "ok", "n": n}).id for n in range(3)]  # never started: no worker ran
    with pytest.raises(Exception, match="another serve.py"):
        JobStore(tmp_path / "jobs.sqlite3")
    # As a server killed mid-job leaves it: the first job IN_PROGRESS, with half a bundle.
    store.start(ids[0], time.time())
    (root / ids[0]).mkdir(parents=True)
    (root / ids[0] / "model.glb").write_bytes(b"half")
    store.close()

    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, lambda n: FakeWorker(n, root), storage=LocalStorage(root))
    assert queue.get(ids[0]).status == FAILED and "server stopped" in queue.get(ids[0]).error
    assert [queue.get(j).status for j in ids[1:]] == [IN_QUEUE, IN_QUEUE]
    queue.start()
    try:
        assert [queue.wait(j, 10).status for j in ids[1:]] == [COMPLETED, COMPLETED]
        end = time.monotonic() + 10
        while not (root / ids[0] / "error.json").exists() and time.monotonic() < end:
            time.sleep(0.02)
        assert_folder_whole(root, ids[0], FAILED)
        assert (root / ids[0] / "error.json").is_file()
    finally:
        queue.stop(drain_seconds=0)
        store.close()


def test_settling_an_s3_folder_leaves_only_error_json(s3_server: S3Server) -> None:  # noqa: F811
    from localserver.bundles import list_keys, settle_failed
    from utils.storage import S3Storage

    storage = S3Storage(s3_server.settings(s3_prefix="bundles"))
    storage.put_bytes("out/job-1/model.glb", b"glTF", "model/gltf-binary")
    storage.put_bytes("out/job-1/textures/albedo.png", b"png", "image/png")
    storage.put_bytes("out/job-10/meta.json", b"{}", "application/json")  # a neighbour with a longer id
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_server.bucket, Key="bundles/out/job-1/views/front.png")
    removed = settle_failed(storage, "out/job-1", job_id="job-1", stage="upload", message="connection reset",
                            seconds=1.5)
    assert removed == ["out/job-1/model.glb", "out/job-1/textures/albedo.png"]
    assert list_keys(storage, "out/job-1") == ["out/job-1/error.json"]
    assert list_keys(storage, "out/job-10") == ["out/job-10/meta.json"]
    assert not client.list_multipart_uploads(Bucket=s3_server.bucket).get("Uploads")
    body = json.loads(client.get_object(Bucket=s3_server.bucket, Key="bundles/out/job-1/error.json")["Body"].read())
    assert body["error"] == "connection reset" and body["stage"] == "upload"
    assert settle_failed(storage, "out/job-1", job_id="job-1", stage="upload", message="again", seconds=0) == []


# ---------------------------------------------------------------- serve.py with real worker processes


_Drip = drip_handler(240)  # bytes at 0.5 s each: 120 s at most


@pytest.fixture(scope="module")
def drip_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.png"
    server.shutdown()


FAULT_ENV = {
    "PYTHONPATH": str(REPO / "tests" / "fault_hook"),
    "FAULT_ABORT_SEEDS": str(ABORT_SEED),
    "FAULT_HANG_SEEDS": str(HANG_SEED),
    "ALLOW_PRIVATE_URLS": "1",
    "FETCH_TIMEOUT_SECONDS": "4",
    "MAX_SECONDS": "300",  # a generous cap: a busy shared CI machine must not turn plain jobs into TIMED_OUT
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_server(tmp_path_factory.mktemp("faulty"), env=FAULT_ENV,
                        args=("--workers", "2", "--grace-seconds", "1", "--max-queue", "12",
                              "--max-body-mb", "1")) as server:
        yield server


def outputs(server: ServeProcess) -> Path:
    return server.log_path.parent / "outputs"


def submit(server: ServeProcess, job_input: dict[str, Any], **body: Any) -> str:
    code, reply = server.call("POST", "/run", {"input": job_input, **body})
    assert code == 200, reply
    return reply["id"]


def status(server: ServeProcess, job_id: str) -> dict[str, Any]:
    code, reply = server.call("GET", f"/status/{job_id}")
    assert code == 200, reply
    return reply


def wait_for(server: ServeProcess, job_id: str, done: Callable[[dict], bool] = lambda r: r["status"] in TERMINAL,
             timeout: float = 120.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = status(server, job_id)
        if done(reply):
            return reply
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck: {reply}\n{server.log()[-4000:]}")


def health(server: ServeProcess) -> dict[str, Any]:
    return server.call("GET", "/health")[1]


def pid_running(server: ServeProcess, job: str) -> int:
    slots = [p for p in health(server)["workers"]["processes"] if p["job"] == job]
    assert len(slots) == 1 and slots[0]["state"] == "running", health(server)
    return slots[0]["pid"]


def wait_all_idle(server: ServeProcess, timeout: float = 120.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = health(server)
        if all(p["state"] == "idle" for p in reply["workers"]["processes"]):
            return reply
        time.sleep(0.1)
    raise AssertionError(f"workers never came back: {health(server)}\n{server.log()[-4000:]}")


def in_stage(stage: str) -> Callable[[dict], bool]:
    return lambda r: r["status"] in TERMINAL or (r.get("output") or {}).get("stage") == stage


def test_kill_9_of_a_worker_during_a_job(faulty: ServeProcess) -> None:
    wait_all_idle(faulty)
    job = submit(faulty, tiny())
    wait_for(faulty, job, in_stage("texture"))
    pid = pid_running(faulty, job)
    os.kill(pid, signal.SIGKILL)
    last = wait_for(faulty, job)
    assert last["status"] == FAILED and "SIGKILL" in last["error"], last
    assert_folder_whole(outputs(faulty), job, FAILED)
    after = wait_all_idle(faulty)
    assert pid not in [p["pid"] for p in after["workers"]["processes"]]
    assert wait_for(faulty, submit(faulty, tiny()))["status"] == COMPLETED  # the new process works
    # The server process itself never loaded torch (so never CUDA): the models live in the workers.
    maps = Path(f"/proc/{faulty.process.pid}/maps").read_text()
    assert "libtorch" not in maps and "libcuda" not in maps


def test_a_native_crash_mid_upload_leaves_only_error_json(faulty: ServeProcess) -> None:
    wait_all_idle(faulty)
    job = submit(faulty, tiny(seed=ABORT_SEED))
    last = wait_for(faulty, job)
    assert last["status"] == FAILED and "SIGABRT" in last["error"] and "upload" in last["error"], last
    folder = outputs(faulty) / job
    assert [p.name for p in folder.rglob("*") if p.is_file()] == ["error.json"]
    assert "orphaned" in faulty.log()  # the server removed what the dead process had uploaded
    assert health(faulty)["jobs"]["failed"] >= 1


def test_a_slow_drip_download_ends_within_the_fetch_bound(faulty: ServeProcess, drip_url: str) -> None:
    job = submit(faulty, tiny(image_url=drip_url, image_base64=None))
    last = wait_for(faulty, job, timeout=60)
    assert last["status"] == FAILED and "longer than 4 s" in last["error"], last
    assert last["executionTime"] < 30_000  # FETCH_TIMEOUT_SECONDS bounds the whole download, not each read
    assert_folder_whole(outputs(faulty), job, FAILED)


def test_cancel_during_a_slow_download_frees_the_worker(faulty: ServeProcess, drip_url: str) -> None:
    wait_all_idle(faulty)
    job = submit(faulty, tiny(image_url=drip_url, image_base64=None))
    wait_for(faulty, job, in_stage("multiview"))
    time.sleep(0.5)  # inside the download, where no deadline check runs
    pid = pid_running(faulty, job)
    code, reply = faulty.call("POST", f"/cancel/{job}")
    assert code == 200 and reply["status"] == CANCELLED
    cancelled = time.monotonic()
    while pid in [p["pid"] for p in health(faulty)["workers"]["processes"]]:
        assert time.monotonic() - cancelled < 10, health(faulty)
        time.sleep(0.05)
    assert status(faulty, job)["status"] == CANCELLED
    wait_all_idle(faulty)
    assert_folder_whole(outputs(faulty), job, CANCELLED)


def test_a_hung_job_past_its_execution_timeout_is_killed(faulty: ServeProcess) -> None:
    wait_all_idle(faulty)
    job = submit(faulty, tiny(seed=HANG_SEED), policy={"executionTimeout": 2000})
    wait_for(faulty, job, in_stage("texture"))
    pid = pid_running(faulty, job)
    last = wait_for(faulty, job)
    assert last["status"] == TIMED_OUT and "executionTimeout" in last["error"], last
    after = wait_all_idle(faulty)
    assert pid not in [p["pid"] for p in after["workers"]["processes"]]
    assert_folder_whole(outputs(faulty), job, TIMED_OUT)
    assert (outputs(faulty) / job / "error.json").is_file()


def test_limits_answer_4xx_in_the_error_shape(faulty: ServeProcess) -> None:
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    def raw(route: str, data: bytes) -> tuple[int, Any]:
        request = Request(faulty.endpoint + route, data=data, method="POST",
                          headers={"Content-Type": "application/json"})
        try:
            with urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except HTTPError as err:
            return err.code, json.loads(err.read())

    # A body over --max-body-mb is refused from its Content-Length, before the server reads (or holds) it.
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(faulty.endpoint)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.putrequest("POST", parts.path + "/run")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(200 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()
    code, reply = raw("/run", b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert code == 400 and "deeper" in reply["error"]
    code, reply = raw("/run", b'{"input": ' + b"[" * 40 + b"]" * 40 + b"}")
    assert code == 400 and "deeper" in reply["error"]
    code, reply = faulty.call("POST", "/run", {"input": {**tiny(), "target_faces": 5}})
    assert code == 400 and "target_faces" in reply["error"]
    for path in ("/files/a%00b/meta.json", "/files/" + "x" * 5000):
        code, reply = faulty.call("GET", path)
        assert code == 404 and "error" in reply
    code, reply = faulty.call("GET", "/nope")
    assert code == 404 and set(reply) == {"error"}
    code, reply = faulty.call("GET", "/run")
    assert code == 405 and set(reply) == {"error"}
    code, reply = faulty.call("POST", "/runsync?wait=soon", {"input": tiny()})
    assert code == 400 and set(reply) == {"error"}


def test_two_workers_many_jobs_with_faults_nothing_lost(faulty: ServeProcess) -> None:
    wait_all_idle(faulty)
    plan: list[tuple[dict[str, Any], dict[str, Any], set[str]]] = []
    for n in range(4):
        plan.append((tiny(seed=n), {}, {COMPLETED}))
    plan.insert(1, (tiny(seed=ABORT_SEED), {}, {FAILED}))
    plan.insert(4, (tiny(seed=ABORT_SEED), {}, {FAILED}))
    plan.insert(6, (tiny(seed=HANG_SEED), {"policy": {"executionTimeout": 3000}}, {TIMED_OUT}))
    ids = [submit(faulty, job_input, **body) for job_input, body, _ in plan]
    # More than the queue takes: the rest is refused with 429, never silently dropped.
    extra = [faulty.call("POST", "/run", {"input": tiny(seed=100 + n)}) for n in range(12)]
    refused = [reply for code, reply in extra if code == 429]
    assert refused and all("queue is full" in r["error"] for r in refused)
    accepted = [reply["id"] for code, reply in extra if code == 200]
    for job in accepted:
        faulty.call("POST", f"/cancel/{job}")
    finals = {job: wait_for(faulty, job, timeout=300) for job in ids + accepted}
    for (job_input, _, expected), job in zip(plan, ids):
        assert finals[job]["status"] in expected, (job_input.get("seed"), finals[job])
    for job in accepted:
        assert finals[job]["status"] in (CANCELLED, COMPLETED)
    for job, reply in finals.items():
        assert_folder_whole(outputs(faulty), job, reply["status"])
    end = wait_all_idle(faulty)
    assert end["jobs"]["inQueue"] == 0 and end["jobs"]["inProgress"] == 0


def test_restart_keeps_queued_jobs_and_settles_the_interrupted_one(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO / "tests" / "fault_hook"), "FAULT_HANG_SEEDS": str(HANG_SEED)}
    first = start_server(tmp_path, env=env)
    wait_healthy(first)
    interrupted = submit(first, tiny(seed=HANG_SEED))
    queued = [submit(first, tiny(seed=n)) for n in range(3)]
    wait_for(first, interrupted, in_stage("texture"))
    worker_pid = pid_running(first, interrupted)
    first.process.kill()  # kill -9 of the server: no chance to clean anything up
    first.process.wait()
    end = time.monotonic() + 10
    while _alive(worker_pid):  # its worker processes die with it
        assert time.monotonic() < end, f"worker {worker_pid} outlived the server"
        time.sleep(0.05)

    second = start_server(tmp_path, env=env)
    try:
        wait_healthy(second)
        last = status(second, interrupted)
        assert last["status"] == FAILED and "server stopped" in last["error"]
        assert [wait_for(second, j)["status"] for j in queued] == [COMPLETED] * 3
        assert_folder_whole(outputs(second), interrupted, FAILED)
        for job in queued:
            assert_folder_whole(outputs(second), job, COMPLETED)
        # SIGTERM: the running job is failed cleanly after the drain time; the queued one waits for the next start.
        running = submit(second, tiny(seed=HANG_SEED))
        waiting = submit(second, tiny(seed=5))
        wait_for(second, running, in_stage("texture"))
    finally:
        assert stop_server(second) == 0
    log = second.log()
    assert "shutting down" in log
    third = start_server(tmp_path, env=env)
    try:
        wait_healthy(third)
        last = status(third, running)
        assert last["status"] == FAILED and "shut down" in last["error"]
        assert_folder_whole(outputs(third), running, FAILED)
        assert wait_for(third, waiting)["status"] == COMPLETED
    finally:
        stop_server(third)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- start-up checks


@pytest.mark.parametrize("fault", ["missing bucket", "no credentials", "unreachable endpoint"])
def test_serve_refuses_to_start_on_broken_storage(tmp_path: Path, s3_server: S3Server, fault: str) -> None:
    env = s3_server.env(AWS_EC2_METADATA_DISABLED="true")  # botocore must not go looking for credentials
    if fault == "missing bucket":
        env["S3_BUCKET"] = "no-such-bucket-here"
        words = "does not exist"
    elif fault == "no credentials":
        env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="")
        words = "no usable credentials"
    else:
        from tests.serve_process import free_port

        env["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
        words = "could not reach"
    server = start_server(tmp_path, env=env)
    try:
        code = server.process.wait(timeout=120)
    finally:
        stop_server(server)
    assert code != 0
    log = server.log()
    assert "cannot start" in log and words in log, log[-3000:]
    assert "worker 0 ready" not in log  # refused before any worker process started


class _HangingProxy:
    """A TCP proxy in front of the S3 server that can go silent: from the (n+1)-th PUT on, nothing passes in
    either direction until `hang` is cleared (a storage endpoint that accepts connections and never answers)."""

    def __init__(self, upstream: str) -> None:
        from urllib.parse import urlsplit

        import socket

        self._socket_module = socket
        self.upstream = (urlsplit(upstream).hostname, urlsplit(upstream).port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.hang = False
        self.puts_before_hang: int | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = self._socket_module.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: Any, target: Any, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and data.startswith(b"PUT ") and self.puts_before_hang is not None:
                    if self.puts_before_hang == 0:
                        self.hang = True
                        self.puts_before_hang = None
                    else:
                        self.puts_before_hang -= 1
                if not self.hang:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_storage_endpoint_that_hangs_mid_upload(tmp_path: Path, s3_server: S3Server) -> None:  # noqa: F811
    """The job is killed at MAX_SECONDS + grace however long each storage call would wait; what it had uploaded
    is removed (once the endpoint answers again) and error.json is left."""
    proxy = _HangingProxy(s3_server.endpoint_url)
    env = s3_server.env(S3_ENDPOINT_URL=proxy.url, AWS_EC2_METADATA_DISABLED="true", MAX_SECONDS="20")
    server = start_server(tmp_path, env=env, args=("--grace-seconds", "1"))
    try:
        wait_healthy(server)
        proxy.puts_before_hang = 1  # model.glb lands, then the endpoint goes silent
        job = submit(server, tiny(texture=False))
        last = wait_for(server, job, timeout=120)
        assert last["status"] == TIMED_OUT and "MAX_SECONDS" in last["error"], last
        assert last["executionTime"] < 30_000, last  # 20 s cap + 1 s grace + supervision, not minutes of retries
        end = time.monotonic() + 60
        while health(server)["storage"]["ok"] and time.monotonic() < end:
            time.sleep(0.2)
        assert health(server)["storage"]["ok"] is False  # the settle could not reach the storage either
        proxy.hang = False
        while not health(server)["storage"]["ok"]:
            assert time.monotonic() < end + 60, health(server)
            time.sleep(0.2)
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(
            Bucket=s3_server.bucket, Prefix=f"{job}/").get("Contents", [])]
        assert keys == [f"{job}/error.json"], keys
    finally:
        proxy.hang = False
        stop_server(server)
        proxy.close()
