"""Albedo with Hunyuan3D-Paint 2.0, orchestrated here and rendered with our own rasteriser.

    de-light the front view -> render normal + position maps of six views -> multiview diffusion ->
    back-project each view into UV space (depth test, cos^4 weights) -> merge -> fill unseen -> dilate

hy3dgen provides the model classes (2.5D UNet, HunyuanPaintPipeline) and the settings; its MeshRender,
custom_rasterizer and hard-coded 'cuda' are not used. Every step runs on the device it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class PaintedViews:
    """What the diffusion half of Paint makes from the front view and the mesh's geometry (no UVs needed)."""

    reference: np.ndarray  # [N, N, 3] uint8, the de-lit front view
    views: torch.Tensor  # [6, 3, T, T] float in [0, 1], one per (VIEW_AZIMUTHS, VIEW_ELEVATIONS) camera
    camera_info: list[int]  # upstream camera ids
    steps: int


def paint_views(
    front: PreparedView,
    vertices: np.ndarray,  # [V, 3] float32 world frame (split at UV seams or not: the same surface)
    faces: np.ndarray,  # [F, 3] int32, counter-clockwise seen from outside
    *,
    models: PaintModels,
    ctx: StageContext,
    seed: int,
    steps: int | None = None,
    device: str,
) -> PaintedViews:
    """De-light the front view, render the mesh's normal and position maps for the six cameras and run the
    multiview diffusion. Reads only the surface, so the texture stage runs it while the UV unwrap runs."""
    steps = models.steps if steps is None else int(steps)
    if not 1 <= steps <= MAX_STEPS:
        raise InputError("steps", f"must be between 1 and {MAX_STEPS} for {models.name}, got {steps}")
    with ctx.timed("delight"):
        reference = delight(front.rgba, models, seed=seed, ctx=ctx)
    ctx.report(0.1, "rendering geometry views")
    with ctx.timed("render_views"):
        normalized, _, _ = normalize_for_views(vertices)
        normals = welded_vertex_normals(normalized, faces)
        maps = render_view_maps(normalized, faces, normals, size=models.view_size, device=device, check=ctx.check)
    camera_info = [camera_index(a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    with ctx.timed("diffusion"):
        views = generate_views(reference, maps.normal, maps.position, camera_info, models, steps=steps, seed=seed,
                               ctx=ctx)
    return PaintedViews(reference=np.asarray(reference), views=views, camera_info=camera_info, steps=steps)


def bake_painted_views(
    painted: PaintedViews,
    vertices: np.ndarray,  # [V, 3] float32 world frame, split at UV seams
    faces: np.ndarray,  # [F, 3] int32
    uvs: np.ndarray,  # [V, 2] float32 glTF UVs
    *,
    texture_size: int,
    models: PaintModels,
    ctx: StageContext,
    seed: int,
    device: str,
    fill_gutters: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:  # (albedo [S, S, 3] uint8 sRGB, info)
    """Back-project the painted views into the UV atlas (depth test, cos^4 weights), fill unseen texels with
    the nearest seen colour and (`fill_gutters`) texels between charts by dilation; the texture stage leaves
    the gutters to its one dilation of every map. info as `paint_albedo`'s."""
    ctx.report(0.8, "projecting views onto the texture")
    with ctx.timed("back_projection"):
        normalized, _, _ = normalize_for_views(vertices)
        normals = welded_vertex_normals(normalized, faces)
        surface = texel_surface(normalized, faces, uvs, normals, size=texture_size, device=device, ctx=ctx)
        cameras = [view_camera(a, e, models.view_size) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
        texture, seen = merge_views(
            painted.views.to(device), cameras, VIEW_WEIGHTS, surface,
            torch.as_tensor(normalized, device=device), torch.as_tensor(faces.astype(np.int64), device=device),
            check=ctx.check,
        )
    ctx.report(0.9, "filling unseen texels")
    with ctx.timed("fill"):
        covered = surface.mask.cpu().numpy()
        seen_np = seen.cpu().numpy()
        filled = fill_unseen(texture.cpu().numpy(), seen_np, covered, surface.position.cpu().numpy(), seed=seed)
        if fill_gutters:
            filled = dilate_maps({"albedo": filled}, covered, pixels=texture_size, device=device)["albedo"]
        albedo_u8 = np.round(np.clip(filled, 0.0, 1.0) * 255.0).astype(np.uint8)

    images = {"delit_front": painted.reference}
    for (azimuth, elevation), view in zip(zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS), painted.views):
        pixels = np.round(view.permute(1, 2, 0).cpu().numpy() * 255.0).astype(np.uint8)
        images[angled_view_name("paint", azimuth, elevation)] = pixels
    covered_count = max(int(covered.sum()), 1)
    info = {
        "method": "hunyuan3d-paint",
        "models": describe_models(models),
        "views": [{"azimuth": a, "elevation": e, "weight": w, "camera_id": c}
                  for a, e, w, c in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS, VIEW_WEIGHTS, painted.camera_info)],
        "view_size": models.view_size,
        "steps": painted.steps,
        "turbo": models.turbo,
        "seed": seed,
        "seen_fraction": round(float(seen_np.sum()) / covered_count, 4),
        "images": images,
    }
    return albedo_u8, info


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
    """Paint the mesh's albedo from the front view: `paint_views` then `bake_painted_views`. Every texel of
    the map is filled: texels on the mesh that no generated view saw take the nearest seen colour, texels
    between charts are dilated.

    info is JSON-ready except info["images"]: name -> [N, N, 3] uint8 of the de-lit front view
    ("delit_front") and the six generated views ("paint_az090_elp00", ...), for the bundle's views/ folder;
    take it out before writing meta.json. The step seconds go to ctx.steps."""
    painted = paint_views(front, vertices, faces, models=models, ctx=ctx, seed=seed, steps=steps, device=device)
    return bake_painted_views(painted, vertices, faces, uvs, texture_size=texture_size, models=models, ctx=ctx,
                              seed=seed, device=device)
