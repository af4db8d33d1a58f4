"""Albedo with Hunyuan3D-Paint 2.0, orchestrated here and rendered with our own rasteriser.

    de-light the front view -> render normal + position maps of six views -> multiview diffusion ->
    back-project each view into UV space (depth test, cos^4 weights) -> merge -> fill unseen -> dilate

hy3dgen provides the model classes (2.5D UNet, HunyuanPaintPipeline) and the settings; its MeshRender,
custom_rasterizer and hard-coded 'cuda' are not used. Every step runs on the device it is given.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from models.paint_loader import PaintModels
from models.registry import get_spec
from pipeline.bake import texel_surface
from pipeline.context import StageContext
from pipeline.dilation import dilate_maps
from pipeline.errors import InputError
from pipeline.paint_bake import fill_unseen, merge_views
from pipeline.paint_diffusion import delight, generate_views
from pipeline.paint_views import (
    VIEW_AZIMUTHS,
    VIEW_ELEVATIONS,
    VIEW_WEIGHTS,
    camera_index,
    normalize_for_views,
    render_view_maps,
    view_camera,
    welded_vertex_normals,
)
from pipeline.types import PreparedView, angled_view_name

MAX_STEPS = 100


def describe_models(models: PaintModels) -> dict[str, dict[str, Any]]:
    """meta.json's record of the two models that ran: role -> {name, repo_id, revision, ...}."""
    paint = get_spec(models.name)
    roles = {"paint": paint, "delight": get_spec(paint.requires[0])}
    return {
        role: {"name": spec.name, "repo_id": spec.repo_id, "revision": spec.revision, "subfolder": spec.subfolder,
               "dtype": str(models.dtype).removeprefix("torch."), "device": models.device, "licence": spec.licence}
        for role, spec in roles.items()
    }


def paint_albedo(
    front: PreparedView,
    vertices: np.ndarray,  # [V, 3] float32 world frame, split at UV seams
    faces: np.ndarray,  # [F, 3] int32, counter-clockwise seen from outside
    uvs: np.ndarray,  # [V, 2] float32 glTF UVs
    *,
    texture_size: int,
    models: PaintModels,
    ctx: StageContext,
    seed: int,
    steps: int | None = None,
    device: str,
) -> tuple[np.ndarray, dict[str, Any]]:  # (albedo [S, S, 3] uint8 sRGB, info)
    """Paint the mesh's albedo from the front view. Every texel of the map is filled: texels on the mesh
    that no generated view saw take the nearest seen colour, texels between charts are dilated.

    info is JSON-ready except info["images"]: name -> [N, N, 3] uint8 of the de-lit front view
    ("delit_front") and the six generated views ("paint_az090_elp00", ...), for the bundle's views/ folder;
    take it out before writing meta.json."""
    steps = models.steps if steps is None else int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise InputError("steps", f"must be between 1 and {MAX_STEPS} for {models.name}, got {steps}")
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[name] = round(now - clock, 3)
        clock = now

    reference = delight(front.rgba, models, seed=seed, ctx=ctx)
    lap("delight")

    ctx.report(0.1, "rendering geometry views")
    normalized, _, _ = normalize_for_views(vertices)
    normals = welded_vertex_normals(normalized, faces)
    maps = render_view_maps(normalized, faces, normals, size=models.view_size, device=device, check=ctx.check)
    lap("render")

    camera_info = [camera_index(a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    views = generate_views(reference, maps.normal, maps.position, camera_info, models, steps=steps, seed=seed, ctx=ctx)
    lap("diffusion")

    ctx.report(0.8, "projecting views onto the texture")
    surface = texel_surface(normalized, faces, uvs, normals, size=texture_size, device=device, ctx=ctx)
    cameras = [view_camera(a, e, models.view_size) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    texture, seen = merge_views(
        views.to(device), cameras, VIEW_WEIGHTS, surface,
        torch.as_tensor(normalized, device=device), torch.as_tensor(faces.astype(np.int64), device=device),
        check=ctx.check,
    )
    lap("back_projection")

    ctx.report(0.9, "filling unseen texels")
    covered = surface.mask.cpu().numpy()
    seen_np = seen.cpu().numpy()
    filled = fill_unseen(texture.cpu().numpy(), seen_np, covered, surface.position.cpu().numpy(), seed=seed)
    filled = dilate_maps({"albedo": filled}, covered, pixels=texture_size, device=device)["albedo"]  # seam gutters
    albedo_u8 = np.round(np.clip(filled, 0.0, 1.0) * 255.0).astype(np.uint8)
    lap("fill")

    images = {"delit_front": np.asarray(reference)}
    for (azimuth, elevation), view in zip(zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS), views):
        pixels = np.round(view.permute(1, 2, 0).cpu().numpy() * 255.0).astype(np.uint8)
        images[angled_view_name("paint", azimuth, elevation)] = pixels
    covered_count = max(int(covered.sum()), 1)
    info = {
        "method": "hunyuan3d-paint",
        "models": describe_models(models),
        "views": [{"azimuth": a, "elevation": e, "weight": w, "camera_id": c}
                  for a, e, w, c in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS, VIEW_WEIGHTS, camera_info)],
        "view_size": models.view_size,
        "steps": steps,
        "turbo": models.turbo,
        "seed": seed,
        "seen_fraction": round(float(seen_np.sum()) / covered_count, 4),
        "seconds": seconds,
        "images": images,
    }
    return albedo_u8, info
