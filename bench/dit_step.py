"""Time one guided sampling step of the Hunyuan3D-2 DiT (real v2-0 size, random weights) under each lever.

    python -m bench.dit_step --device cuda                     # every variant
    python -m bench.dit_step --device cuda --variants eager,compile --profile

One step is the guided velocity for one latent: the DiT on 3072 latent tokens with the picture's 1370
image tokens, and again with hy3dgen's unconditional (all-zero) image tokens. Each variant runs
`--repeats` timed steps after `--warmup` untimed ones (compile time is in the first call), and its
velocity is compared with the eager step's: `rel_err` = max |v - v_eager| / max |v_eager|. Variants:
- `eager`: hy3dgen's forward as the stock pipeline calls it (both halves as one batch of 2).
- `sdpa-flash`, `sdpa-cudnn`, `sdpa-efficient`: the same with one SDPA backend forced.
- `compile`: each DiT block compiled with torch.compile, as the worker does (models/dit_compile.py:
  inductor fuses the norms, modulation, GELU and residual adds between the matmuls).
- `uncond-token`, `uncond-token-compile`: the conditional half as above, the unconditional half on its
  one repeated context token (models/dit_forward.py), eager and compiled.
- `compile-graphs`, `uncond-token-compile-graphs`: compiled, and the whole step replayed from a CUDA
  graph (models/dit_forward.py `enable_step_graphs`); the second is what the worker's sampler runs.
- `fp8`, `fp8-compile`: the blocks' token linears in float8 e4m3 (weights scaled per output row,
  activations per token, `torch._scaled_mm`), eager and compiled. They replace the linears, so they run
  last.
`--profile` prints the top CUDA kernels of the last variant's step, grouped into matmul / attention / other.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from bench.report import run_cli
from models.dit_compile import compile_dit_blocks, uncompile_dit_blocks
from models.dit_forward import disable_step_graphs, enable_step_graphs, step_function, time_vector
from models.torchvision_compat import import_shapegen
from tests.tiny_models import dit_config

LATENT_TOKENS, LATENT_CHANNELS = 3072, 64
IMAGE_TOKENS, IMAGE_CHANNELS = 1370, 1536  # DINOv2-giant at 518 px: 37 x 37 patches + the class token
VARIANTS = ("eager", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "compile", "uncond-token",
            "uncond-token-compile", "compile-graphs", "uncond-token-compile-graphs", "fp8", "fp8-compile")
FP8_MAX = 448.0  # largest finite float8 e4m3fn value


def build_dit(device: str, dtype: torch.dtype) -> torch.nn.Module:
    config = dit_config("hunyuan3d-2", size="real")["model"]
    with torch.device(device):
        torch.manual_seed(0)
        model = import_shapegen().pipelines.instantiate_from_config(config)
    return model.to(dtype).eval()


def sdpa_backend(name: str) -> AbstractContextManager[Any]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    return sdpa_kernel(backends[name])


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_variant(step: Callable[[], torch.Tensor], warmup: int, repeats: int,
                 context: AbstractContextManager[Any]) -> tuple[torch.Tensor, float, list[float]]:
    """(output, first call seconds, timed seconds per call)."""
    with context:
        _sync()
        started = time.perf_counter()
        out = step()
        _sync()
        first = time.perf_counter() - started
        for _ in range(warmup):
            step()
        times = []
        for _ in range(repeats):
            _sync()
            started = time.perf_counter()
            out = step()
            _sync()
            times.append(time.perf_counter() - started)
    return out, first, times


class FP8Linear(torch.nn.Module):
    """y = x W^T + b with W and x rounded to float8 e4m3 (per output row / per token scales)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [N, 1]
        self.weight = torch.nn.Parameter((weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale.t().contiguous(), requires_grad=False)  # [1, N]
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # [M, 1]
        quantised = (rows / scale).to(torch.float8_e4m3fn)
        # row-wise scales need a bf16 result on some builds; the bias is added in the input dtype
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1)


def to_fp8(model: torch.nn.Module) -> int:
    """Swap the blocks' token linears (not the per-sample modulation ones) for FP8Linear; returns how many."""
    swapped = 0
    for block in [*model.double_blocks, *model.single_blocks]:
        for name, module in list(block.named_modules()):
            if isinstance(module, torch.nn.Linear) and "mod" not in name:
                parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
                setattr(parent, name.rpartition(".")[2], FP8Linear(module))
                swapped += 1
    return swapped


