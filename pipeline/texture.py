"""The texture stage: UV unwrap, albedo, baked normal map and AO, uniform roughness/metallic, ORM."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.bake import TexelSurface, bake_ao, bake_normal_map, tangent_frames, texel_surface
from pipeline.context import StageContext
from pipeline.dilation import dilate_maps
from pipeline.errors import ModelUnavailableError
from pipeline.render.geometry import vertex_normals
from pipeline.render.projection import MIRROR_WEIGHT, fill_unseen, mirrored_back, project_views
from pipeline.request import JobRequest
from pipeline.types import VIEW_NAMES, MeshData, MeshResult, PreparedView, TexturedMesh, ViewSet, angled_view_name
from pipeline.uv import start_unwrap, uv_quality

if TYPE_CHECKING:
    from models.manager import ModelManager

PAINT_MODELS = ("hunyuan3d-paint", "hunyuan3d-paint-turbo")
AO_SAMPLES = 64


def _span(ctx: StageContext, start: float, end: float) -> StageContext:
    """A context whose report(0..1) covers [start, end] of this stage's own progress."""
    lo, hi = ctx.span
    return dataclasses.replace(ctx, span=(lo + (hi - lo) * start, lo + (hi - lo) * end))


def _to_uint8(values: np.ndarray) -> np.ndarray:  # floats in [0, 1] -> uint8
    return np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _uniform(value: float, size: int) -> np.ndarray:  # [S, S] uint8
    return np.full((size, size), int(round(value * 255.0)), dtype=np.uint8)


def _projection_albedo(
    views: ViewSet, vertices: np.ndarray, faces: np.ndarray, surface: TexelSurface, ctx: StageContext, device: str
) -> tuple[np.ndarray, dict[str, Any]]:  # ([S, S, 3] uint8 sRGB, info)
    """Project the front view (and its mirror onto the back when no back photo exists) and any other
    input views into UV space; texels no view saw take the colour of the nearest seen texel in 3D."""
    ordered = [views.views[name] for name in VIEW_NAMES if name in views.views]
    ordered += [view for name, view in views.views.items() if name not in VIEW_NAMES]
    weights: dict[str, float] = {}
    if "back" not in views.views:
        mirror = mirrored_back(views.front)
        ordered.append(mirror)
        weights[mirror.name] = MIRROR_WEIGHT
    mask = surface.mask.flatten()
    points = surface.position.view(-1, 3)[mask]
    normals = surface.normal.view(-1, 3)[mask]
    rgb, seen = project_views(
        ordered,
        torch.as_tensor(vertices, dtype=torch.float32, device=device),
        torch.as_tensor(faces.astype(np.int64), device=device),
        points,
        normals,
        ctx=ctx,
        weights=weights,
    )
    seen_np = seen.cpu().numpy()
    filled = fill_unseen(rgb.cpu().numpy(), seen_np, points.cpu().numpy(), check=ctx.check)
    size = surface.size
    albedo = np.zeros((size * size, 3), dtype=np.uint8)
    albedo[mask.cpu().numpy()] = _to_uint8(filled)
    info = {
        "method": "projection",
        "views": [view.name for view in ordered],
        "seen_fraction": round(float(seen_np.mean()) if seen_np.size else 0.0, 4),
    }
    return albedo.reshape(size, size, 3), info


def _generated_views(request: JobRequest, info: dict[str, Any]) -> dict[str, PreparedView]:
    """Paint's pictures (info["images"], taken out) as PreparedViews, so the bundle keeps them in views/."""
    cameras = {angled_view_name("paint", v["azimuth"], v["elevation"]): v for v in info.get("views", [])}
    generated: dict[str, PreparedView] = {}
    for name, pixels in info.pop("images").items():
        rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        camera = cameras.get(name, {"azimuth": 0.0, "elevation": 0.0})
        generated[name] = PreparedView(
            name=name, rgba=rgba, source="generated", azimuth=float(camera["azimuth"]),
            elevation=float(camera["elevation"]), fov=0.0, mask_method=request.texture_model,
        )
    return generated


def _untextured(request: JobRequest, mesh: MeshData) -> TexturedMesh:
    return TexturedMesh(
        vertices=mesh.vertices.astype(np.float32),
        faces=mesh.faces.astype(np.int32),
        uvs=None,
        normals=vertex_normals(mesh.vertices, mesh.faces),
        tangents=None,
        maps={},
        roughness=request.roughness,
        metallic=request.metallic,
        info={"texture": "disabled", "maps": {}, "models": {}},
    )


