"""Benchmark: the whole CPU job (silhouette + projection) on the example pictures.

    .venv/bin/python bench/cpu_job.py [--texture-size 1024] [--target-faces 20000] [--repeat 2]

Prints seconds per stage and peak memory (RSS) for each picture. Imports happen before timing starts;
the first run of each picture warms caches and is reported separately from the best of the repeats.
"""
from __future__ import annotations

import argparse
import base64
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from handler import build_services  # noqa: E402
from pipeline.context import Deadline  # noqa: E402
from pipeline.request import parse_request  # noqa: E402
from pipeline.run import run_pipeline  # noqa: E402
from utils.settings import Settings  # noqa: E402

PICTURES = ["extinguisher.png", "lantern.png", "crate.png", "chair_wood.jpg", "earphone.jpg"]
STAGES = ["multiview", "mesh", "texture", "export", "upload"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--target-faces", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pictures", nargs="*", default=PICTURES)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        services = build_services(
            Settings.from_env({"STORAGE": "local", "LOCAL_OUTPUT_DIR": out, "PRELOAD_MODELS": "", "MAX_SECONDS": "600"})
        )
        header = f"{'picture':<18}" + "".join(f"{s:>10}" for s in STAGES) + f"{'total':>9}{'faces':>8}{'peak MiB':>10}"
        print(f"silhouette + projection, texture {args.texture_size}, target {args.target_faces} faces; best of {args.repeat}")
        print(header)
        print("-" * len(header))
        for picture in args.pictures:
            data = base64.b64encode((REPO / "examples" / picture).read_bytes()).decode()
            request = parse_request(
                {"image_base64": data, "shape_model": "silhouette", "texture_size": args.texture_size,
                 "target_faces": args.target_faces}
            )
            best = None
            for i in range(args.repeat):
                result = run_pipeline(request, job_id=f"bench-{i}", services=services, deadline=Deadline(600))
                timings = result.meta["timings"]
                if best is None or timings["total"] < best[0]["total"]:
                    best = (timings, result.meta["outputs"]["model.glb"]["faces"])
            timings, faces = best
            row = f"{picture:<18}" + "".join(f"{timings.get(s, 0):>10.2f}" for s in STAGES)
            print(row + f"{timings['total']:>9.2f}{faces:>8}{peak_rss_mib():>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
