"""Load with faults on serve.py: 2 worker processes x M silhouette jobs, some of which crash, hang or are cancelled.

    .venv/bin/python bench/serve_faults.py [--jobs 24] [--workers 2] [--max-seconds 60] [--grace 2]

Starts serve.py on a free loopback port with local storage in a temporary folder and the test-only fault hook
(tests/fault_hook: jobs with chosen seeds call os.abort() mid-upload, or hang ignoring cancel), then submits
the jobs at once:
  - every 6th job aborts in its process once its first file is uploaded (a native crash, half a bundle);
  - one worker process is sent SIGKILL while it runs a job;
  - 2 jobs hang (no executionTimeout): the server must kill them at MAX_SECONDS + grace;
  - 3 jobs fetch a URL that drips 1 byte per 0.5 s (FETCH_TIMEOUT_SECONDS=600, so only the kill stops them)
    and are cancelled once they are in the download; 2 plain jobs are cancelled while they run.
Then it checks every job's final state and storage folder, and measures /files while 40 /runsync calls wait.
Prints one markdown table: jobs, crashes injected, lost (an id the server forgot), unfinished (no final state
within the bound, which grows with the jobs), orphaned objects (files
of unfinished bundles left beside or instead of error.json), worst time past the cap, cancel latency (cancel
request to the job's slot no longer running it), /files latency under waiting /runsync calls.
"""
from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.drip_server import drip_handler  # noqa: E402
from tests.helpers import fast_request  # noqa: E402
from tests.serve_process import ServeProcess, start_server, stop_server, wait_healthy  # noqa: E402

ABORT_SEED, HANG_SEED = 7001, 7002
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


_Drip = drip_handler(1200)  # bytes at 0.5 s each: 600 s at most


def tiny(**overrides: Any) -> dict[str, Any]:
    return fast_request(target_faces=2000, texture_size=512, **overrides)


def status(server: ServeProcess, job: str) -> dict[str, Any]:
    return server.call("GET", f"/status/{job}")[1]


def processes(server: ServeProcess) -> list[dict[str, Any]]:
    return server.call("GET", "/health")[1]["workers"]["processes"]


def wait_stage(server: ServeProcess, job: str, stage: str, timeout: float = 300) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = status(server, job)
        if reply["status"] in TERMINAL:
            return False
        if (reply.get("output") or {}).get("stage") == stage:
            return True
        time.sleep(0.1)
    return False


def slot_of(server: ServeProcess, job: str) -> dict[str, Any] | None:
    return next((p for p in processes(server) if p["job"] == job), None)


def cancel_latency(server: ServeProcess, job: str) -> float:
    """Seconds from the cancel request until no worker slot runs the job any more."""
    started = time.monotonic()
    server.call("POST", f"/cancel/{job}")
    while slot_of(server, job) is not None and time.monotonic() - started < 30:
        time.sleep(0.01)
    return time.monotonic() - started


