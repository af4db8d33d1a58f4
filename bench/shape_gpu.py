"""Time the Hunyuan3D-2 shape stage step by step, against the stock hy3dgen call, on random weights.

    python -m bench.shape_gpu --device cuda                       # real v2-0 sizes, 50 steps, octree 384
    python -m bench.shape_gpu --device cuda --model hunyuan3d-2-turbo
    python -m bench.shape_gpu --device cuda --dtype bf16 --decoder flashvdm --chunks 200000
    python -m bench.shape_gpu --device cuda --decoder vanilla     # every grid point (the exact reference)
    python -m bench.shape_gpu --tiny --device cpu                 # smoke run (tests use it)

The pipeline is built in memory from the REAL config (DiT v2-0 1.1B + DINOv2-giant + ShapeVAE) with
random weights. For a model whose registry spec names a `vae` (turbo, fast) that VAE replaces the DiT
file's, as in the worker: the FlashVDM VAE, whose geometry decoder is lighter (width 512 instead of 1024,
MLP expand 1 instead of 4, no ln_post; tests/tiny_models.py): 2.1M parameters instead of 12.7M, and per
query point 4.2M multiply-adds instead of 16.8M attending to all 3072 latents, 2.1M instead of 12.6M
attending to FlashVDM's top 1024. The geometry decoder is rewired to a smooth closed field
(tests/tiny_models.py; the same field for both VAEs) so marching cubes and clean-up see one realistic
closed surface instead of noise. The decoders that refine near the surface (hierarchical, flashvdm) skip
what lies beyond |logit| = 0.95; a trained occupancy decoder's logits pass +-1 within a cell or two of the surface, so --field-gain makes the rewired field
that steep. The field is gain * (cos x + cos y + cos z - 2.7); on its surface the gradient of the
bracket has length 0.71 (on the axes, |sin 0.795|) to 0.76 (on the diagonals), so |logit| < 0.95 is a
shell of half-width 0.95 / (0.73 * gain). At octree 384 a cell is 2.02 / 384 = 0.00526, so gain 250
gives a half-width of 0.0052: about one cell on each side, a band 2 cells thick (gain 3, the tests'
default, gives 0.43: 80 cells on each side). As in the worker (models/manager.py `speed_up_dit`, one
warm-up at load), on CUDA the DiT's blocks are compiled (models/dit_compile.py; --no-compile runs them
eagerly) and each sampling step is replayed from a CUDA graph (models/dit_forward.py; --no-cuda-graphs
launches it kernel by kernel); the game mesh is reduced from a coarser extraction of the same grid when
the target allows (pipeline/hunyuan_sampler.py `extract_surfaces`; --max-stride 1 reduces the dense mesh). Each step is timed on its own (encode,
sample, decode, extract = the dense and the coarse marching cubes, clean-up =
`shape_hunyuan.clean_and_reduce`), then the stock `pipe(image=...)` call runs at the same settings in the
same process (hy3dgen's own DiT forward, eager; it decodes every grid point unless the decoder is
flashvdm, which is enabled on its VAE); the ratio is stock / ours for image -> raw mesh. Peak GPU memory
covers everything after loading. Prints a Markdown table and JSON.
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
from PIL import Image

from bench.report import run_cli
from models.manager import speed_up_dit
from models.registry import get_spec
from pipeline.context import Deadline, StageContext
from pipeline.hunyuan_sampler import (
    DECODERS,
    ShapeSettings,
    decode_volume,
    encode_condition,
    extract_surfaces,
    run_stock,
    sample_latents,
)
from pipeline.shape_hunyuan import clean_and_reduce
from tests.tiny_models import build_pipeline, dit_config, vae_config

FIELD_GAIN = 250.0  # band |logit| < 0.95 about 2 cells thick at octree 384 (module docstring)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lantern.png"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - started


def run_once(pipe: Any, image: Image.Image, settings: ShapeSettings, device: str, target_faces: int,
             stock: bool, max_stride: int) -> dict[str, float]:
    """One image -> cleaned mesh run, timed per step; plus the stock call when `stock`."""
    ctx = StageContext("mesh", Deadline(3600.0))
    times: dict[str, float] = {}
    condition, times["encode"] = _timed(device, lambda: encode_condition(pipe, image, settings.guidance_scale))
    latents, times["sample"] = _timed(device, lambda: sample_latents(pipe, condition, settings, ctx))
    grid, times["decode"] = _timed(device, lambda: decode_volume(pipe, latents, settings, ctx))
    surfaces, times["extract"] = _timed(device, lambda: extract_surfaces(grid, settings, target_faces, max_stride))
    if surfaces is None:
        raise RuntimeError("no surface: the rewired decoder should always give one")
    mask = np.asarray(image)[..., 3] >= 128
    (mesh, _, _), times["cleanup"] = _timed(device, lambda: clean_and_reduce(surfaces, target_faces, mask, ctx))
    times["ours_raw"] = times["encode"] + times["sample"] + times["decode"] + times["extract"]
    times["ours_total"] = times["ours_raw"] + times["cleanup"]
    times["faces_raw"] = float(len(surfaces.dense.faces))
    times["faces_final"] = float(len(mesh.faces))
    times["stride"] = float(surfaces.stride)
    if stock:
        _, times["stock_raw"] = _timed(device, lambda: run_stock(pipe, image, settings, ctx))
        times["ratio"] = times["stock_raw"] / times["ours_raw"]
    return times


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    spec = get_spec(args.model)
    defaults = spec.sampler
    if defaults is None:
        raise ValueError(f"{spec.name} is not a shape model")
    size = "tiny" if args.tiny else "real"
    dtype = DTYPES[args.dtype]
    started = time.perf_counter()
    vae = None if spec.vae is None else vae_config(spec.vae, size=size)  # the worker's VAE swap (models/manager.py)
    pipe = build_pipeline(dit_config(spec.name, size=size), device=args.device, dtype=dtype, gain=args.field_gain,
                          vae=vae)
    decoder = args.decoder or defaults.decoder
    if decoder == "flashvdm":  # the stock call decodes with what the VAE has: make it the same
        pipe.vae.enable_flashvdm_decoder(enabled=True, adaptive_kv_selection=True, topk_mode="mean", mc_algo="mc")
    build_seconds = time.perf_counter() - started
    settings = ShapeSettings(
        steps=args.steps or defaults.steps,
        guidance_scale=args.guidance if args.guidance is not None else defaults.guidance_scale,
        octree_resolution=args.octree or defaults.octree_resolution,
        num_chunks=args.chunks or defaults.num_chunks,
        seed=0,
        decoder=decoder,
    )
    image = Image.open(EXAMPLE).convert("RGBA")
    compile_seconds, levers = 0.0, []
    if args.device.startswith("cuda") and not (args.no_compile and args.no_cuda_graphs):
        # as the worker does at load (TORCH_COMPILE and CUDA_GRAPHS, both default on)
        levers, compile_seconds = _timed(args.device, lambda: speed_up_dit(
            pipe, spec, torch_compile=not args.no_compile, cuda_graphs=not args.no_cuda_graphs))
    run_once(pipe, image, settings, args.device, args.target_faces, stock=False, max_stride=args.max_stride)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
    runs = [run_once(pipe, image, settings, args.device, args.target_faces, stock=not args.no_stock,
                     max_stride=args.max_stride) for _ in range(args.repeats)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result: dict[str, Any] = {
        "model": spec.name, "vae": spec.vae, "size": size, "device": args.device, "dtype": args.dtype,
        "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                        else platform.processor()),
        "torch": torch.__version__, "settings": settings.as_dict(), "repeats": args.repeats,
        "build_seconds": build_seconds, "compile_seconds": compile_seconds, "levers": levers,
        "field_gain": args.field_gain,
        "median": medians,
        "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                       for name in ("model", "vae", "conditioner")},
    }
    if args.device.startswith("cuda"):
        result["peak_gib"] = torch.cuda.max_memory_allocated(args.device) / 2**30
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result["median"]
    s = result["settings"]
    head = ("| model | dtype | steps | octree | decoder | DiT levers | reduced from | encode | sample | decode | extract "
            "| clean-up | ours total | stock raw | stock/ours | faces raw | peak GiB |")
    sep = "|" + "---|" * 17
    levers = " + ".join(result["levers"]) or "none"
    row = (f"| {result['model']} ({result['size']}) | {result['dtype']} | {s['steps']} | {s['octree_resolution']} "
           f"| {s['decoder']} | {levers} | stride {int(m['stride'])} | {m['encode']:.3f} | {m['sample']:.3f} "
           f"| {m['decode']:.3f} | {m['extract']:.3f} "
           f"| {m['cleanup']:.3f} | {m['ours_total']:.3f} | {m.get('stock_raw', float('nan')):.3f} "
           f"| {m.get('ratio', float('nan')):.2f} | {int(m['faces_raw'])} | {result.get('peak_gib', float('nan')):.2f} |")
    return "\n".join([head, sep, row])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.shape_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hunyuan3d-2", choices=["hunyuan3d-2", "hunyuan3d-2-fast", "hunyuan3d-2-turbo"])
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU smoke test), not the real sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--octree", type=int, default=None)
    parser.add_argument("--chunks", type=int, default=None, help="query points per decoding batch")
    parser.add_argument("--decoder", choices=list(DECODERS), default=None, help="default: the model's")
    parser.add_argument("--field-gain", type=float, default=FIELD_GAIN,
                        help="steepness of the rewired field's logits (module docstring)")
    parser.add_argument("--target-faces", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stock", action="store_true", help="skip the stock hy3dgen call")
    parser.add_argument("--no-cuda-graphs", action="store_true",
                        help="run each sampling step without CUDA-graph replay (the worker with CUDA_GRAPHS=0)")
    parser.add_argument("--no-compile", action="store_true",
                        help="run the DiT blocks eagerly (the worker with TORCH_COMPILE=0)")
    parser.add_argument("--max-stride", type=int, default=2,
                        help="coarsest extraction the reduction may start from (1: reduce the dense mesh)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "fp16" if args.device.startswith("cuda") else "fp32"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
