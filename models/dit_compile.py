"""torch.compile for the Hunyuan3D-2 DiT's blocks: the sampler's fast path on CUDA.

A guided step of the 1.1 B DiT spends about 40 % of its time in small memory-bound kernels between the
matmuls (fp32 RMS norms of q and k, LayerNorm + modulation, GELU, gated residual adds, layout copies).
Compiling each block lets inductor fuse them: 79.5 -> 46.7 ms a guided step on an H100 (bench/dit_step.py,
BENCHMARKS.md), the same velocity up to fp16 rounding (tests/test_dit_compile.py compares the sampled
latents with the eager blocks'). All double blocks share one compiled graph and all single blocks another
(parameters are graph inputs), so compiling takes about 15 s once per input shape; the worker pays it at
load time with a warm-up run (models/manager.py), not in the first job.
"""
from __future__ import annotations

import torch


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [*model.double_blocks, *model.single_blocks]


def compile_dit_blocks(model: torch.nn.Module) -> int:
    """Compile every block of a hy3dgen `Hunyuan3DDiT` in place; returns how many. The kernels are built
    on the first forward of each input shape."""
    blocks = _blocks(model)
    for block in blocks:
        block.compile()
    return len(blocks)


def uncompile_dit_blocks(model: torch.nn.Module) -> None:
    """Back to the eager blocks (drops what `nn.Module.compile` set)."""
    for block in _blocks(model):
        block._compiled_call_impl = None


def is_compiled(model: torch.nn.Module) -> bool:
    return any(block._compiled_call_impl is not None for block in _blocks(model))
