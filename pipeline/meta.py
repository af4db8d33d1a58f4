"""meta.json and error.json: what a finished (or failed) job records about itself, and their JSON Schemas.

The schemas ship in schemas/ (meta.schema.json, error.schema.json); validate_meta / validate_error check a
body against them so a bundle never carries a meta.json its clients cannot rely on.
"""
from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any

import jsonschema
import numpy as np
import torch

from pipeline import __version__
from pipeline.export import MAP_NAMES, BundleFile, material_summary
from pipeline.request import API_VERSION, JobRequest
from pipeline.types import MeshResult, TexturedMesh, ViewSet

SCHEMA_VERSION = "1.0"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_UNIFORM_WHEN_ABSENT = {"ao": 1.0}
"""Value a renderer uses for a map the bundle does not have (roughness/metallic come from the request)."""


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a "Z" suffix, to the millisecond."""
    if moment.tzinfo is None:
        raise ValueError("created_at must be timezone-aware")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any, where: str = "meta") -> Any:
    """`value` as plain JSON types (numpy scalars/arrays, tuples, paths converted); raise on anything else."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number and cannot go into JSON")
        return value
    if isinstance(value, np.generic):
        return jsonable(value.item(), where)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where}: a {type(value).__name__} cannot go into meta.json")


def worker_versions() -> dict[str, str]:
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _image_field(request: JobRequest, name: str) -> str:
    """Which request field a source picture came from (front = the main image)."""
    if name == "front":
        return "image_url" if request.image_url is not None else "image_base64"
    ref = getattr(request.views, name, None) if request.views is not None else None
    if ref is None:
        raise ValueError(f"source image {name!r} matches no field of the request")
    return f"views.{name}.{'url' if ref.url is not None else 'base64'}"


def _input_section(request: JobRequest, views: ViewSet) -> dict[str, Any]:
    images = [
        {
            "name": src.name,
            "field": _image_field(request, src.name),
            "sha256": src.sha256,
            "bytes": src.bytes,
            "width": src.width,
            "height": src.height,
            "format": src.format,
            "mask_source": src.mask_source,
        }
        for src in views.sources
    ]
    mask = None
    if request.mask_url is not None or request.mask_base64 is not None:
        # The multiview stage records the decoded mask's hash and size in views.info["mask"].
        recorded = views.info.get("mask")
        if not isinstance(recorded, dict) or "sha256" not in recorded or "bytes" not in recorded:
            raise ValueError("the request has a mask, but views.info['mask'] does not record its sha256 and bytes")
        mask = {"field": "mask_url" if request.mask_url is not None else "mask_base64", **recorded}
    parameters = request.resolved()
    for name in ("image_url", "mask_url"):
        parameters[name] = _without_payload(parameters.get(name))
    return {"images": images, "mask": mask, "parameters": parameters, "seed": request.seed}


def _without_payload(url: str | None) -> str | None:
    """A data: URL's header only: the image itself is recorded by its sha256, not copied into meta.json."""
    if url is None or not url.startswith("data:"):
        return url
    header, _, payload = url.partition(",")
    return f"{header},<{len(payload)} characters omitted>"


def _outputs_section(
    files: list[BundleFile], urls: dict[str, str], key_prefix: str, textured: TexturedMesh
) -> dict[str, Any]:
    prefix = key_prefix.strip("/")
    outputs: dict[str, Any] = {}
    for item in files:
        if item.key not in urls:
            raise ValueError(f"no URL was given for bundle file {item.key!r}")
        entry: dict[str, Any] = {
            "key": f"{prefix}/{item.key}" if prefix else item.key,
            "url": urls[item.key],
            "content_type": item.content_type,
            "bytes": item.bytes,
            "sha256": item.sha256,
        }
        if item.key == "model.glb":
            entry.update(kind="mesh", vertices=item.info["vertices"], faces=item.info["faces"], bbox=item.info["bbox"])
        elif item.key.startswith("textures/"):
            name = PurePath(item.key).stem
            entry.update(kind="texture", map=name, method=_map_method(textured, name), **_image_fields(item.info))
        elif item.key.startswith("views/"):
            entry.update(kind="view", view=PurePath(item.key).stem, **_image_fields(item.info))
        else:
            raise ValueError(f"bundle file {item.key!r} is neither the model, a texture nor a view")
        outputs[item.key] = entry
    if "model.glb" not in outputs:
        raise ValueError("the bundle has no model.glb")
    return outputs


def _image_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info[k] for k in ("width", "height", "channels", "colorspace")}


