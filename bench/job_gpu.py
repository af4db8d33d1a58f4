"""The benchmark of record: whole jobs through the worker (`handler.run_job`), as users wait for them.

    python -m bench.job_gpu --device cuda --pairs standard turbo --json bench/results/job_gpu.json
    python -m bench.job_gpu --tiny --device cpu                # smoke run on tiny weights (tests use it)

For each pair (standard: hunyuan3d-2 + hunyuan3d-paint; turbo: hunyuan3d-2-turbo + hunyuan3d-paint-turbo)
it writes random weights in the real MODELS_DIR layout (real sizes unless --tiny; the shape VAE's geometry
decoder rewired to a closed field as bench/shape_gpu.py does, with the same steep --field-gain, so volume
decoding sees one realistic surface), then starts a FRESH worker process with PRELOAD_MODELS naming the
pair, as a RunPod worker starts, and measures in it:
- cold start: process start to ready (imports, storage, models loaded and warmed up, compile included;
  TORCHINDUCTOR_CACHE_DIR is a new empty folder unless --kernel-cache names one);
- the first job and --warm more jobs (median), each the default request at --texture-size and
  --target-faces on examples/lantern.png, with local storage;
- every step of the job, from meta.json's timings.steps (the worker's own step clock; on a GPU each step
  waits for its kernels), medians over the warm jobs;
- peak GPU memory allocated and reserved (over the jobs, after loading) and peak host RSS (the worker and,
  separately, its children: the UV unwrap).
Prints a Markdown table and JSON; --json saves the JSON (bench/results/job_gpu.json is the committed run).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import run_cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "lantern.png"
PAIRS = {"standard": ("hunyuan3d-2", "hunyuan3d-paint"), "turbo": ("hunyuan3d-2-turbo", "hunyuan3d-paint-turbo")}
FIELD_GAIN = 250.0  # as bench/shape_gpu.py: a logit band about 2 cells thick at octree 384
RESULT_PREFIX = "JOB_GPU_RESULT "
GIB = 1024**3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["standard", "turbo"])
    parser.add_argument("--tiny", action="store_true", help="tiny weights and a small job (smoke run)")
    parser.add_argument("--warm", type=int, default=3, help="warm jobs after the first (median)")
    parser.add_argument("--texture-size", type=int, default=None, help="default 2048 (512 with --tiny)")
    parser.add_argument("--target-faces", type=int, default=None, help="default 40000 (2000 with --tiny)")
    parser.add_argument("--field-gain", type=float, default=FIELD_GAIN)
    parser.add_argument("--models-dir", type=Path, default=None, help="where to write the weights (a temp folder)")
    parser.add_argument("--kernel-cache", type=Path, default=None, help="TORCHINDUCTOR_CACHE_DIR (default: empty)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=sorted(PAIRS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.texture_size = args.texture_size or (512 if args.tiny else 2048)
    args.target_faces = args.target_faces or (2000 if args.tiny else 40000)
    return args


# ---------------------------------------------------------------- the parent: weights, worker processes


def install_pair(models_dir: Path, pair: str, *, tiny: bool, gain: float) -> float:
    """Write the pair's weights in the MODELS_DIR layout; return the seconds it took (not a job figure)."""
    from tests.tiny_models import install_shape_model
    from tests.tiny_paint_models import install_paint_models

    started = time.monotonic()
    shape, paint = PAIRS[pair]
    size = "tiny" if tiny else "real"
    install_shape_model(models_dir, shape, size=size, gain=gain)
    install_paint_models(models_dir, paint, size=size)
    return time.monotonic() - started


def run_worker(args: argparse.Namespace, pair: str, models_dir: Path, kernel_cache: Path) -> dict[str, Any]:
    """Start a fresh worker process for `pair` and return what it measured."""
    shape, paint = PAIRS[pair]
    env = dict(os.environ, MODELS_DIR=str(models_dir), PRELOAD_MODELS=f"{shape} {paint}", STORAGE="local",
               DEVICE=args.device, HF_HUB_OFFLINE="1", TORCHINDUCTOR_CACHE_DIR=str(kernel_cache),
               BENCH_SPAWNED_AT=repr(time.time()), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "bench.job_gpu", "--worker", pair, "--device", args.device,
               "--warm", str(args.warm), "--texture-size", str(args.texture_size),
               "--target-faces", str(args.target_faces)] + (["--tiny"] if args.tiny else [])
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"the {pair} worker gave no result (exit {proc.returncode}):\n"
                       f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    if args.worker is not None:
        result = measure_in_worker(args, args.worker)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return result
    import torch

    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU)"
    pairs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="job-gpu-") as tmp:
        for pair in args.pairs:
            models_dir = args.models_dir or Path(tmp) / pair
            install_seconds = install_pair(models_dir, pair, tiny=args.tiny, gain=args.field_gain)
            kernel_cache = args.kernel_cache or Path(tmp) / f"kernels-{pair}"
            pairs[pair] = {**run_worker(args, pair, models_dir, kernel_cache),
                           "weights_written_s": round(install_seconds, 1)}
    return {
        "gpu": gpu,
        "settings": {"texture_size": args.texture_size, "target_faces": args.target_faces, "warm_jobs": args.warm,
                     "tiny": args.tiny, "field_gain": args.field_gain, "picture": EXAMPLE.name,
                     "kernel_cache": "given" if args.kernel_cache else "empty"},
        "pairs": pairs,
    }


