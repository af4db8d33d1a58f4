"""A local server that speaks RunPod's endpoint API, running the worker's handler on this machine.

    python serve.py [--host 127.0.0.1] [--port 8000] [--workers 1] [--token TOKEN] [--keep-seconds 3600]
                    [--public-url http://gpu-box:8000] [--db serve-jobs.sqlite3] [--max-queue 100]
                    [--max-body-mb 96] [--grace-seconds 10] [--drain-seconds 5]

Then use it as a RunPod endpoint with any endpoint id: `POST http://127.0.0.1:8000/v2/local/run`, ...
(see localserver/app.py for the routes). Storage and models are configured by the same environment variables
as the worker (CONTRACT.md section 4); with local storage the bundles are also served under /files/.

Each worker slot is a child process (models load once in it; CUDA is never touched in this process), so a
crash or hang inside a job ends that job, not the server. Jobs are kept in a SQLite file (--db): queued jobs
survive a restart. Before it listens, the server checks the storage (bucket, credentials, a write and a
delete under the prefix), the preloaded weights and the GPU, and refuses to start naming what is wrong.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid

import uvicorn

from localserver.app import DEFAULT_MAX_BODY_BYTES, create_app
from localserver.bundles import local_folder, write_probe
from localserver.jobs import JobQueue
from localserver.store import JobStore, StoreLocked, default_db_path
from localserver.worker import WorkerDied, WorkerProcess

log = logging.getLogger("serve")
MiB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the worker locally behind RunPod's endpoint API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1,
                        help="jobs run at the same time, one child process each (default 1: one job per GPU)")
    parser.add_argument("--token", default=os.environ.get("SERVE_TOKEN") or None,
                        help="require 'Authorization: Bearer TOKEN' on every request (default: $SERVE_TOKEN)")
    parser.add_argument("--keep-seconds", type=float, default=3600.0,
                        help="how long a finished job's status stays available")
    parser.add_argument("--public-url", default=None,
                        help="base URL of the /files/ links in results (default: the URL the client used)")
    parser.add_argument("--db", default=str(default_db_path()),
                        help="SQLite file of the job queue, kept across restarts (default: $SERVE_DB or "
                             "./serve-jobs.sqlite3)")
    parser.add_argument("--max-queue", type=int, default=100, help="jobs waiting at most; more answer 429")
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / MiB,
                        help="largest request body in MiB; larger ones answer 413")
    parser.add_argument("--grace-seconds", type=float, default=10.0,
                        help="how long past MAX_SECONDS (or executionTimeout) a job's process may run before it "
                             "is killed")
    parser.add_argument("--drain-seconds", type=float, default=5.0,
                        help="on SIGTERM, how long running jobs may go on before they are failed")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.keep_seconds <= 0:
        parser.error("--keep-seconds must be positive")
    if args.max_queue < 1 or args.max_body_mb <= 0 or args.grace_seconds < 0 or args.drain_seconds < 0:
        parser.error("--max-queue and --max-body-mb must be positive, --grace-seconds and --drain-seconds >= 0")
    return args


def startup_checks() -> tuple[object, object]:
    """(settings, storage) once settings, weights and storage pass; SystemExit naming every problem if not.
    The GPU is checked by each worker process as it starts (this process never touches CUDA)."""
    from utils.selfcheck import Problem, check_storage, check_weights, default_hf_caches, selfcheck_storage
    from utils.settings import Settings, SettingsError
    from utils.storage import S3Storage

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise SystemExit(f"serve.py cannot start: settings: {exc}") from None
    problems = check_weights(settings, default_hf_caches()) + check_storage(settings, selfcheck_storage)
    # The server's own storage client (settling failed jobs' folders): short timeouts and few retries, so a
    # hung endpoint holds a worker slot for seconds, not minutes (a failed settle is retried later).
    storage = (S3Storage(settings, connect_timeout=3.0, read_timeout=5.0, max_attempts=2)
               if settings.storage == "s3" else selfcheck_storage(settings))
    if not problems:
        try:
            write_probe(storage, f".serve-startup-check/{uuid.uuid4().hex}")
            log.info("self-check storage write: ok (a write and a delete under the %s storage's prefix)",
                     settings.storage)
        except Exception as exc:  # noqa: BLE001 - StorageError, boto errors, OSError: all refuse the start
            message = exc.describe() if hasattr(exc, "describe") else f"{type(exc).__name__}: {exc}"
            problems.append(Problem("storage", f"write/delete probe under the prefix failed: {message}"))
    if problems:
        lines = "\n".join(f"  - {p.check}: {p.message}" for p in problems)
        raise SystemExit(f"serve.py cannot start ({len(problems)} problem(s)):\n{lines}")
    return settings, storage


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    settings, storage = startup_checks()
    try:
        store = JobStore(args.db)
    except StoreLocked as exc:
        raise SystemExit(f"serve.py cannot start: {exc}") from None
    files_root = local_folder(storage)
    queue = JobQueue(store, lambda n: WorkerProcess(n, log_level=level), storage=storage, workers=args.workers,
                     keep_seconds=args.keep_seconds, max_queue=args.max_queue, max_seconds=settings.max_seconds,
                     grace_seconds=args.grace_seconds)
    app = create_app(queue, token=args.token, files_root=files_root, public_url=args.public_url,
                     max_body_bytes=int(args.max_body_mb * MiB))
    queue.start()
    try:
        queue.wait_ready(timeout=600.0)
    except WorkerDied as exc:
        queue.stop(drain_seconds=0)
        raise SystemExit(f"serve.py cannot start: {exc}") from None
    log.info("RunPod endpoint API at http://%s:%d/v2/<any id>/ (%d worker process(es), jobs in %s, storage: %s%s, "
             "token %s)", args.host, args.port, args.workers, args.db, settings.storage,
             f" {files_root}, served under /files/" if files_root else "", "required" if args.token else "not required")
    if not args.token and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --token: anyone who can reach this port can run jobs", args.host)
    # uvicorn re-raises the signal that stopped it once it is done; a handler of ours keeps SIGTERM from
    # ending the process before the running jobs are drained below.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        log.info("shutting down: running jobs get %g s to finish; queued jobs stay in %s", args.drain_seconds,
                 args.db)
        queue.stop(drain_seconds=args.drain_seconds)
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
