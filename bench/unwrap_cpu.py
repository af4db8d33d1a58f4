"""Time the texture stage's UV unwrap (`pipeline.uv.unwrap`, xatlas in its child process) on game meshes.

    python -m bench.unwrap_cpu                               # 40k faces, 2048 atlas, parts 1 (reference) and default
    python -m bench.unwrap_cpu --parts 1,2,4,8,16,32 --repeats 1
    python -m bench.unwrap_cpu --meshes bunny,blobs --parts 1,16 --options   # also sweep xatlas options

Meshes, each scaled to the unit box as the shape stage leaves it (xatlas derives its texel scale from the
surface area, so the scale matters) and reduced with `meshops.decimate` to --target-faces:
- bunny: tests/data/stanford-bunny.obj (69k faces);
- spot, fandisk: tests/data/spot/spot_triangulated.obj (5.9k) and tests/data/fandisk.obj (13k, sharp CAD
  edges), first subdivided (each triangle into 4) until they have more faces than the target;
- blobs: marching cubes (scikit-image) of five overlapping Gaussian metaballs on a 160^3 grid, what the
  shape model's decoder makes of a lumpy object.
Each row is `unwrap(..., parts=P)` (the real function, child process included): the median wall seconds of
--repeats runs, the child's CPU seconds (user + sys: the total work, what more cores can share), the
atlas quality of `pipeline.uv.uv_quality` (charts, coverage = fraction of texels inside charts at the texture size,
seam edges = original edges the unwrap split), the vertices after splitting, and the UV stretch: Sander's L2
stretch of each face with the atlas scaled to the surface's area (1 = no distortion), area-weighted RMS over
the mesh and its maximum. "pack s" is xatlas packing the unwrap's own charts again (add_uv_mesh, same
PackOptions): the serial part that more cores cannot share.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from bench.report import run_cli
from pipeline import meshops
from pipeline.context import Deadline, StageContext
from pipeline.types import MeshData
from pipeline.uv import atlas_uvs, chart_padding, default_parts, unwrap, uv_quality

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MESHES = ("bunny", "spot", "fandisk", "blobs")

# (name, ChartOptions overrides, PackOptions overrides) for --options; names are the row labels.
OPTION_SWEEP: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = (
    ("defaults", {}, {}),
    ("max_iterations=0", {"max_iterations": 0}, {}),
    ("max_iterations=2", {"max_iterations": 2}, {}),
    ("max_cost=4", {"max_cost": 4.0}, {}),
    ("max_cost=8", {"max_cost": 8.0}, {}),
    ("straightness_weight=0", {"straightness_weight": 0.0}, {}),
    ("normal_seam_weight=1", {"normal_seam_weight": 1.0}, {}),
    ("fix_winding", {"fix_winding": True}, {}),
    ("blockAlign", {}, {"blockAlign": True}),
    ("bruteForce", {}, {"bruteForce": True}),
    ("bilinear=False", {}, {"bilinear": False}),
    ("rotate_charts=False", {}, {"rotate_charts": False}),
)


def _subdivided(mesh: MeshData, target_faces: int) -> MeshData:
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    while len(faces) <= target_faces:
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    return MeshData(vertices.astype(np.float32), faces.astype(np.int32))


def _blobs() -> MeshData:
    from skimage import measure

    axis = np.linspace(-1.0, 1.0, 160, dtype=np.float32)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    centres = [(-0.35, 0.0, 0.0, 0.35), (0.3, 0.1, 0.05, 0.3), (0.0, 0.45, -0.1, 0.22),
               (0.05, -0.4, 0.2, 0.25), (0.5, -0.3, -0.3, 0.15)]  # x, y, z, radius
    field = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (r * r)) for cx, cy, cz, r in centres)
    vertices, faces, _, _ = measure.marching_cubes(field, level=0.5)
    return MeshData(vertices.astype(np.float32), faces.astype(np.int32))


def load_mesh(name: str, target_faces: int) -> MeshData:
    """The game mesh the texture stage would get: unit box, decimated to target_faces."""
    if name == "blobs":
        mesh = _blobs()
    else:
        path = {"bunny": "stanford-bunny.obj", "spot": "spot/spot_triangulated.obj", "fandisk": "fandisk.obj"}[name]
        loaded = trimesh.load(DATA / path, process=False)
        mesh = _subdivided(MeshData(loaded.vertices.astype(np.float32), loaded.faces.astype(np.int32)), target_faces)
    return meshops.decimate(meshops.normalize_to_unit_box(mesh), target_faces)


def stretch(
    positions: np.ndarray,  # [V', 3]
    faces: np.ndarray,  # [F, 3]
    uvs: np.ndarray,  # [V', 2]
) -> tuple[float, float]:
    """(area-weighted RMS, max) of Sander's L2 stretch per face, the atlas scaled to the surface's area."""
    p, t = positions.astype(np.float64)[faces], uvs.astype(np.float64)[faces]
    q1, q2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    u1, u2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    uv_area = 0.5 * (u1[:, 0] * u2[:, 1] - u1[:, 1] * u2[:, 0])
    area = 0.5 * np.linalg.norm(np.cross(q1, q2), axis=1)
    keep = (np.abs(uv_area) > 1e-14) & (area > 0)
    q1, q2, u1, u2, uv_area, area = q1[keep], q2[keep], u1[keep], u2[keep], uv_area[keep], area[keep]
    # d position / du and / dv (Sander et al. 2001), then the atlas scaled so both areas match.
    ds = (q1 * u2[:, 1:2] - q2 * u1[:, 1:2]) / (2 * uv_area[:, None])
    dt = (q2 * u1[:, 0:1] - q1 * u2[:, 0:1]) / (2 * uv_area[:, None])
    l2 = np.sqrt(((ds * ds).sum(1) + (dt * dt).sum(1)) / 2) * np.sqrt(np.abs(uv_area).sum() / area.sum())
    return float(np.sqrt((l2 * l2 * area).sum() / area.sum())), float(l2.max())


def pack_seconds(uvs: np.ndarray, faces: np.ndarray, texture_size: int) -> float:
    """xatlas packing the unwrap's charts again, on their own (same PackOptions as `atlas_uvs`)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_uv_mesh(np.ascontiguousarray(uvs, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = texture_size, chart_padding(texture_size), True
    started = time.perf_counter()
    atlas.generate(xatlas.ChartOptions(), pack)
    return time.perf_counter() - started


