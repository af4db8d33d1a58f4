"""Time marching cubes: ours in plain PyTorch (pipeline/marching_cubes.py) against scikit-image's Lewiner.

    python -m bench.marching_cubes --device cuda --octree 384
    python -m bench.marching_cubes --device cpu --octree 128 --repeats 1

The grid is the benchmark decoder's field without its latent wobble (tests/tiny_models.py, as
bench/cleanup_cpu.py builds it) times the logit gain of bench/shape_gpu.py (250: a band |logit| < 1 about
two cells thick at octree 384), on hy3dgen's (octree + 1)^3 grid, placed on --device. Rows:
- "torch": `marching_cubes` on the whole grid, on the device;
- "scikit-image": Lewiner on the whole grid, including the copy to the CPU;
- "extract_surface (torch)" / "extract_surface (skimage)": the shape stage's call (crop around the object,
  marching cubes, hy3dgen's vertex mapping, copy of the mesh to the CPU) with each method.
Seconds are the median of --repeats runs after one warm-up; on CUDA the peak GPU memory of one "torch" run
(beyond the grid) is reported too.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from skimage import measure

from bench.cleanup_cpu import analytic_grid
from bench.report import run_cli
from bench.shape_gpu import FIELD_GAIN
from pipeline.hunyuan_sampler import ShapeSettings, extract_surface
from pipeline.marching_cubes import marching_cubes


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _median_seconds(device: str, fn: Callable[[], tuple[int, int]], repeats: int) -> tuple[float, int, int]:
    """(median seconds, vertices, faces) over `repeats` runs after one warm-up."""
    fn()
    seconds = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        counts = fn()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), *counts


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    grid = (args.gain * analytic_grid(args.octree)).to(args.device)  # [1, R+1, R+1, R+1]
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=args.octree, num_chunks=1, seed=0)

    def ours() -> tuple[int, int]:
        vertices, faces = marching_cubes(grid[0], settings.mc_level)
        return len(vertices), len(faces)

    def scikit() -> tuple[int, int]:
        vertices, faces, _, _ = measure.marching_cubes(grid[0].cpu().numpy(), settings.mc_level, method="lewiner")
        return len(vertices), len(faces)

    def stage(method: str) -> Callable[[], tuple[int, int]]:
        def run() -> tuple[int, int]:
            mesh = extract_surface(grid, settings, method=method)
            return len(mesh.vertices), len(mesh.faces)
        return run

    rows = {"torch": ours, "scikit-image": scikit,
            "extract_surface (torch)": stage("torch"), "extract_surface (skimage)": stage("skimage")}
    result: dict[str, Any] = {
        "octree": args.octree, "gain": args.gain, "device": args.device, "repeats": args.repeats,
        "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "rows": {},
    }
    for name, fn in rows.items():
        seconds, vertices, faces = _median_seconds(args.device, fn, args.repeats)
        result["rows"][name] = {"seconds": seconds, "vertices": vertices, "faces": faces}
    if args.device.startswith("cuda"):
        _sync(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        before = torch.cuda.memory_allocated(args.device)
        ours()
        result["torch_peak_gib"] = (torch.cuda.max_memory_allocated(args.device) - before) / 2**30
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"marching cubes, octree {result['octree']}, gain {result['gain']:g}, {result['device']} "
             f"({result['device_name']}, {result['threads']} threads)", "",
             "| method | seconds | vertices | faces |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['seconds']:.3f} | {row['vertices']} | {row['faces']} |"
              for name, row in result["rows"].items()]
    if "torch_peak_gib" in result:
        lines += ["", f"torch peak GPU memory beyond the grid: {result['torch_peak_gib']:.2f} GiB"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.marching_cubes", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--octree", type=int, default=384)
    parser.add_argument("--gain", type=float, default=FIELD_GAIN, help="logits per unit of the field")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
