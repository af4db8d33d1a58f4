"""RunPod's endpoint API over a JobQueue (FastAPI), plus /files for local-storage bundles.

Routes (any endpoint id is accepted, so RunPod URLs work with the host swapped):
  POST /v2/<id>/run              {"input": {...}, "policy"?: {"executionTimeout": ms}} -> {"id", "status"}
  POST /v2/<id>/runsync?wait=ms  the same, then waits (default 90 s) -> the status shape
  GET  /v2/<id>/status/<job>     {"id", "status", "delayTime", "executionTime", "output"?, "error"?}
  POST /v2/<id>/cancel/<job>     {"id", "status"}
  POST /v2/<id>/purge-queue      {"removed", "status"}
  GET  /v2/<id>/health           {"jobs": {...}, "workers": {"idle", "running", ...}, "storage", "gpu"}
  GET  /files/<key>              a bundle file (local storage only)

Limits: a body over `max_body_bytes` answers 413, a full queue 429, JSON nested deeper than MAX_JSON_DEPTH or
a request `parse_request` refuses 400 (naming the field) at submit time. Every error is `{"error": "..."}`.
Nothing here blocks the event loop: /runsync waits by polling, so /files downloads never queue behind it.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from localserver.files import FILES_ROUTE, resolve_file, rewrite_file_urls
from localserver.jobs import COMPLETED, IN_PROGRESS, TERMINAL, JobQueue, JobView, QueueFull, ShuttingDown
from pipeline.errors import InputError
from pipeline.request import parse_request

log = logging.getLogger("serve.app")

mimetypes.add_type("model/gltf-binary", ".glb")

RUNSYNC_WAIT_MS = (1_000, 300_000, 90_000)  # RunPod's bounds and default for ?wait=
_POLICY_KEYS = {"executionTimeout"}
MAX_JSON_DEPTH = 32
DEFAULT_MAX_BODY_BYTES = 96 * 1024 * 1024  # a 50 MiB picture in base64 (67 MiB) and the rest of the request


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def status_body(view: JobView, *, files_root: Path | None, base_url: str) -> dict[str, Any]:
    """RunPod's /status shape. Times are milliseconds, as RunPod reports them."""
    body: dict[str, Any] = {
        "id": view.id,
        "status": view.status,
        "delayTime": int(view.delay_seconds * 1000),
        "executionTime": int(view.execution_seconds * 1000),
    }
    if view.status == IN_PROGRESS and view.progress is not None:
        body["output"] = view.progress
    elif view.status == COMPLETED and view.output is not None:
        output = view.output
        if files_root is not None:
            output = rewrite_file_urls(output, files_root, base_url)
        body["output"] = output
    if view.error is not None:
        body["error"] = view.error
    return body


def _depth(value: Any) -> int:
    """How deeply JSON containers nest in `value` (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    too_big = f"the request body is larger than the limit of {limit:,} bytes"
    if declared.isdigit() and int(declared) > limit:
        raise _HttpError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _HttpError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_run_body(raw: bytes) -> tuple[Any, float | None]:
    """(input, execution timeout in seconds) from a /run body, or _HttpError(400) naming the problem."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _HttpError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _HttpError(400, f"the request body is not valid JSON: {exc}") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise _HttpError(400, f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict) or "input" not in body:
        raise _HttpError(400, 'the request body must be a JSON object with an "input" field: {"input": {...}}')
    unknown = sorted(set(body) - {"input", "policy"})
    if unknown:
        raise _HttpError(400, f"not supported by the local server: {', '.join(unknown)}")
    policy = body.get("policy") or {}
    if not isinstance(policy, dict) or set(policy) - _POLICY_KEYS:
        raise _HttpError(400, "policy: the local server supports only executionTimeout (milliseconds)")
    timeout_ms = policy.get("executionTimeout")
    if timeout_ms is None:
        return body["input"], None
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms <= 0:
        raise _HttpError(400, "policy.executionTimeout must be a positive number of milliseconds")
    return body["input"], timeout_ms / 1000.0


