"""The RunPod serverless worker: validate job["input"], run the pipeline, return a small result.

    python handler.py                                  # runs test_input.json once (runpod SDK local test)
    python handler.py --test_input_file job.json       # runs the request in that file once (any size; - = stdin)
    python handler.py --test_input '{"input": {...}}'  # runs that request once (small ones: argv is capped)
    python handler.py  (on RunPod)                     # serves jobs

Everything a job needs (settings, storage, fetcher, models) is built once at import, so model loading
happens during cold start, before the first job.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any

from pipeline.context import Deadline, ProgressFn
from pipeline.errors import InputError, JobError
from pipeline.request import API_VERSION, parse_request
from pipeline.run import Services, run_pipeline
from utils import logs
from utils.fetch import Fetcher
from utils.settings import Settings
from utils.storage import make_s3_client, make_storage

log = logging.getLogger("worker")
# No log line of a worker process (this one, serve.py's) carries a picture: the runpod SDK logs the whole job
# at DEBUG, so base64 runs are cut to their length at every level (utils/logs.py).
logs.install()
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def build_services(settings: Settings) -> Services:
    """Storage, fetcher and (when the worker has them) the model manager, built once per process."""
    from models.manager import ModelManager

    from models.segmentation import describe_active_backend

    models = ModelManager(settings)
    models.preload(settings.preload_models)
    log.info(describe_active_backend(settings.models_dir))
    return Services(
        settings=settings,
        storage=make_storage(settings),
        fetcher=Fetcher(settings, s3_client_factory=lambda: make_s3_client(settings)),
        models=models,
    )


def run_job(
    job_id: str,
    job_input: Any,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    services: Services | None = None,
) -> dict[str, Any]:
    """Run one job; return the contract's result or {"error": "<stage>: <reason>"}. Never raises for a job."""
    services = services or get_services()
    started = time.monotonic()
    deadline = Deadline(seconds=services.settings.max_seconds)
    if cancel is not None:
        deadline.cancel_event = cancel

    def report(stage: str, fraction: float, message: str) -> None:
        log.info("job %s | %-9s %3.0f%% %s", job_id, stage, fraction * 100, message)
        if progress is not None:
            progress(stage, fraction, message)

    try:
        if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
            raise InputError("id", "the job id must be 1-128 characters of A-Z a-z 0-9 . _ -")
        request = parse_request(job_input)
        result = run_pipeline(request, job_id=job_id, services=services, deadline=deadline, progress=report)
    except JobError as err:
        log.warning("job %s failed: %s", job_id, err.describe())
        return {"error": err.describe()}
    except Exception as exc:  # last line of defence: a job never takes the worker down
        log.exception("job %s crashed", job_id)
        return {"error": f"internal error: {type(exc).__name__}: {exc}"}
    log.info("job %s done in %.1f s: %s", job_id, time.monotonic() - started, result.meta_url)
    return {
        "api_version": API_VERSION,
        "job_id": job_id,
        "meta_url": result.meta_url,
        "glb_url": result.glb_url,
        "seconds": result.seconds,
    }


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod entry point."""
    import runpod

    settings = get_services().settings

    def send_progress(stage: str, fraction: float, message: str) -> None:
        # Outside RunPod there is no job-progress endpoint to post to; the log line is the progress.
        if settings.on_runpod:
            runpod.serverless.progress_update(
                job, {"stage": stage, "progress": round(fraction, 3), "message": message}
            )

    return run_job(str(job.get("id", "")), job.get("input"), progress=send_progress)


TEST_INPUT_FILE = "--test_input_file"


def expand_test_input_file(argv: list[str]) -> list[str]:
    """argv with `--test_input_file PATH` (or `=PATH`; `-` reads stdin) replaced by `--test_input <its JSON>`.

    The runpod SDK parses `--test_input` from sys.argv itself (runpod/serverless/__init__.py,
    `parser.parse_known_args()` then `json.loads`). A request with a picture in it is too big for a command
    line (Linux caps one argument at 128 KiB), but sys.argv is only a Python list: reading the file here and
    handing its text to the SDK as `--test_input` has no such limit. Exits with a message naming the problem
    when the file is missing or not a JSON job with an "input" object.
    """
    out: list[str] = []
    path: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == TEST_INPUT_FILE or arg.startswith(TEST_INPUT_FILE + "="):
            if path is not None:
                raise SystemExit(f"{TEST_INPUT_FILE} given twice")
            if arg == TEST_INPUT_FILE:
                if i + 1 >= len(argv):
                    raise SystemExit(f"{TEST_INPUT_FILE} needs a path (a job JSON file, or - for stdin)")
                path = argv[i + 1]
                i += 1
            else:
                path = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    if path is None:
        return list(argv)
    if any(a == "--test_input" or a.startswith("--test_input=") for a in out):
        raise SystemExit(f"give either --test_input or {TEST_INPUT_FILE}, not both")
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as err:
        raise SystemExit(f"{TEST_INPUT_FILE} {path}: {err.strerror or err}") from None
    try:
        job = json.loads(text)
    except ValueError as err:
        raise SystemExit(f"{TEST_INPUT_FILE} {path}: not JSON ({err})") from None
    if not isinstance(job, dict) or not isinstance(job.get("input"), dict):
        raise SystemExit(f'{TEST_INPUT_FILE} {path}: expected a job {{"input": {{...}}}} '
                         "(scripts/make_request.py writes one)")
    return [*out, "--test_input", text]


_SERVICES: Services | None = None


def get_services() -> Services:
    global _SERVICES
    if _SERVICES is None:
        _SERVICES = build_services(Settings.from_env())
    return _SERVICES


if __name__ == "__main__":
    sys.argv[1:] = expand_test_input_file(sys.argv[1:])  # before anything slow: a bad file fails at once
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    from utils.selfcheck import check_or_exit

    check_or_exit()  # weights, storage, GPU: one log line each; exits non-zero naming what is missing
    get_services()  # cold start: settings, storage, preloaded models, before the first job
    import runpod

    logs.install()  # now that the SDK is imported: its own logger too (it logs the whole job at DEBUG)
    runpod.serverless.start({"handler": handler})
