"""Benchmark: background removal IoU on composites with known ground truth.

    .venv/bin/python bench/background_iou.py [--models-dir /models] [--size 640]

Each example with an alpha channel (lantern, crate, extinguisher) is scaled to 70% of a square frame and
composited over several backdrops: plain, noise, stripes, and two photos (chair_wood.jpg, earphone.jpg
stretched to the frame, so the backdrop is itself an object photo). The ground truth is the alpha >= 128.
Prints a markdown table of IoU and seconds per backend: GrabCut always; the segmentation model when its
weights are under --models-dir (MODELS_DIR).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.segmentation import SEGMENTATION_MODEL, load_session, segmentation_model_path  # noqa: E402
from pipeline.background import remove_background  # noqa: E402

OBJECTS = ("lantern.png", "crate.png", "extinguisher.png")
BACKDROPS = ("plain", "noise", "stripes", "photo:chair_wood.jpg", "photo:earphone.jpg")


def backdrop(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:  # -> [size, size, 3] uint8
    if kind == "plain":
        return np.full((size, size, 3), 235, np.uint8)
    if kind == "noise":
        return np.clip(rng.normal(128, 60, (size, size, 3)), 0, 255).astype(np.uint8)
    if kind == "stripes":
        x = np.arange(size)
        bands = ((x[None, :] + x[:, None]) // 24) % 3
        palette = np.array([[200, 60, 40], [40, 120, 200], [230, 220, 90]], np.uint8)
        return palette[bands]
    photo = Image.open(REPO / "examples" / kind.split(":", 1)[1]).convert("RGB")
    return np.asarray(photo.resize((size, size), Image.BICUBIC))


def composite(name: str, back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # -> rgb [S,S,3], truth [S,S] bool
    size = back.shape[0]
    rgba = Image.open(REPO / "examples" / name).convert("RGBA")
    side = int(size * 0.7)
    rgba.thumbnail((side, side), Image.LANCZOS)
    layer = np.zeros((size, size, 4), np.float32)
    top, left = (size - rgba.height) // 2, (size - rgba.width) // 2
    layer[top:top + rgba.height, left:left + rgba.width] = np.asarray(rgba, np.float32)
    weight = layer[..., 3:] / 255.0
    rgb = np.rint(layer[..., :3] * weight + back.astype(np.float32) * (1.0 - weight)).astype(np.uint8)
    return rgb, layer[..., 3] >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models-dir", type=Path, default=Path("/models"))
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    backends: dict[str, dict] = {"grabcut": {}}
    path = segmentation_model_path(args.models_dir)
    if path is not None:
        backends[SEGMENTATION_MODEL] = {"session": load_session(path, args.device)}
    else:
        print(f"({SEGMENTATION_MODEL} not installed under {args.models_dir}: GrabCut only)")
    rng = np.random.default_rng(0)
    print("| object | backdrop | " + " | ".join(f"{b} IoU | {b} s" for b in backends) + " |")
    print("|---|---|" + "---|---|" * len(backends))
    scores: dict[str, list[float]] = {b: [] for b in backends}
    for name in OBJECTS:
        for kind in BACKDROPS:
            rgb, truth = composite(name, backdrop(kind, args.size, rng))
            cells = []
            for backend, options in backends.items():
                started = time.perf_counter()
                mask = remove_background(rgb, method=backend, **options)
                seconds = time.perf_counter() - started
                scores[backend].append(iou(mask, truth))
                cells.append(f"{scores[backend][-1]:.3f} | {seconds:.2f}")
            print(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    print("| **mean** | |" + " | ".join(f" **{np.mean(s):.3f}** | " for s in scores.values()) + "|")
    return 0


if __name__ == "__main__":
    sys.exit(main())