def create_app(
    queue: JobQueue,
    *,
    token: str | None = None,
    files_root: Path | None = None,
    public_url: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The HTTP app. `files_root`: the local storage folder to serve (None with S3 storage).
    `public_url`: base of the /files URLs in results; default: the URL the client used to reach us."""
    app = FastAPI(title="image-to-3D local endpoint", docs_url=None, redoc_url=None, openapi_url=None)

    def base_url(request: Request) -> str:
        return (public_url or str(request.base_url)).rstrip("/")

    def body_of(view: JobView, request: Request) -> dict[str, Any]:
        return status_body(view, files_root=files_root, base_url=base_url(request))

    def not_found(job_id: str) -> JSONResponse:
        return _error(404, f"job {job_id} does not exist (an unknown id, or its result expired)")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if token is not None:
            given = request.headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else given
            if not hmac.compare_digest(given.strip().encode(), token.encode()):
                return _error(401, "missing or wrong API token: send the header 'Authorization: Bearer <token>'")
        return await call_next(request)

    @app.exception_handler(_HttpError)
    async def http_error(request: Request, exc: _HttpError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404:
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")

    async def submit(request: Request) -> JobView:
        job_input, timeout = _parse_run_body(await read_body(request, max_body_bytes))
        try:
            parsed = parse_request(job_input)  # the same validation as the worker's, before the job is queued
        except InputError as err:
            raise _HttpError(400, err.describe()) from None
        try:
            return queue.submit(job_input, output_prefix=parsed.output_prefix, execution_timeout=timeout)
        except InputError as err:
            raise _HttpError(400, err.describe()) from None
        except QueueFull as exc:
            raise _HttpError(429, str(exc)) from None
        except ShuttingDown as exc:
            raise _HttpError(503, str(exc)) from None

    @app.post("/v2/{endpoint_id}/run")
    async def run(endpoint_id: str, request: Request) -> JSONResponse:
        view = await submit(request)
        return JSONResponse({"id": view.id, "status": view.status})

    @app.post("/v2/{endpoint_id}/runsync")
    async def runsync(endpoint_id: str, request: Request, wait: int = RUNSYNC_WAIT_MS[2]) -> JSONResponse:
        lo, hi, _ = RUNSYNC_WAIT_MS
        if not lo <= wait <= hi:
            raise _HttpError(400, f"wait must be {lo} to {hi} milliseconds")
        view = await submit(request)
        end = time.monotonic() + wait / 1000.0
        done: JobView | None = view
        while done is not None and done.status not in TERMINAL and time.monotonic() < end:
            await asyncio.sleep(min(0.1, max(end - time.monotonic(), 0.0)))  # never a thread per waiter
            done = queue.get(view.id)
        return JSONResponse(body_of(done or view, request))

    @app.get("/v2/{endpoint_id}/status/{job_id}")
    @app.post("/v2/{endpoint_id}/status/{job_id}")
    async def status(endpoint_id: str, job_id: str, request: Request) -> JSONResponse:
        view = queue.get(job_id)
        return not_found(job_id) if view is None else JSONResponse(body_of(view, request))

    @app.post("/v2/{endpoint_id}/cancel/{job_id}")
    async def cancel(endpoint_id: str, job_id: str) -> JSONResponse:
        view = queue.cancel(job_id)
        return not_found(job_id) if view is None else JSONResponse({"id": view.id, "status": view.status})

    @app.post("/v2/{endpoint_id}/purge-queue")
    async def purge_queue(endpoint_id: str) -> JSONResponse:
        return JSONResponse({"removed": queue.purge_queue(), "status": "completed"})

    @app.get("/v2/{endpoint_id}/health")
    async def health(endpoint_id: str) -> JSONResponse:
        return JSONResponse(queue.health())

    @app.api_route(FILES_ROUTE + "/{key:path}", methods=["GET", "HEAD"], response_model=None)
    async def files(key: str) -> FileResponse | JSONResponse:
        if files_root is None:
            return _error(404, "this server stores bundles in S3; use the presigned URLs in the result")
        path = resolve_file(files_root, key)
        if path is None:
            return _error(404, f"no such file: {key}")
        return FileResponse(path)

    return app
