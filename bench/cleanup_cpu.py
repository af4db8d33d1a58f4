"""Time the shape stage's mesh clean-up on the raw mesh a GPU run sees, without any model.

    python -m bench.cleanup_cpu                      # octree 384: about 850k raw faces -> 40k
    python -m bench.cleanup_cpu --octree 128 --repeats 1
    python -m bench.cleanup_cpu --profile            # also print the top of a cProfile of one run

The raw mesh is what `pipeline.hunyuan_sampler.extract_surface` makes of the rewired benchmark decoder's
field (tests/tiny_models.py) without its small latent-dependent wobble: cos x + cos y + cos z - 2.7
sampled on hy3dgen's (octree + 1)^3 grid over [-1.01, 1.01]^3, marching cubes (scikit-image, Lewiner).
Each clean-up step (clean_mesh, normalize_to_unit_box, decimate to --target-faces) is timed on its own;
the table gives the median seconds and the faces after the step.
"""
from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import run_cli
from pipeline import meshops
from pipeline.hunyuan_sampler import ShapeSettings, extract_surface
from pipeline.types import MeshData
from tests.tiny_models import FIELD_LEVEL


def analytic_grid(octree: int, box_v: float = 1.01) -> torch.Tensor:  # [1, R+1, R+1, R+1] float32
    """cos x + cos y + cos z - FIELD_LEVEL on hy3dgen's dense grid (positive inside)."""
    axis = np.cos(np.linspace(-box_v, box_v, octree + 1, dtype=np.float32))
    field = axis[:, None, None] + axis[None, :, None] + (axis[None, None, :] - np.float32(FIELD_LEVEL))
    return torch.from_numpy(field)[None]


def raw_mesh(octree: int) -> MeshData:
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=octree, num_chunks=1, seed=0)
    mesh = extract_surface(analytic_grid(octree), settings)
    if mesh is None:
        raise RuntimeError("the analytic field has a surface")
    return mesh


def run_once(raw: MeshData, target_faces: int) -> dict[str, tuple[float, int]]:
    """step -> (seconds, faces after the step)."""
    steps: dict[str, tuple[float, int]] = {}
    started = time.perf_counter()
    dense = meshops.clean_mesh(raw)
    steps["clean_mesh"] = (time.perf_counter() - started, len(dense.faces))
    started = time.perf_counter()
    dense = meshops.normalize_to_unit_box(dense)
    steps["normalize_to_unit_box"] = (time.perf_counter() - started, len(dense.faces))
    started = time.perf_counter()
    mesh = meshops.decimate(dense, target_faces)
    steps["decimate"] = (time.perf_counter() - started, len(mesh.faces))
    steps["total"] = (sum(seconds for seconds, _ in steps.values()), len(mesh.faces))
    return steps


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    raw = raw_mesh(args.octree)
    extract_seconds = time.perf_counter() - started
    runs = [run_once(raw, args.target_faces) for _ in range(args.repeats)]
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run_once, raw, args.target_faces)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    return {
        "octree": args.octree, "target_faces": args.target_faces, "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "faces_raw": len(raw.faces), "extract_seconds": extract_seconds,
        "median": {step: {"seconds": statistics.median(run[step][0] for run in runs), "faces": runs[0][step][1]}
                   for step in runs[0]},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [f"raw mesh: octree {result['octree']}, {result['faces_raw']} faces "
             f"(marching cubes {result['extract_seconds']:.2f} s)", "",
             "| step | seconds | faces |", "|---|---|---|"]
    lines += [f"| {step} | {row['seconds']:.3f} | {row['faces']} |" for step, row in result["median"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cleanup_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--octree", type=int, default=384)
    parser.add_argument("--target-faces", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one more run")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