def _row(mesh: MeshData, result: tuple[np.ndarray, ...], texture_size: int) -> dict[str, Any]:
    vertices, faces, uvs, vmapping = result
    mean, worst = stretch(vertices, faces, uvs)
    return {**uv_quality(faces, uvs, vmapping, texture_size), "vertices": len(vertices),
            "stretch_mean": round(mean, 4), "stretch_max": round(worst, 2)}


def run_parts(mesh: MeshData, parts: int, args: argparse.Namespace) -> dict[str, Any]:
    seconds, cpu = [], []
    for _ in range(args.repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = unwrap(mesh, ctx=StageContext("texture", Deadline(600)), texture_size=args.texture_size, parts=parts)
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {"parts": parts, "seconds": round(statistics.median(seconds), 3),
            "cpu_seconds": round(statistics.median(cpu), 3), **_row(mesh, result, args.texture_size),
            "pack_seconds": round(pack_seconds(result[2], result[1], args.texture_size), 3)}


def run_options(mesh: MeshData, parts: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """In-process `atlas_uvs` (no child process) with each OPTION_SWEEP override."""
    vertices = np.ascontiguousarray(mesh.vertices, np.float32)
    faces = np.ascontiguousarray(mesh.faces, np.uint32)
    rows = []
    for name, chart, pack in OPTION_SWEEP:
        started = time.perf_counter()
        out = atlas_uvs(vertices, faces, args.texture_size, parts=parts, chart_options=chart, pack_options=pack)
        seconds = time.perf_counter() - started
        vmapping = out["vmapping"].astype(np.int64)
        result = (vertices[vmapping], out["faces"], out["uvs"], vmapping)
        rows.append({"options": name, "parts": parts, "seconds": round(seconds, 3),
                     **_row(mesh, result, args.texture_size)})
    return rows


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "target_faces": args.target_faces, "texture_size": args.texture_size, "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "default_parts": default_parts(args.target_faces), "meshes": {},
    }
    for name in args.meshes:
        mesh = load_mesh(name, args.target_faces)
        parts = args.parts or sorted({1, default_parts(len(mesh.faces))})
        entry: dict[str, Any] = {"faces": len(mesh.faces), "rows": [run_parts(mesh, p, args) for p in parts]}
        if args.options:
            entry["options"] = [row for p in parts for row in run_options(mesh, p, args)]
        result["meshes"][name] = entry
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['target_faces']} faces, {result['texture_size']}² atlas, {result['cores']} cores "
             f"({result['cpu']}), default parts {result['default_parts']}, median of {result['repeats']}", "",
             "| mesh | parts | seconds | CPU s | pack s | charts | coverage | seam edges | vertices | stretch mean "
             "| stretch max |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in result["meshes"].items():
        lines += [f"| {name} | {r['parts']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['pack_seconds']:.2f} | "
                  f"{r['charts']} | {r['coverage']:.3f} | {r['seam_edges']} | {r['vertices']} | "
                  f"{r['stretch_mean']:.3f} | {r['stretch_max']:.1f} |" for r in entry["rows"]]
    sweeps = [(name, row) for name, entry in result["meshes"].items() for row in entry.get("options", [])]
    if sweeps:
        lines += ["", "| mesh | options (in-process) | parts | seconds | charts | coverage | seam edges | vertices | "
                  "stretch mean | stretch max |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['options']} | {r['parts']} | {r['seconds']:.2f} | {r['charts']} | "
                  f"{r['coverage']:.3f} | {r['seam_edges']} | {r['vertices']} | {r['stretch_mean']:.3f} | "
                  f"{r['stretch_max']:.1f} |" for name, r in sweeps]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.unwrap_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", type=lambda s: s.split(","), default=list(MESHES), help=",".join(MESHES))
    parser.add_argument("--parts", type=lambda s: [int(p) for p in s.split(",")], default=None,
                        help="comma-separated part counts (default: 1 and pipeline.uv.default_parts)")
    parser.add_argument("--target-faces", type=int, default=40_000)
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--options", action="store_true", help="also sweep xatlas options in-process")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
