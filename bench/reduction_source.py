"""May the shape stage reduce a coarser extraction? Distances of each reduced mesh to the dense surface.

    python -m bench.reduction_source                          # octree 384, 40k faces, bunny/fandisk/spot
    python -m bench.reduction_source --target-faces 10000 --meshes spot --strides 1,2 --repeats 1

The field is a real mesh's clipped signed distance on hy3dgen's grid (bench/mesh_field.py: |logit| < 1
within a cell of the surface, as a trained decoder's). For each stride, the stage's steps run on it and are
timed (median of --repeats): `extract_surface(grid, settings, method="torch", stride=s)` (every s-th grid
point), `meshops.clean_mesh`, `meshops.decimate(..., --target-faces)`; "decimated by" says which of
decimate's simplifiers made the result (its MeshLab fallback is ~10x slower). A stride above 1 runs only
when its raw mesh has at least twice the target's faces. The reference is the cleaned stride-1 mesh (the
"dense" mesh, kept for baking); each reduced mesh (and each cleaned coarser extraction) is compared with it
both ways: --samples points uniform by area on one surface, exact point-to-triangle distance to the other
(bench/surface_distance.py), in units of the octree-384 cell (2.02 / 384) whatever --octree is.
"""
from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.mesh_field import BOX_V, load_source, logit_grid
from bench.report import run_cli
from bench.surface_distance import sample_surface, surface_distance
from pipeline import meshops
from pipeline.hunyuan_sampler import ShapeSettings, extract_surface
from pipeline.types import MeshData

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MESHES = {"bunny": DATA / "stanford-bunny.obj", "fandisk": DATA / "fandisk.obj",
          "spot": DATA / "spot" / "spot_triangulated.obj"}
UNIT = 2 * BOX_V / 384  # the octree-384 cell: every distance is reported in it


def _timed(repeats: int, step: Callable[[], Any]) -> tuple[float, Any]:
    """(median seconds over `repeats` runs, the last run's result)."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def decimation_path(mesh: MeshData, target_faces: int) -> str:
    """Which simplifier made `meshops.decimate`'s result: it re-runs decimate's first pass and its check.

    decimate redoes the reduction with MeshLab (about 10x slower) when fast-simplification misses the
    target by over 2 % or opens a closed mesh; this says which happened, so slow rows are explained.
    """
    defaults = inspect.signature(meshops.decimate).parameters
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    if len(faces) <= target_faces:
        return "none"
    out_vertices, out_faces = meshops._fast_decimate(vertices, faces, target_faces, None,
                                                     defaults["max_faces_per_round"].default,
                                                     defaults["aggressiveness"].default)
    if len(out_faces) > 1.02 * target_faces:
        return "meshlab (target missed)"
    if not meshops._closed_manifold(out_faces, len(out_vertices)) and meshops._closed_manifold(faces, len(vertices)):
        return "meshlab (surface opened)"
    return "fast-simplification"


def one_way(source: MeshData, target: MeshData, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Distances (in octree-384 cells) from points uniform by area on `source` to the surface `target`."""
    points = sample_surface(source.vertices, source.faces, samples, rng)
    return surface_distance(points, target.vertices, target.faces, pad=UNIT) / UNIT


