"""run_pipeline: one job through multiview -> mesh -> texture -> export -> upload, under a time cap.

meta.json is written last: its presence means the bundle is complete. A failed job writes error.json
(stage, reason, timings) instead, and removes what it had uploaded.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.context import Deadline, ProgressFn, StageContext, no_progress, no_sync
from pipeline.errors import JobError, StageError
from pipeline.export import BundleFile, export_bundle
from pipeline.mesh import run_mesh_stage
from pipeline.meta import build_error, build_meta, validate_meta
from pipeline.multiview import gather_inputs, prepare_views
from pipeline.request import JobRequest
from pipeline.texture import run_texture_stage
from utils.fetch import Fetcher
from utils.settings import Settings
from utils.storage import Storage, job_prefix

if TYPE_CHECKING:
    from models.manager import ModelManager

log = logging.getLogger(__name__)

META_KEY = "meta.json"
ERROR_KEY = "error.json"

# Share of the job's overall progress each stage covers, in order.
STAGE_SPANS: dict[str, tuple[float, float]] = {
    "multiview": (0.0, 0.1),
    "mesh": (0.1, 0.45),
    "texture": (0.45, 0.85),
    "export": (0.85, 0.92),
    "upload": (0.92, 1.0),
}


@dataclass
class Services:
    """What a job needs from outside the pipeline; built once per worker process."""

    settings: Settings
    storage: Storage
    fetcher: Fetcher
    models: "ModelManager | None" = None


@dataclass
class JobResult:
    job_id: str
    meta_url: str
    glb_url: str
    seconds: float
    meta: dict[str, Any] = field(repr=False)


class _StageClock:
    """Times stages and remembers which one is running (for error reports)."""

    def __init__(self, deadline: Deadline, progress: ProgressFn, sync: Callable[[], None]) -> None:
        self.deadline = deadline
        self.progress = progress
        self.sync = sync
        self.current = "input"
        self.timings: dict[str, Any] = {}  # stage -> seconds, "total", and "steps" once the job is done
        self.steps: dict[str, dict[str, float]] = {}  # stage -> step -> seconds (meta.json timings.steps)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageContext]:
        self.current = name
        self.deadline.check(name)
        ctx = StageContext(stage=name, deadline=self.deadline, progress=self.progress, span=STAGE_SPANS[name],
                           sync=self.sync)
        self.steps[name] = ctx.steps
        ctx.report(0.0, f"{name} started")
        start = time.monotonic()
        try:
            yield ctx
        finally:
            self.timings[name] = round(time.monotonic() - start, 3)
        ctx.report(1.0, f"{name} done in {self.timings[name]:.1f} s")


def run_pipeline(
    request: JobRequest,
    *,
    job_id: str,
    services: Services,
    deadline: Deadline,
    progress: ProgressFn = no_progress,
) -> JobResult:
    """Run one validated request to a complete bundle in storage; raise JobError on failure."""
    storage = services.storage
    prefix = job_prefix(request.output_prefix, job_id)
    created_at = datetime.now(timezone.utc)
    device = services.models.device if services.models is not None else "cpu"
    clock = _StageClock(deadline, progress, _device_sync(device))
    uploaded: list[str] = []
    # A re-run under the same job id must not leave an old meta.json that marks the new bundle complete.
    storage.delete(f"{prefix}/{META_KEY}")
    storage.delete(f"{prefix}/{ERROR_KEY}")
    try:
        with tempfile.TemporaryDirectory(prefix="job-") as tmp:
            with clock.stage("multiview") as ctx:
                with ctx.timed("fetch"):
                    raw = gather_inputs(request, services.fetcher)
                views = prepare_views(
                    request, raw, ctx, max_pixels=services.settings.max_image_pixels, models=services.models
                )
            with clock.stage("mesh") as ctx:
                mesh = run_mesh_stage(request, views, ctx, services.models)
            with clock.stage("texture") as ctx:
                textured = run_texture_stage(request, views, mesh, ctx, device=device, models=services.models)
                views.views.update(textured.info.pop("generated_views", {}))
            with clock.stage("export") as ctx:
                files = export_bundle(textured, views, Path(tmp), ctx=ctx)
            with clock.stage("upload") as ctx:
                upload_started = time.monotonic()
                with ctx.timed("files"):
                    urls = _upload(storage, prefix, files, ctx, uploaded)
                clock.timings["upload"] = round(time.monotonic() - upload_started, 3)
                clock.timings["total"] = round(deadline.elapsed(), 3)
                clock.timings["steps"] = clock.steps
                meta = build_meta(
                    job_id=job_id,
                    request=request,
                    views=views,
                    mesh=mesh,
                    textured=textured,
                    files=files,
                    urls=urls,
                    key_prefix=storage.object_key(prefix),
                    timings=clock.timings,
                    models=_models_used(views.info, mesh.model, textured.info),
                    created_at=created_at,
                )
                validate_meta(meta)
                ctx.check()
                meta_url = storage.put_bytes(
                    f"{prefix}/{META_KEY}", _json_bytes(meta), "application/json"
                )
    except JobError as err:
        if err.stage == JobError.stage:
            err.stage = clock.current
        _record_failure(storage, prefix, job_id, err, clock, created_at, uploaded)
        raise
    except Exception as exc:  # an unexpected bug: report it as this stage's failure, keep the traceback in logs
        log.exception("job %s failed in stage %s", job_id, clock.current)
        err = StageError(f"internal error: {type(exc).__name__}: {exc}", stage=clock.current)
        _record_failure(storage, prefix, job_id, err, clock, created_at, uploaded)
        raise err from exc
    return JobResult(
        job_id=job_id,
        meta_url=meta_url,
        glb_url=urls["model.glb"],
        seconds=round(deadline.elapsed(), 3),
        meta=meta,
    )


def _device_sync(device: str) -> Callable[[], None]:
    """The step clock's barrier: on a GPU, wait for queued kernels so each step's seconds are its own."""
    if not str(device).startswith("cuda"):
        return no_sync
    import torch

    return lambda: torch.cuda.synchronize(device)


def _upload(
    storage: Storage, prefix: str, files: list[BundleFile], ctx: StageContext, uploaded: list[str]
) -> dict[str, str]:
    """Put every bundle file (meta.json excluded) and return key -> URL."""
    urls: dict[str, str] = {}
    for i, item in enumerate(files):
        key = f"{prefix}/{item.key}"
        urls[item.key] = storage.put_file(key, item.path, item.content_type)
        uploaded.append(key)
        ctx.report((i + 1) / (len(files) + 1), f"uploaded {item.key}")
    return urls


def _models_used(
    views_info: dict[str, Any], shape_model: dict[str, Any], texture_info: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every model the job ran, in stage order; stages list theirs under info["models"] by role."""
    models = [{"role": role, **info} for role, info in views_info.get("models", {}).items()]
    models.append({"role": "shape", **shape_model})
    models.extend({"role": role, **info} for role, info in texture_info.get("models", {}).items())
    return models


def _record_failure(
    storage: Storage,
    prefix: str,
    job_id: str,
    err: JobError,
    clock: _StageClock,
    created_at: datetime,
    uploaded: list[str],
) -> None:
    """Remove the partial bundle and leave error.json; never let this mask the original error."""
    clock.timings["total"] = round(clock.deadline.elapsed(), 3)
    clock.timings["steps"] = clock.steps
    for key in uploaded:
        try:
            storage.delete(key)
        except JobError as cleanup_err:
            log.warning("could not remove partial upload %s: %s", key, cleanup_err)
    body = build_error(
        job_id=job_id, stage=err.stage, message=err.message, timings=clock.timings, created_at=created_at
    )
    try:
        storage.put_bytes(f"{prefix}/{ERROR_KEY}", _json_bytes(body), "application/json")
    except JobError as store_err:
        log.error("could not write error.json for job %s: %s", job_id, store_err)


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")