def _map_method(textured: TexturedMesh, name: str) -> str:
    """How a map was made, as the texture stage recorded it in info["maps"] ("projection", "uniform", "not baked")."""
    method = textured.info.get("maps", {}).get(name)
    if isinstance(method, str):
        return method
    return "unrecorded" if name in textured.maps else "not computed"


def _material_section(textured: TexturedMesh) -> dict[str, Any]:
    """What the GLB's material uses, stated per map: its method, its file, or the constant in its place."""
    maps: dict[str, Any] = {}
    uniform = {"roughness": float(textured.roughness), "metallic": float(textured.metallic), **_UNIFORM_WHEN_ABSENT}
    for name in MAP_NAMES:
        present = name in textured.maps
        entry: dict[str, Any] = {
            "method": _map_method(textured, name),
            "key": f"textures/{name}.png" if present else None,
        }
        if not present and name in uniform:
            entry["value"] = uniform[name]
        maps[name] = entry
    return {
        "textured": bool(textured.maps),
        "texture_size": max((int(image.shape[0]) for image in textured.maps.values()), default=None),
        "gltf": material_summary(textured),
        "maps": maps,
    }


def _views_section(views: ViewSet) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "key": f"views/{name}.png",
            "source": view.source,
            "azimuth": float(view.azimuth),
            "elevation": float(view.elevation),
            "fov": float(view.fov),
            "projection": "orthographic" if view.fov == 0 else "perspective",
            "mask_method": view.mask_method,
            "size": int(view.rgba.shape[0]),
        }
        for name, view in views.views.items()
    ]


def build_meta(
    *,
    job_id: str,
    request: JobRequest,
    views: ViewSet,
    mesh: MeshResult,
    textured: TexturedMesh,
    files: list[BundleFile],
    urls: dict[str, str],  # bundle key -> fetchable URL
    key_prefix: str,  # storage key of the job folder, e.g. "<output_prefix>/<job_id>"
    timings: dict[str, Any],  # stage -> seconds, "total", and "steps": stage -> step -> seconds
    models: list[dict[str, Any]],  # {role, name, repo_id, revision, dtype, device, settings}
    created_at: datetime,
) -> dict[str, Any]:
    """The meta.json body of a complete bundle (schemas/meta.schema.json)."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "api_version": API_VERSION,
        "job_id": job_id,
        "created_at": iso_utc(created_at),
        "status": "complete",
        "input": _input_section(request, views),
        "models": models,
        "timings": timings_section(timings),
        "outputs": _outputs_section(files, urls, key_prefix, textured),
        "mesh": {
            "vertices": int(len(textured.vertices)),
            "faces": int(len(textured.faces)),
            "bbox": np.stack([textured.vertices.min(0), textured.vertices.max(0)]).astype(np.float64).round(6),
            "dense_vertices": int(len(mesh.dense.vertices)),
            "dense_faces": int(len(mesh.dense.faces)),
        },
        "material": _material_section(textured),
        "views": _views_section(views),
        "stages": {"multiview": views.info, "mesh": mesh.info, "texture": textured.info},
        "worker": worker_versions(),
    }
    return jsonable(meta)


def build_error(
    *, job_id: str, stage: str, message: str, timings: dict[str, Any], created_at: datetime
) -> dict[str, Any]:
    """The error.json body of a failed job (schemas/error.schema.json)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "api_version": API_VERSION,
        "job_id": job_id,
        "created_at": iso_utc(created_at),
        "status": "failed",
        "stage": stage,
        "error": message,
        "timings": timings_section(timings),
    }


def timings_section(timings: dict[str, Any]) -> dict[str, Any]:
    """Seconds rounded to the millisecond: per stage, "total", and "steps" (stage -> step -> seconds)."""
    section: dict[str, Any] = {k: round(float(v), 3) for k, v in timings.items() if k != "steps"}
    steps = timings.get("steps")
    if steps:
        section["steps"] = {stage: {step: round(float(v), 3) for step, v in items.items()}
                            for stage, items in steps.items()}
    return section


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _validate(body: dict[str, Any], schema: str, what: str) -> None:
    errors = sorted(_validator(schema).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ValueError(f"{what} is invalid at {first.json_path}: {first.message}{more}")


def validate_meta(meta: dict[str, Any]) -> None:
    """Check a meta.json body against schemas/meta.schema.json; raise ValueError naming the bad path."""
    _validate(meta, "meta.schema.json", "meta.json")


def validate_error(body: dict[str, Any]) -> None:
    """Check an error.json body against schemas/error.schema.json; raise ValueError naming the bad path."""
    _validate(body, "error.schema.json", "error.json")
