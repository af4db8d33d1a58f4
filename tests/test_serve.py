"""serve.py against its contract: RunPod's endpoint API over HTTP, with the real handler in a subprocess."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from localserver.files import resolve_file, rewrite_file_urls
from localserver.jobs import FAILED, TERMINAL, JobQueue
from localserver.store import JobStore
from tests.fake_worker import FakeWorker
from tests.helpers import example_bytes, fast_request
from tests.serve_process import ServeProcess, running_server
from utils.storage import LocalStorage

TOKEN = "test-token-123"


def quick(**overrides: Any) -> dict[str, Any]:
    """A real job that finishes in about a second: silhouette mesh, no texture stage."""
    return fast_request(texture=False, target_faces=1000, **overrides)


def slow(**overrides: Any) -> dict[str, Any]:
    """A real job that runs long enough to be cancelled while it runs (it has a texture stage)."""
    return fast_request(**overrides)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_server(tmp_path_factory.mktemp("serve"), token=TOKEN) as proc:
        yield proc


def run(server: ServeProcess, job_input: Any, **body: Any) -> str:
    status, reply = server.call("POST", "/run", {"input": job_input, **body})
    assert status == 200, reply
    assert set(reply) == {"id", "status"} and reply["status"] == "IN_QUEUE", reply
    return reply["id"]


def status_of(server: ServeProcess, job_id: str) -> dict[str, Any]:
    code, reply = server.call("GET", f"/status/{job_id}")
    assert code == 200, reply
    return reply


def wait_until(server: ServeProcess, job_id: str, done: Any, timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Poll /status until done(reply); return the last reply and every reply seen."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = status_of(server, job_id)
        seen.append(reply)
        if done(reply):
            return reply, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached the expected state; last: {seen[-1]}\n{server.log()[-3000:]}")


def finished(reply: dict) -> bool:
    return reply["status"] in TERMINAL


def test_token_is_required(server: ServeProcess) -> None:
    for token in (None, "wrong"):
        code, reply = server.call("GET", "/health", token=token)
        assert code == 401 and "Authorization: Bearer" in reply["error"]
        code, _ = server.call("GET", "/files/anything/meta.json", token=token)
        assert code == 401
    code, reply = server.call("GET", "/health")
    assert code == 200
    assert set(reply) == {"jobs", "workers", "storage", "gpu"}
    assert set(reply["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert {"idle", "running"} <= set(reply["workers"])
    assert reply["storage"] == {"kind": "local", "ok": True} and reply["gpu"]["device"] == "cpu"


def test_job_completes_with_progress_and_http_urls(server: ServeProcess) -> None:
    job_id = run(server, quick())
    last, seen = wait_until(server, job_id, finished)
    assert last["status"] == "COMPLETED", last
    progress = [r["output"] for r in seen if r["status"] == "IN_PROGRESS" and "output" in r]
    assert progress, "no progress was visible while the job ran"
    for update in progress:
        assert set(update) == {"stage", "progress", "message"}
        assert 0.0 <= update["progress"] <= 1.0 and isinstance(update["message"], str)
    assert len({u["stage"] for u in progress}) >= 2
    assert isinstance(last["delayTime"], int) and isinstance(last["executionTime"], int)
    assert last["executionTime"] > 0

    output = last["output"]
    assert output["job_id"] == job_id and output["api_version"] == "1.0"
    for key in ("glb_url", "meta_url"):
        assert output[key].startswith(f"{server.url}/files/"), output[key]
    # The links follow the host the client used, so they work from another machine.
    code, seen_from_lan = server.call("GET", f"/status/{job_id}", headers={"Host": "gpu-box.lan:8000"})
    assert seen_from_lan["output"]["glb_url"].startswith("http://gpu-box.lan:8000/files/")
    code, glb = server.call("GET", output["glb_url"])
    assert code == 200 and glb[:4] == b"glTF"
    code, meta = server.call("GET", output["meta_url"])
    assert code == 200 and meta["job_id"] == job_id
    # On disk meta.json keeps its file:// URLs; only the server's answers point at /files/.
    assert "file://" in json.dumps(meta)
    code, _ = server.call("GET", "/files/../serve.py")
    assert code == 404


def test_queue_order_and_cancel_of_queued_and_running_jobs(server: ServeProcess) -> None:
    a = run(server, slow())
    b, c, d = (run(server, quick(seed=n)) for n in range(3))
    assert [status_of(server, j)["status"] for j in (b, c, d)] == ["IN_QUEUE"] * 3

    code, reply = server.call("POST", f"/cancel/{c}")
    assert code == 200 and reply == {"id": c, "status": "CANCELLED"}
    assert status_of(server, c)["status"] == "CANCELLED"

    wait_until(server, a, lambda r: r["status"] == "IN_PROGRESS" and "output" in r)
    assert status_of(server, b)["status"] == "IN_QUEUE"
    code, reply = server.call("POST", f"/cancel/{a}")
    assert reply == {"id": a, "status": "CANCELLED"}
    cancelled_at = time.monotonic()
    # The cancelled handler stops at its next deadline check, which frees the worker for B.
    wait_until(server, b, lambda r: r["status"] != "IN_QUEUE", timeout=10)
    assert time.monotonic() - cancelled_at < 10
    assert status_of(server, d)["status"] == "IN_QUEUE"
    assert wait_until(server, b, finished)[0]["status"] == "COMPLETED"
    assert wait_until(server, d, finished)[0]["status"] == "COMPLETED"
    assert status_of(server, a)["status"] == "CANCELLED"  # the handler's late error does not overwrite it
    assert status_of(server, c)["status"] == "CANCELLED"


def test_purge_queue(server: ServeProcess) -> None:
    running = run(server, slow())
    queued = [run(server, quick(seed=n)) for n in range(3)]
    code, reply = server.call("POST", "/purge-queue")
    assert code == 200 and reply == {"removed": 3, "status": "completed"}
    assert {status_of(server, j)["status"] for j in queued} == {"CANCELLED"}
    server.call("POST", f"/cancel/{running}")
    wait_until(server, running, finished)


def test_failures_are_failed_with_a_string_error(server: ServeProcess) -> None:
    job_id = run(server, quick(image_base64=example_bytes("extinguisher.png")[:64].hex()))  # not an image
    last, _ = wait_until(server, job_id, finished)
    assert last["status"] == "FAILED"
    assert isinstance(last["error"], str) and "image_base64" in last["error"]
    assert "output" not in last

    # A request the worker would refuse is refused at submit time, naming the field, and never queued.
    code, reply = server.call("POST", "/run", {"input": {**quick(), "colour": "red"}})
    assert code == 400 and "colour" in reply["error"], reply

    code, reply = _post_raw(server, "/run", b"not json")
    assert code == 400 and "not valid JSON" in reply["error"]
    for body, words in (({"inputs": {}}, '"input"'), ({"input": {}, "webhook": "http://x"}, "webhook"),
                        ({"input": {}, "policy": {"ttl": 5}}, "executionTimeout")):
        code, reply = server.call("POST", "/run", body)
        assert code == 400 and words in reply["error"], reply
    for method, route in (("GET", "/status/nope"), ("POST", "/cancel/nope")):
        code, reply = server.call(method, route)
        assert code == 404 and "does not exist" in reply["error"]


def _post_raw(server: ServeProcess, route: str, data: bytes) -> tuple[int, Any]:
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    request = Request(server.endpoint + route, data=data, method="POST",
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as err:
        return err.code, json.loads(err.read())


def test_runsync_waits_and_execution_timeout_gives_timed_out(server: ServeProcess) -> None:
    code, reply = server.call("POST", "/runsync", {"input": {"image_base64": "", "target_faces": 5}})
    assert code == 400 and "target_faces" in reply["error"]
    code, reply = server.call("POST", "/runsync", {"input": quick(image_base64="AAAA")})
    assert code == 200 and reply["status"] == "FAILED" and "image_base64" in reply["error"]
    assert {"id", "delayTime", "executionTime"} <= set(reply)

    code, reply = server.call("POST", "/runsync?wait=500", {"input": quick()})
    assert code == 400 and "wait" in reply["error"]

    started = time.monotonic()
    code, reply = server.call("POST", "/runsync?wait=1000",
                              {"input": slow(), "policy": {"executionTimeout": 1500}})
    assert code == 200 and reply["status"] in ("IN_QUEUE", "IN_PROGRESS"), reply
    assert time.monotonic() - started < 5
    last, _ = wait_until(server, reply["id"], finished, timeout=20)
    assert last["status"] == "TIMED_OUT" and "executionTimeout" in last["error"]


def test_fifty_queued_jobs_none_lost(server: ServeProcess) -> None:
    before = server.call("GET", "/health")[1]["jobs"]
    image = example_bytes("extinguisher.png")[:64].hex()  # a distinct, invalid payload per job

    def submit(n: int) -> str:
        return run(server, {"image_base64": image, "seed": n, "shape_model": "silhouette"})

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    finals = [wait_until(server, j, finished, timeout=60)[0] for j in ids]
    assert [f["status"] for f in finals] == [FAILED] * 50
    assert all("image_base64" in f["error"] for f in finals)
    after = server.call("GET", "/health")[1]
    assert after["jobs"]["failed"] - before["failed"] == 50
    assert after["jobs"]["inQueue"] == 0 and after["jobs"]["inProgress"] == 0
    end = time.monotonic() + 10  # the worker thread frees itself just after it records the last result
    while after["workers"]["running"] and time.monotonic() < end:
        time.sleep(0.05)
        after = server.call("GET", "/health")[1]
    assert (after["workers"]["idle"], after["workers"]["running"]) == (1, 0)


# ---------------------------------------------------------------- in-process pieces


def test_rewrite_file_urls_only_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    inside = (root / "jobs" / "a b" / "model.glb").as_uri()
    outside = (tmp_path / "elsewhere.glb").as_uri()
    value = {"glb_url": inside, "list": [outside, "https://x/y"], "n": 1}
    rewritten = rewrite_file_urls(value, root, "http://host:8000/")
    assert rewritten == {"glb_url": "http://host:8000/files/jobs/a%20b/model.glb",
                         "list": [outside, "https://x/y"], "n": 1}


def test_resolve_file_stays_in_the_root(tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "job").mkdir(parents=True)
    (root / "job" / "meta.json").write_text("{}")
    (root / "job" / ".model.glb.x.part").write_text("partial")
    (tmp_path / "secret.txt").write_text("no")
    assert resolve_file(root, "job/meta.json") == (root / "job" / "meta.json").resolve()
    assert resolve_file(root, "../secret.txt") is None
    assert resolve_file(root, "job/.model.glb.x.part") is None
    assert resolve_file(root, "job") is None
    assert resolve_file(root, "job/\x00meta.json") is None and resolve_file(root, "a" * 5000) is None


def test_finished_jobs_are_forgotten_after_keep_seconds(tmp_path: Path) -> None:
    now = [1000.0]
    root = tmp_path / "out"
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(store, lambda n: FakeWorker(n, root), storage=LocalStorage(root), keep_seconds=60,
                     clock=lambda: now[0])
    queue.start()
    try:
        view = queue.submit({"behave": "fail"})
        done = queue.wait(view.id, timeout=30)
        assert done is not None and done.status == FAILED and "no surface" in done.error
        now[0] += 59
        assert queue.get(view.id) is not None
        now[0] += 2
        assert queue.get(view.id) is None
        assert queue.health()["jobs"]["failed"] == 1
    finally:
        queue.stop(drain_seconds=0)
        store.close()
