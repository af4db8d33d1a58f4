"""Benchmark: the multiview stage step by step, with Zero123++ view synthesis.

    .venv/bin/python bench/multiview_cpu.py [--size tiny|real] [--device cpu|cuda] [--steps 28] [--picture NAME]

Uses the installed zero123plus-v1.2 under --models-dir when present; otherwise writes random weights in the
hub layout to a temporary MODELS_DIR: the tests' tiny model, or (--size real) the real architecture (1.9B
parameters, so the timings are the real model's; the pictures are noise). Runs the real stage code:
prepare_views for the input picture, then generate_views, timing each step between its progress reports, with
peak RSS and (CUDA) peak allocated GPU memory. The first run warms up; the second is reported.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.manager import ModelManager  # noqa: E402
from models.registry import get_spec, missing_files  # noqa: E402
from models.zero123plus import ZERO123PLUS, get_zero123plus  # noqa: E402
from pipeline.background import BackgroundRemover  # noqa: E402
from pipeline.context import Deadline, StageContext  # noqa: E402
from pipeline.multiview import RawInputs, generate_views, prepare_views  # noqa: E402
from pipeline.request import parse_request  # noqa: E402
from tests.tiny_zero123plus import install_tiny_zero123plus  # noqa: E402
from utils.settings import Settings  # noqa: E402


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gpu_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


class StepClock:
    """A progress sink that records (message, seconds since the previous report, peak RSS, peak GPU)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: list[tuple[str, float, float, float]] = []
        self.last = time.perf_counter()
        self.message = "start"

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.rows.append((self.message, now - self.last, peak_rss_gib(), gpu_gib(self.device)))
        self.last, self.message = now, message


def run_once(models: ModelManager, picture: str, steps: int, view_size: int) -> StepClock:
    clock = StepClock(models.device)
    ctx = StageContext("multiview", Deadline(3600.0), clock)
    request = parse_request({"image_base64": "AAAA", "multiview": ZERO123PLUS, "seed": 0})
    raw = RawInputs(image=("image_base64", (REPO / "examples" / picture).read_bytes()), mask=None, views={})
    plain = parse_request({"image_base64": "AAAA"})
    views = prepare_views(plain, raw, ctx, view_size=view_size, max_pixels=40_000_000, models=models)
    remover = BackgroundRemover(models.models_dir, models.device)
    generate_views(request, views.front, ctx, models, remover, view_size=view_size, margin=0.1,
                   taken={"front"}, steps=steps)
    clock("multiview", 1.0, "end")
    return clock


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--picture", default="chair_wood.jpg")
    parser.add_argument("--view-size", type=int, default=512)
    parser.add_argument("--models-dir", type=Path, default=Path("/models"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir
        weights = "installed"
        if missing_files(get_spec(ZERO123PLUS), models_dir):
            models_dir = Path(tmp)
            dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
            started = time.perf_counter()
            install_tiny_zero123plus(models_dir, size=args.size, dtype=dtype)
            weights = f"random {args.size} weights (written in {time.perf_counter() - started:.1f} s)"
        models = ModelManager(Settings(models_dir=models_dir, device=args.device))
        started = time.perf_counter()
        get_zero123plus(models)
        load_s = time.perf_counter() - started
        print(f"device {models.device} {models.dtype}, torch threads {torch.get_num_threads()}, {weights}")
        print(f"load {load_s:.2f} s, peak RSS {peak_rss_gib():.2f} GiB, GPU {gpu_gib(models.device):.2f} GiB")
        run_once(models, args.picture, min(args.steps, 2), args.view_size)  # warm-up
        clock = run_once(models, args.picture, args.steps, args.view_size)
    print("| step | seconds | peak RSS GiB | peak GPU GiB |\n|---|---|---|---|")
    last = f"view synthesis step {args.steps}/{args.steps}"
    sampler = [row[1] for row in clock.rows if row[0].startswith("view synthesis step") and row[0] != last]
    for message, seconds, rss, gpu in clock.rows[1:]:
        # A row's time runs from its report to the next one; step reports come after their step.
        if message.startswith("loading"):
            message = "condition encoding (VAE, CLIP) + sampler step 1"
        elif message == last:
            message = "VAE decode of the 3x2 grid"
        elif message.startswith("view synthesis step"):
            continue
        print(f"| {message} | {seconds:.3f} | {rss:.2f} | {gpu:.2f} |")
    if sampler:
        print(f"| sampler step (mean of steps 2..{args.steps}: reference pass + guided pass) | "
              f"{sum(sampler) / len(sampler):.3f} | | |")
    print(f"| total | {sum(row[1] for row in clock.rows):.2f} | {peak_rss_gib():.2f} | {gpu_gib(models.device):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