def profile_step(step: Callable[[], torch.Tensor], top: int = 15) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        _sync()
    groups = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    kernels = []
    for event in prof.key_averages():
        cuda_us = getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0)
        if cuda_us <= 0 or event.key.startswith(("aten::", "cuda")):
            continue
        name = event.key.lower()
        group = ("attention" if any(word in name for word in ("flash", "fmha", "attention", "cudnn"))
                 else "matmul" if any(word in name for word in ("gemm", "cutlass", "xmma", "nvjet", "matmul"))
                 else "other")
        groups[group] += cuda_us / 1e3
        kernels.append((cuda_us / 1e3, event.count, event.key[:90]))
    kernels.sort(reverse=True)
    return {"ms_by_group": groups, "top_kernels": kernels[:top]}


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model = build_dit(args.device, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, LATENT_TOKENS, LATENT_CHANNELS, generator=generator).to(args.device, dtype)
    picture = torch.randn(1, IMAGE_TOKENS, IMAGE_CHANNELS, generator=generator)
    cond = torch.cat([picture, torch.zeros_like(picture)]).to(args.device, dtype)  # as hy3dgen's encode_cond
    t = torch.full((1,), 0.5, device=args.device, dtype=dtype)
    scale = 5.0

    @torch.inference_mode()
    def batched_step() -> torch.Tensor:
        with_cond, without = model(torch.cat([x] * 2), t.expand(2), {"main": cond}).chunk(2)
        return without + scale * (with_cond - without)

    scale_tensor = torch.tensor(scale, device=args.device)

    def our_step(count: int) -> Callable[[], torch.Tensor]:
        uncond = cond[1:, :1] if count > 1 else cond[1:]

        @torch.inference_mode()
        def step() -> torch.Tensor:  # as pipeline/hunyuan_sampler.py's sample_latents runs it
            return step_function(model)(model, x, time_vector(model, t), cond[:1], uncond, count, scale_tensor)

        return step

    both_halves, one_token = our_step(1), our_step(IMAGE_TOKENS)

    def step_of(variant: str) -> Callable[[], torch.Tensor]:
        if variant.startswith("uncond-token"):
            return one_token
        return both_halves if variant.endswith("graphs") else batched_step

    rows: dict[str, dict[str, float]] = {}
    reference: torch.Tensor | None = None
    result: dict[str, Any] = {"device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                              "torch": torch.__version__, "dtype": args.dtype}
    for variant in args.variants:
        context: AbstractContextManager[Any] = nullcontext()
        if variant.startswith("sdpa-"):
            context = sdpa_backend(variant.removeprefix("sdpa-"))
        if variant.startswith("fp8"):
            result["fp8_linears"] = to_fp8(model)
        if variant.endswith(("compile", "compile-graphs")):
            torch._dynamo.reset()
            compile_dit_blocks(model)
        else:
            uncompile_dit_blocks(model)
        disable_step_graphs(model)  # each variant records its own graphs
        if variant.endswith("graphs"):
            enable_step_graphs(model)
        step = step_of(variant)
        try:
            out, first, times = time_variant(step, args.warmup, args.repeats, context)
        except Exception as exc:  # a backend this GPU or build lacks: report it, go on with the others
            rows[variant] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}  # type: ignore[dict-item]
            continue
        if reference is None:
            reference = out.float()
        error = float((out.float() - reference).abs().max() / reference.abs().max())
        rows[variant] = {"ms": 1e3 * statistics.median(times), "first_s": first, "rel_err": error,
                         "steps50_s": 50 * statistics.median(times)}
    result["variants"] = rows
    if args.profile:
        result["profile"] = {"variant": args.variants[-1], **profile_step(step_of(args.variants[-1]))}
    if torch.cuda.is_available():
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"{result['device_name']}, torch {result['torch']}, {result['dtype']}, one guided step", "",
             "| variant | ms / step | 50 steps s | first call s | rel. error vs eager |", "|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | |")
        else:
            lines.append(f"| {name} | {row['ms']:.1f} | {row['steps50_s']:.2f} | {row['first_s']:.1f} "
                         f"| {row['rel_err']:.1e} |")
    if "profile" in result:
        groups = result["profile"]["ms_by_group"]
        lines += ["", f"{result['profile']['variant']} step by kernel group (ms): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in groups.items()),
                  "", "| ms | calls | kernel |", "|---|---|---|"]
        lines += [f"| {ms:.2f} | {count} | `{name}` |" for ms, count, name in result["profile"]["top_kernels"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dit_step", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--variants", type=lambda text: text.split(","), default=list(VARIANTS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print the last variant's top CUDA kernels")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.variants[0] != "eager":
        parser.error("the first variant must be eager (the others are compared with it)")
    args.variants.sort(key=lambda name: name.startswith("fp8"))  # fp8 swaps the linears for good
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_cli(argv, parse_args, benchmark, markdown)


if __name__ == "__main__":
    main()
