"""Time the texture stage step by step on random-weight Hunyuan3D-Paint models of the real size.

    python -m bench.texture_gpu --device cuda                  # paint v2-0: 30 steps, 2048 maps, 40k faces
    python -m bench.texture_gpu --device cuda --turbo          # turbo: 10 LCM steps without guidance
    python -m bench.texture_gpu --tiny --device cpu            # smoke run (tests use it)

Models are built in memory (tests/tiny_paint_models.py build_paint_models; its docstring says where each
dimension comes from): the dual-stream 2.5D paint UNet and the InstructPix2Pix delight UNet at Stable
Diffusion 2.x size, SD's VAE, SD 2's OpenCLIP text encoder. Random weights make noise images, which cost
the same to generate and back-project as real ones. Upstream's step counts (delight 50, paint 30, turbo 10)
and view size (512) are used. The mesh: the Stanford bunny subdivided to a dense mesh (baked from) and
decimated to --faces, unwrapped with xatlas (not timed). Timed steps, each synchronised: delight, render
(normal + position maps of six views), diffusion, back-projection (UV raster + merge), fill (unseen texels
+ gutters), UV raster alone, normal bake and AO bake at --size. Peak GPU memory covers everything after the
models are built; a warm-up run precedes the timed ones (except with --tiny). Prints a Markdown table and
JSON.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from bench.report import run_cli
from models.cuda_graphs import graph_forward
from pipeline import meshops
from pipeline.bake import bake_ao, bake_normal_map, tangent_frames, texel_surface
from pipeline.context import Deadline, StageContext
from pipeline.dilation import dilate_maps
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
from pipeline.render.raster import rasterize_uv
from pipeline.types import MeshData, PreparedView
from pipeline.uv import unwrap
from tests.tiny_paint_models import build_paint_models

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
ROOT = Path(__file__).resolve().parent.parent
BUNNY = ROOT / "tests" / "data" / "stanford-bunny.obj"
EXAMPLE = ROOT / "examples" / "lantern.png"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(device: str, times: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    times[name] = time.perf_counter() - started
    return result


def bench_meshes(faces: int, tiny: bool) -> tuple[MeshData, MeshData]:
    """(dense, low): the bunny subdivided past 4x `faces` (an icosphere when tiny), and decimated to `faces`."""
    if tiny:
        dense = trimesh.creation.icosphere(subdivisions=4, radius=0.9)
    else:
        dense = trimesh.load(BUNNY, force="mesh", process=True)
        while len(dense.faces) < 4 * faces:
            dense = dense.subdivide()
    dense_mesh = MeshData(dense.vertices.astype(np.float32), dense.faces.astype(np.int32))
    dense_mesh = meshops.normalize_to_unit_box(dense_mesh)
    return dense_mesh, meshops.decimate(dense_mesh, faces)


def front_view(size: int) -> PreparedView:
    from PIL import Image

    rgba = np.asarray(Image.open(EXAMPLE).convert("RGBA").resize((size, size)))
    return PreparedView(name="front", rgba=rgba, source="input", azimuth=0.0)


def run_once(models: Any, front: PreparedView, low: tuple[np.ndarray, ...], dense: MeshData, args: argparse.Namespace,
             device: str) -> dict[str, float]:
    ctx = StageContext("texture", Deadline(3600.0))
    vertices, faces, uvs = low
    times: dict[str, float] = {}
    reference = _timed(device, times, "delight", lambda: delight(front.rgba, models, seed=0, ctx=ctx))
    normalized, _, _ = normalize_for_views(vertices)
    normals = welded_vertex_normals(normalized, faces)
    maps = _timed(device, times, "render", lambda: render_view_maps(
        normalized, faces, normals, size=models.view_size, device=device))
    camera_info = [camera_index(a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    views = _timed(device, times, "diffusion", lambda: generate_views(
        reference, maps.normal, maps.position, camera_info, models, steps=args.steps or models.steps, seed=0, ctx=ctx))
    cameras = [view_camera(a, e, models.view_size) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    faces_t = torch.as_tensor(faces.astype(np.int64), device=device)

    def back_project() -> tuple[Any, torch.Tensor, torch.Tensor]:
        surface = texel_surface(normalized, faces, uvs, normals, size=args.size, device=device, ctx=ctx)
        texture, seen = merge_views(views, cameras, VIEW_WEIGHTS, surface,
                                    torch.as_tensor(normalized, device=device), faces_t)
        return surface, texture, seen

    surface, texture, seen = _timed(device, times, "back_projection", back_project)

    covered = surface.mask.cpu().numpy()
    filled = _timed(device, times, "fill_unseen", lambda: fill_unseen(
        texture.cpu().numpy(), seen.cpu().numpy(), covered, surface.position.cpu().numpy()))
    _timed(device, times, "fill_gutters",
           lambda: dilate_maps({"albedo": filled}, covered, pixels=args.size, device=device))
    times["fill"] = times["fill_unseen"] + times["fill_gutters"]
    _timed(device, times, "uv_raster", lambda: rasterize_uv(torch.as_tensor(uvs, device=device), faces_t, args.size))
    world_normals = meshops.vertex_normals(vertices, faces)
    tangents = tangent_frames(vertices, faces, uvs, world_normals)
    world_surface = texel_surface(vertices, faces, uvs, world_normals, size=args.size, device=device, ctx=ctx)
    _timed(device, times, "normal_bake", lambda: bake_normal_map(
        (vertices, faces, uvs, world_normals, tangents), dense, size=args.size, ctx=ctx, surface=world_surface,
        device=device))
    _timed(device, times, "ao_bake", lambda: bake_ao(
        dense, world_surface, samples=args.ao_samples, resolution=args.ao_resolution, ctx=ctx, device=device))
    times["stage_total"] = sum(times[k] for k in ("delight", "render", "diffusion", "back_projection", "fill",
                                                  "normal_bake", "ao_bake"))
    times["seen_fraction"] = float(seen.sum()) / max(float(surface.mask.sum()), 1.0)
    return times


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    size = "tiny" if args.tiny else "real"
    device = args.device
    dtype = DTYPES[args.dtype or ("fp16" if device.startswith("cuda") else "fp32")]
    started = time.perf_counter()
    models = build_paint_models(size, device=device, dtype=dtype, turbo=args.turbo)
    if device.startswith("cuda") and not args.no_cuda_graphs:  # as the worker does (CUDA_GRAPHS, default on)
        graph_forward(models.delight.unet)
    if args.tiny:
        models.delight_steps = 2
    build_seconds = time.perf_counter() - started
    dense, low_mesh = bench_meshes(args.faces, args.tiny)
    unwrap_ctx = StageContext("texture", Deadline(3600.0))
    vertices, faces, uvs, _ = unwrap(low_mesh, ctx=unwrap_ctx, texture_size=args.size)
    front = front_view(512)
    if not args.tiny:  # the tiny smoke run skips the warm-up
        run_once(models, front, (vertices, faces, uvs), dense, args, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    runs = [run_once(models, front, (vertices, faces, uvs), dense, args, device) for _ in range(args.repeats)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {
        "model": models.name, "size": size, "device": device, "dtype": str(dtype).removeprefix("torch."),
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__, "texture_size": args.size, "faces": int(len(faces)),
        "dense_faces": int(len(dense.faces)),
        "steps": args.steps or models.steps, "delight_steps": models.delight_steps, "view_size": models.view_size,
        "cuda_graphs": device.startswith("cuda") and not args.no_cuda_graphs,
        "ao_samples": args.ao_samples, "ao_resolution": args.ao_resolution, "repeats": args.repeats,
        "build_seconds": build_seconds, "median": median,
        "parameters": {"paint_unet": sum(p.numel() for p in models.multiview.unet.parameters()),
                       "delight_unet": sum(p.numel() for p in models.delight.unet.parameters()),
                       "delight_text_encoder": sum(p.numel() for p in models.delight.text_encoder.parameters()),
                       "vae": sum(p.numel() for p in models.multiview.vae.parameters())},
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None,
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["median"]
    rows = ["| step | seconds |", "| --- | --- |"]
    for key in ("delight", "render", "diffusion", "back_projection", "fill_unseen", "fill_gutters", "fill", "uv_raster",
                "normal_bake", "ao_bake", "stage_total"):
        rows.append(f"| {key} | {m[key]:.3f} |")
    peak = result["peak_gpu_gib"]
    rows.append(f"| peak GPU memory | {'n/a' if peak is None else f'{peak:.2f} GiB'} |")
    head = (f"{result['model']} ({result['size']}, {result['dtype']}) on {result['device_name']}: "
            f"{result['faces']} faces, {result['texture_size']}^2 maps, {result['steps']} steps, "
            f"median of {result['repeats']}")
    return head + "\n\n" + "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.texture_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models on small inputs (CPU smoke test)")
    parser.add_argument("--turbo", action="store_true", help="the turbo paint model (LCM, no guidance)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="multiview steps (default: the model's)")
    parser.add_argument("--size", type=int, default=None, help="texture size (default 2048; 256 with --tiny)")
    parser.add_argument("--faces", type=int, default=None, help="low-mesh faces (default 40000; 1280 with --tiny)")
    parser.add_argument("--ao-samples", type=int, default=None, help="AO directions (default 64; 4 with --tiny)")
    parser.add_argument("--ao-resolution", type=int, default=None, help="AO depth maps (default 512; 64 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="run the de-light UNet eagerly (the worker with CUDA_GRAPHS=0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    args.size = args.size or (256 if args.tiny else 2048)
    args.faces = args.faces or (1280 if args.tiny else 40_000)
    args.ao_samples = args.ao_samples or (4 if args.tiny else 64)
    args.ao_resolution = args.ao_resolution or (64 if args.tiny else 512)
    if args.tiny and args.steps is None:
        args.steps = 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