def deviation(mesh: MeshData, reference: MeshData, samples: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean, 99th percentile and max distance, mesh -> reference and reference -> mesh (cells of 384)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (a, b) in {"to_dense": (mesh, reference), "from_dense": (reference, mesh)}.items():
        distance = one_way(a, b, samples, rng)
        out[name] = {"mean": float(distance.mean()), "p99": float(np.percentile(distance, 99)),
                     "max": float(distance.max())}
    return out


def measure_mesh(path: Path, octree: int, target_faces: int, strides: list[int], repeats: int,
                 samples: int) -> dict[str, Any]:
    """Field, then per stride: timed extraction, clean-up and decimation, and the deviations."""
    source, source_info = load_source(path)
    started = time.perf_counter()
    grid, field_info = logit_grid(source, octree)
    field_info["seconds"] = time.perf_counter() - started
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=octree, num_chunks=1, seed=0)
    extract_surface(grid, settings, method="torch")  # warm-up: the first call pays torch's one-time costs
    rows: list[dict[str, Any]] = []
    reference: MeshData | None = None
    for stride in strides:
        extract_s, raw = _timed(repeats, lambda: extract_surface(grid, settings, method="torch", stride=stride))
        if raw is None:
            raise RuntimeError(f"{path.name}: no surface at stride {stride}")
        row: dict[str, Any] = {"stride": stride, "faces_raw": len(raw.faces)}
        if stride > 1 and len(raw.faces) < 2 * target_faces:
            rows.append({**row, "skipped": f"fewer than 2 x {target_faces} raw faces"})
            continue
        clean_s, cleaned = _timed(repeats, lambda: meshops.clean_mesh(raw))
        decimate_s, reduced = _timed(repeats, lambda: meshops.decimate(cleaned, target_faces))
        if reference is None:
            if stride != 1:
                raise ValueError("the strides must start with 1: its cleaned mesh is the reference")
            reference = cleaned
        stats = meshops.mesh_stats(reduced)
        row.update(faces_clean=len(cleaned.faces), faces=stats["faces"], watertight=stats["watertight"],
                   components=stats["components"], decimation=decimation_path(cleaned, target_faces),
                   seconds={"extract": extract_s, "clean": clean_s, "decimate": decimate_s,
                            "total": extract_s + clean_s + decimate_s},
                   error=deviation(reduced, reference, samples))
        if stride > 1:  # how much of the error the coarser extraction alone makes, before any reduction
            row["error_clean"] = deviation(cleaned, reference, samples)
        rows.append(row)
    return {"source": source_info, "field": field_info, "strides": rows}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    meshes = {name: measure_mesh(MESHES[name], args.octree, args.target_faces, args.strides, args.repeats,
                                 args.samples) for name in args.meshes}
    return {"octree": args.octree, "target_faces": args.target_faces, "repeats": args.repeats,
            "samples": args.samples, "unit": "octree-384 cell (2.02 / 384)",
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "meshes": meshes}


def _errors(error: dict[str, dict[str, float]]) -> str:
    return " | ".join(f"{error[way]['mean']:.3f} / {error[way]['p99']:.2f} / {error[way]['max']:.2f}"
                      for way in ("to_dense", "from_dense"))


def markdown(result: dict[str, Any]) -> str:
    lines = [f"octree {result['octree']}, target {result['target_faces']} faces, median of {result['repeats']}; "
             f"distances in octree-384 cells, mean / p99 / max over {result['samples']} samples per surface", "",
             "| mesh | stride | raw faces | clean faces | faces | watertight | comp. | extract s | clean s "
             "| decimate s | decimated by | total s | reduced -> dense | dense -> reduced | clean -> dense "
             "| dense -> clean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, mesh in result["meshes"].items():
        for row in mesh["strides"]:
            if "skipped" in row:
                lines.append(f"| {name} | {row['stride']} | {row['faces_raw']} | skipped: {row['skipped']} |")
                continue
            t = row["seconds"]
            clean = _errors(row["error_clean"]) if "error_clean" in row else "(reference) | (reference)"
            lines.append(f"| {name} | {row['stride']} | {row['faces_raw']} | {row['faces_clean']} | {row['faces']} "
                         f"| {row['watertight']} | {row['components']} | {t['extract']:.3f} | {t['clean']:.3f} "
                         f"| {t['decimate']:.3f} | {row['decimation']} | {t['total']:.3f} "
                         f"| {_errors(row['error'])} | {clean} |")
    lines.append("")
    for name, mesh in result["meshes"].items():
        field, source = mesh["field"], mesh["source"]
        lines.append(f"- {name}: source {source['faces']} faces, {source['holes_capped']} holes capped, watertight "
                     f"{source['watertight']}; field {field['seconds']:.1f} s ({field['band_points']} points "
                     f"with exact distance, {field['sign_disagreements']} sign disagreements between axes)")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in MESHES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown meshes {unknown}; choose from {list(MESHES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reduction_source", description=__doc__.splitlines()[0])
    parser.add_argument("--octree", type=int, default=384)
    parser.add_argument("--target-faces", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--meshes", type=_names, default=list(MESHES), help="comma-separated: bunny,fandisk,spot")
    parser.add_argument("--strides", type=_ints, default=[1, 2, 4], help="comma-separated, starting with 1")
    parser.add_argument("--samples", type=int, default=200_000, help="points sampled on each surface")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
