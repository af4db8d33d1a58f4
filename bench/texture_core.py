"""Time the rendering core and the projection texture stage (no models).

    python -m bench.texture_core --device cpu
    python -m bench.texture_core --device cuda

Mesh: the Stanford bunny (tests/data, 69k faces) centred in [-0.9, 0.9]^3 is the dense mesh; it is
decimated to 40k faces (UV raster at 2048, normal + AO bakes at 1024) and to 20k faces (the whole
run_texture_stage with texture_model projection at 1024, one front view). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fast_simplification
import numpy as np
import torch
import trimesh
from PIL import Image

from pipeline.bake import bake_ao, bake_normal_map, tangent_frames, texel_surface
from pipeline.context import Deadline, StageContext
from pipeline.render.geometry import vertex_normals
from pipeline.render.raster import rasterize_uv
from pipeline.request import JobRequest
from pipeline.texture import run_texture_stage
from pipeline.types import MeshData, MeshResult, PreparedView, ViewSet
from pipeline.uv import unwrap

REPO = Path(__file__).resolve().parent.parent


def _timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def _decimate(mesh: MeshData, faces: int) -> MeshData:
    v, f = fast_simplification.simplify(mesh.vertices, mesh.faces, target_count=faces)
    return MeshData(v.astype(np.float32), f.astype(np.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = args.device
    bunny = trimesh.load(REPO / "tests" / "data" / "stanford-bunny.obj", process=False)
    centre = bunny.bounds.mean(0)
    vertices = ((bunny.vertices - centre) * (0.9 / np.abs(bunny.vertices - centre).max())).astype(np.float32)
    dense = MeshData(vertices, bunny.faces.astype(np.int32))
    ctx = StageContext("texture", Deadline(3600))
    times: dict[str, Any] = {"device": device, "threads": torch.get_num_threads()}

    low = _decimate(dense, 40_000)
    times["unwrap_40k_2048"], (v, f, uv, vmap) = _timed("cpu", lambda: unwrap(low, ctx=ctx, texture_size=2048))
    faces_t = torch.as_tensor(f.astype(np.int64), device=device)
    uv_t = torch.as_tensor(uv, device=device)
    rasterize_uv(uv_t, faces_t, 256)  # warm-up (CUDA context, kernels)
    times["uv_raster_40k_2048"], _ = _timed(device, lambda: rasterize_uv(uv_t, faces_t, 2048))
    normals = vertex_normals(low.vertices, low.faces)[vmap]
    tangents = tangent_frames(v, f, uv, normals)
    times["surface_1024"], surface = _timed(
        device, lambda: texel_surface(v, f, uv, normals, size=1024, device=device, ctx=ctx))
    times["normal_bake_40k_1024"], _ = _timed(device, lambda: bake_normal_map(
        (v, f, uv, normals, tangents), dense, size=1024, ctx=ctx, surface=surface, device=device))
    times["ao_bake_40k_1024"], _ = _timed(device, lambda: bake_ao(low, surface, ctx=ctx, device=device))

    low20 = _decimate(dense, 20_000)
    rgba = np.array(Image.open(REPO / "examples" / "lantern.png").convert("RGBA").resize((512, 512)))
    views = ViewSet(views={"front": PreparedView("front", rgba, "input", 0.0)}, sources=[])
    request = JobRequest.model_validate({"image_base64": "AA==", "shape_model": "silhouette", "texture_size": 1024})
    stamps: list[tuple[float, str]] = []
    stage_ctx = StageContext(
        "texture", Deadline(3600), progress=lambda s, p, m: stamps.append((time.perf_counter(), m))
    )
    times["texture_stage_20k_1024"], _ = _timed(
        device, lambda: run_texture_stage(request, views, MeshResult(low20, dense, {}), stage_ctx, device=device))
    phases: dict[str, float] = {}
    for (t0, message), (t1, _) in zip(stamps, stamps[1:]):
        key = message.split(" view ")[0]
        phases[key] = phases.get(key, 0.0) + t1 - t0
    times["texture_stage_phases"] = {k: round(s, 3) for k, s in phases.items()}
    print(json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in times.items()}, indent=1))


if __name__ == "__main__":
    main()