# ---------------------------------------------------------------- the worker process


def _peak_rss_gib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / GIB  # Linux reports KiB


def measure_in_worker(args: argparse.Namespace, pair: str) -> dict[str, Any]:
    """Runs in the fresh worker process: start the worker as handler.py does, then time jobs."""
    spawned_at = float(os.environ["BENCH_SPAWNED_AT"])
    import handler
    from tests.helpers import file_url_path
    from utils.settings import Settings

    with tempfile.TemporaryDirectory(prefix="job-gpu-out-") as out:
        settings = Settings.from_env({**os.environ, "LOCAL_OUTPUT_DIR": out, "MAX_SECONDS": "900"})
        services = handler.build_services(settings)
        cold = time.time() - spawned_at
        cuda = args.device.startswith("cuda")
        if cuda:
            import torch

            loaded_gib = torch.cuda.memory_allocated() / GIB
            torch.cuda.reset_peak_memory_stats()
        shape, paint = PAIRS[pair]
        job = {"image_base64": base64.b64encode(EXAMPLE.read_bytes()).decode(), "shape_model": shape,
               "texture_model": paint, "texture_size": args.texture_size, "target_faces": args.target_faces}
        if args.tiny:  # a smoke run on CPU: a coarse grid and two sampling steps
            job.update(octree_resolution=64, steps=2)
        runs: list[dict[str, Any]] = []
        for index in range(1 + args.warm):
            started = time.monotonic()
            result = handler.run_job(f"bench-{pair}-{index}", job, services=services)
            seconds = time.monotonic() - started
            if "error" in result:
                raise RuntimeError(f"job {index} of the {pair} pair failed: {result['error']}")
            meta = json.loads(file_url_path(result["meta_url"]).read_text())
            runs.append({"seconds": seconds, "timings": meta["timings"],
                         "faces": meta["outputs"]["model.glb"]["faces"]})
    warm = runs[1:] or runs
    figures: dict[str, Any] = {
        "cold_s": round(cold, 2),
        "first_s": round(runs[0]["seconds"], 2),
        "warm_s": round(statistics.median(run["seconds"] for run in warm), 2),
        "warm_runs_s": [round(run["seconds"], 2) for run in warm],
        "faces": runs[0]["faces"],
        "stages": _medians([{k: v for k, v in run["timings"].items() if k != "steps"} for run in warm]),
        "steps": _medians([_flat_steps(run["timings"]["steps"]) for run in warm]),
        "first_steps": _flat_steps(runs[0]["timings"]["steps"]),
        "peak_rss_gib": round(_peak_rss_gib(resource.RUSAGE_SELF), 2),
        "peak_child_rss_gib": round(_peak_rss_gib(resource.RUSAGE_CHILDREN), 2),
    }
    if cuda:
        figures.update(loaded_allocated_gib=round(loaded_gib, 2),
                       peak_allocated_gib=round(torch.cuda.max_memory_allocated() / GIB, 2),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2))
    return figures


def _flat_steps(steps: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{stage}.{step}": seconds for stage, items in steps.items() for step, seconds in items.items()}


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return {key: round(statistics.median(row[key] for row in rows if key in row), 3) for key in keys}


# ---------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    if "pairs" not in result:  # the worker's own line
        return ""
    pairs = result["pairs"]
    names = list(pairs)
    lines = [f"GPU: {result['gpu']}; texture {result['settings']['texture_size']}, "
             f"{result['settings']['target_faces']} faces, warm = median of {result['settings']['warm_jobs']}",
             "", "| figure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for key in ("cold_s", "first_s", "warm_s", "loaded_allocated_gib", "peak_allocated_gib", "peak_reserved_gib",
                "peak_rss_gib", "peak_child_rss_gib"):
        if any(key in pairs[name] for name in names):
            lines.append(f"| {key} | " + " | ".join(str(pairs[name].get(key, "")) for name in names) + " |")
    for group in ("stages", "steps"):
        keys = list(dict.fromkeys(key for name in names for key in pairs[name][group]))
        for key in keys:
            values = [pairs[name][group].get(key) for name in names]
            label = key if group == "steps" else f"**{key}**"
            lines.append(f"| {label} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