def folder_problems(root: Path, job: str, state: str) -> int:
    folder = root / job
    if not folder.is_dir():
        return 0
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    if state == "COMPLETED":
        return int("meta.json" not in names) + sum(n.split("/")[-1].startswith(".") for n in names)
    return len([n for n in names if n != "error.json"]) + int("error.json" not in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--grace", type=float, default=2.0)
    args = parser.parse_args()

    drip = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    drip.daemon_threads = True
    threading.Thread(target=drip.serve_forever, daemon=True).start()
    drip_url = f"http://127.0.0.1:{drip.server_address[1]}/slow.png"

    tmp = Path(tempfile.mkdtemp(prefix="serve-faults-"))
    env = {"PYTHONPATH": str(REPO / "tests" / "fault_hook"), "FAULT_ABORT_SEEDS": str(ABORT_SEED),
           "FAULT_HANG_SEEDS": str(HANG_SEED), "ALLOW_PRIVATE_URLS": "1", "FETCH_TIMEOUT_SECONDS": "600",
           "MAX_SECONDS": f"{args.max_seconds:g}", "LOG_LEVEL": "WARNING"}
    server = start_server(tmp, env=env, args=("--workers", str(args.workers), "--grace-seconds", f"{args.grace:g}",
                                              "--max-queue", "200"))
    wait_healthy(server)
    root = tmp / "outputs"
    plan: list[tuple[str, dict[str, Any]]] = []
    for n in range(args.jobs):
        if n % 6 == 5:
            plan.append(("abort", tiny(seed=ABORT_SEED)))
        else:
            plan.append(("plain", tiny(seed=n)))
    plan[2] = ("sigkill", tiny(seed=1002))
    plan[3] = ("hang", tiny(seed=HANG_SEED))
    plan[9] = ("hang", tiny(seed=HANG_SEED))
    for n in (4, 12, 16):
        plan[n] = ("drip-cancel", tiny(image_url=drip_url, image_base64=None, seed=2000 + n))
    for n in (7, 14):
        plan[n] = ("cancel", tiny(seed=3000 + n))

    started = time.monotonic()
    ids = []
    for _, job_input in plan:
        code, reply = server.call("POST", "/run", {"input": job_input})
        assert code == 200, reply
        ids.append(reply["id"])
    kinds = dict(zip(ids, (k for k, _ in plan)))

    latencies: list[float] = []
    killed = 0

    def fault(job: str) -> None:
        nonlocal killed
        kind = kinds[job]
        if kind == "sigkill" and wait_stage(server, job, "texture"):
            slot = slot_of(server, job)
            if slot is not None:
                os.kill(slot["pid"], signal.SIGKILL)
                killed += 1
        elif kind == "drip-cancel" and wait_stage(server, job, "multiview"):
            time.sleep(1.0)
            latencies.append(cancel_latency(server, job))
        elif kind == "cancel" and wait_stage(server, job, "texture"):
            latencies.append(cancel_latency(server, job))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fault, [j for j in ids if kinds[j] in ("sigkill", "drip-cancel", "cancel")]))
        finals: dict[str, dict[str, Any]] = {}
        forgotten: set[str] = set()  # ids the server no longer knows: really lost
        # A bound that grows with the queue: 200 tiny jobs on 2 shared cores take well over 15 minutes.
        end = time.monotonic() + max(900.0, 15.0 * len(ids) / args.workers)
        while len(finals) + len(forgotten) < len(ids) and time.monotonic() < end:
            for job in ids:
                if job not in finals and job not in forgotten:
                    reply = status(server, job)
                    if reply.get("status") in TERMINAL:
                        finals[job] = reply
                    elif "error" in reply:
                        forgotten.add(job)
            time.sleep(1.0)
    elapsed = time.monotonic() - started

    # /files while 40 /runsync calls wait on jobs queued behind two hung ones.
    done = next(j for j, r in finals.items() if r["status"] == "COMPLETED")
    glb = finals[done]["output"]["glb_url"]
    hung = [server.call("POST", "/run", {"input": tiny(seed=HANG_SEED)})[1]["id"] for _ in range(args.workers)]
    waiters = ThreadPoolExecutor(40)
    futures = [waiters.submit(server.call, "POST", "/runsync?wait=60000", {"input": tiny(seed=4000 + n)},
                              timeout=90) for n in range(40)]
    time.sleep(3.0)
    files_seconds = []
    for _ in range(5):
        t = time.monotonic()
        code, body = server.call("GET", glb)
        files_seconds.append(time.monotonic() - t)
        assert code == 200 and body[:4] == b"glTF"
    server.call("POST", "/purge-queue")
    for job in hung:
        server.call("POST", f"/cancel/{job}")
    for future in futures:
        future.result()
    waiters.shutdown()

    lost = len(forgotten)
    unfinished = len(ids) - len(finals) - lost  # still queued or running when the bound passed
    orphans = sum(folder_problems(root, job, reply["status"]) for job, reply in finals.items())
    over_cap = [r["executionTime"] / 1000 - args.max_seconds for j, r in finals.items() if kinds[j] == "hang"]
    counts = {s: sum(r["status"] == s for r in finals.values()) for s in sorted(TERMINAL)}
    stop_server(server)
    crashes = sum(k == "abort" for k in kinds.values()) + killed

    print(f"| jobs | crashes injected | lost | unfinished at the bound | orphaned objects | worst time past the cap | cancel latency "
          f"(median / worst) | /files with 40 /runsync waiting (worst) | states | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {len(ids)} x {args.workers} workers | {crashes} ({crashes - killed} os.abort mid-upload, {killed} "
          f"SIGKILL) | {lost} | {unfinished} | {orphans} | {max(over_cap):.2f} s (cap {args.max_seconds:g} s, grace "
          f"{args.grace:g} s) | {statistics.median(latencies):.2f} / {max(latencies):.2f} s ({len(latencies)}) | "
          f"{max(files_seconds):.3f} s | {json.dumps(counts)} | {elapsed:.0f} s |")
    return 0 if lost == 0 and unfinished == 0 and orphans == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