def run_texture_stage(
    request: JobRequest,
    views: ViewSet,
    mesh: MeshResult,
    ctx: StageContext,
    *,
    device: str = "cpu",
    models: "ModelManager | None" = None,
) -> TexturedMesh:
    """UV-unwrap mesh.mesh and make its maps at request.texture_size: albedo (request.texture_model),
    tangent-space normal map baked from mesh.dense, AO, uniform roughness/metallic and the packed ORM."""
    if not request.texture:
        ctx.report(1.0, "texture disabled: keeping the untextured mesh")
        return _untextured(request, mesh.mesh)
    paint = request.texture_model in PAINT_MODELS
    if paint:
        if models is None:
            raise ModelUnavailableError(
                f"texture_model {request.texture_model!r} needs model weights, and this worker runs without a "
                "model manager",
                stage=ctx.stage,
            )
        models.require(request.texture_model)  # fail before the slow unwrap when weights are missing
    size = request.texture_size
    low = mesh.mesh

    # The unwrap runs in a child process while Paint de-lights and diffuses on the GPU: those read only
    # the surface. Its own seconds are steps.unwrap; steps.unwrap_wait is what the stage still waited for it.
    ctx.report(0.0, "unwrapping UVs")
    pending = start_unwrap(low, texture_size=size, stage=ctx.stage)
    try:
        painted = loaded = None
        if paint:
            from models.paint_loader import paint_models  # only paint jobs need diffusers and hy3dgen's paint
            from pipeline.paint import paint_views

            ctx.report(0.02, f"painting views with {request.texture_model} while the UVs unwrap")
            # The lock serialises model use; paint seeds the global RNG its pipeline samples from.
            with models.lock:
                loaded = paint_models(models, request.texture_model)
                painted = paint_views(views.front, low.vertices.astype(np.float32), low.faces.astype(np.int32),
                                      models=loaded, ctx=_span(ctx, 0.02, 0.3), seed=request.seed, device=device)
        with ctx.timed("unwrap_wait"):
            vertices, faces, uvs, vmapping = pending.wait(ctx)
    finally:
        pending.cancel()
    ctx.steps["unwrap"] = pending.seconds
    uv_info: dict[str, Any] = {"method": "xatlas", "parts": pending.parts, "vertices": len(vertices),
                               "seconds": pending.seconds}
    normals = vertex_normals(low.vertices, low.faces)[vmapping]  # unsplit normals: seams stay smooth
    tangents = tangent_frames(vertices, faces, uvs, normals)

    ctx.report(0.3, "rasterising UV space")
    with ctx.timed("rasterise"):
        surface = texel_surface(vertices, faces, uvs, normals, size=size, device=device, ctx=ctx)
        coverage = surface.mask.cpu().numpy()
    uv_info.update(uv_quality(faces, uvs, vmapping, size, covered=coverage))  # charts, coverage, seam edges

    if painted is not None and loaded is not None:
        from pipeline.paint import bake_painted_views

        albedo, albedo_info = bake_painted_views(
            painted, vertices, faces, uvs, texture_size=size, models=loaded, ctx=_span(ctx, 0.3, 0.45),
            seed=request.seed, device=device, fill_gutters=False,
        )
        albedo_info["method"] = request.texture_model
        generated_views = _generated_views(request, albedo_info)
        albedo_models = albedo_info.pop("models", {})
    else:
        ctx.report(0.3, "projecting views")
        with ctx.timed("projection"):
            albedo, albedo_info = _projection_albedo(views, vertices, faces, surface, _span(ctx, 0.3, 0.45), device)
        generated_views, albedo_models = {}, {}

    ctx.report(0.45, "baking normal map")
    with ctx.timed("normal_bake"):
        normal = bake_normal_map(
            (vertices, faces, uvs, normals, tangents), mesh.dense, size=size, ctx=_span(ctx, 0.45, 0.7),
            surface=surface, device=device,
        )

    ctx.report(0.7, "baking ambient occlusion")
    with ctx.timed("ao_bake"):
        ao = _to_uint8(bake_ao(low, surface, samples=AO_SAMPLES, ctx=_span(ctx, 0.7, 0.95), device=device))

    ctx.report(0.95, "packing maps")
    # every empty texel is filled (pixels=size), so mipmaps and bilinear filtering never read an empty one
    with ctx.timed("dilation"):  # one nearest-texel search for the three maps
        maps = dilate_maps({"albedo": albedo, "normal": normal, "ao": ao}, surface.mask, pixels=size, device=device)
    maps["roughness"] = _uniform(request.roughness, size)
    maps["metallic"] = _uniform(request.metallic, size)
    maps["orm"] = np.stack([maps["ao"], maps["roughness"], maps["metallic"]], axis=-1)
    details: dict[str, dict[str, Any]] = {
        "albedo": {**albedo_info, "size": size},
        "normal": {"method": "baked", "size": size, "source_faces": int(len(mesh.dense.faces))},
        "ao": {"method": "baked", "size": size, "samples": AO_SAMPLES},
        "roughness": {"method": "uniform", "size": size, "value": request.roughness},
        "metallic": {"method": "uniform", "size": size, "value": request.metallic},
        "orm": {"method": "packed", "size": size, "channels": "R=ao G=roughness B=metallic"},
    }
    ctx.report(1.0, "texture maps ready")
    return TexturedMesh(
        vertices=vertices,
        faces=faces,
        uvs=uvs,
        normals=normals,
        tangents=tangents,
        maps=maps,
        roughness=request.roughness,
        metallic=request.metallic,
        info={
            "maps": {name: details[name]["method"] for name in maps},  # what meta.json reads per map
            "models": albedo_models,  # empty for projection: it and the bakes use no model weights
            "generated_views": generated_views,  # PreparedViews for the bundle; run_pipeline moves them
            "texture_size": size,
            "uv": uv_info,
            "coverage": round(float(coverage.mean()), 4),
            **details,
        },
    )
