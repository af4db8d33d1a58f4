"""The Hunyuan3D-2 DiT's sampling step, as hy3dgen 2.0.2 computes it, shaped for speed on a GPU.

Two things differ from calling `Hunyuan3DDiT.forward` once per step on the batch of both guidance halves:

1. The unconditional half runs on ONE context token instead of 1370. hy3dgen's unconditional context is
   all zeros (`unconditional_embedding`), so after `cond_in` its tokens are identical, and they stay
   identical through every block: each block applies the same per-token maps to them, and identical
   queries attend identically. One token can stand for all `count` of them if attention weighs its key
   `count` times: softmax over [k0 x count, k1..kn] = softmax over [k0, k1..kn] with ln(count) added to
   k0's logit. `repeated_key_attention` does that exactly without an attention mask (a mask pushes SDPA
   onto slower kernels): fused attention over the other keys gives their output O and log-sum-exp L, and
   the repeated key joins by the softmax identity out = O + sigmoid(s0 - L) * (v0 - O), s0 its weighted
   logit. That removes about 30 % of the half's matmul work and half of its attention work.
2. A whole step can be replayed from a CUDA graph (`enable_step_graphs`). Two batch-1 forwards launch
   twice the kernels of one batch-2 forward, and on an H100 a batch-1 forward of the compiled blocks is
   bound by launching them (30 ms wall for 23 ms of GPU work); a replayed graph costs only the GPU work.
   hy3dgen's `timestep_embedding` copies a table from the host, which a graph cannot hold, so the time
   vector is computed outside it (`time_vector`) and the graphed step starts from it (`forward_from_vec`).

tests/test_dit_forward.py compares every part with hy3dgen's own forward on tiny models.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from einops import rearrange

from models.cuda_graphs import GraphedForward
from models.dit_compile import is_compiled
from models.torchvision_compat import import_shapegen

Tensor = torch.Tensor


def _attention_with_lse(q: Tensor, k: Tensor, v: Tensor, scale: float,
                        kernel: str) -> tuple[Tensor, Tensor]:  # [B, H, L, D], [B, H, L] float32
    """Fused attention and its log-sum-exp, from SDPA's own kernels (`kernel`: see `_lse_kernel`)."""
    if kernel == "cudnn":
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, scale=scale)[:2]
        return out, lse.reshape(q.shape[:3])
    if kernel == "flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[:2]
        return out, lse
    if kernel == "efficient":  # pads the lse to a multiple of 32 rows
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)[:2]
        return out, lse[..., : q.shape[2]]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)


def _lse_kernel(x: Tensor) -> str:
    """The fastest SDPA kernel that returns the log-sum-exp for `x`'s device and dtype: cuDNN's on Hopper
    and later where this build enables it (what SDPA itself picks there; 5.7 ms against flash's 8.6 ms for
    the 48 blocks' attention on an H100), flash on other CUDA GPUs in half precision, the memory-efficient
    one in float32."""
    if not x.is_cuda:
        return "cpu"
    if x.dtype not in (torch.float16, torch.bfloat16):
        return "efficient"
    hopper = torch.cuda.get_device_capability(x.device) >= (9, 0)
    cudnn = torch.backends.cudnn.is_available() and torch.backends.cuda.cudnn_sdp_enabled()
    return "cudnn" if hopper and cudnn else "flash"


def repeated_key_attention(q: Tensor, k: Tensor, v: Tensor,  # [B, H, L, D]; key/value 0 is the repeated one
                           log_count: float, kernel: str = "cpu") -> Tensor:  # [B, L, H * D], as hy3dgen's
    """SDPA with key/value 0 counted exp(log_count) times (module docstring, 1)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    out, lse = _attention_with_lse(q, k[:, :, 1:], v[:, :, 1:], scale, kernel)
    logit = (q.float() * k[:, :, :1].float()).sum(-1) * scale + log_count  # [B, H, L]
    weight = torch.sigmoid(logit - lse).unsqueeze(-1)  # the repeated key's share of the softmax
    out = out.float()
    out = out + weight * (v[:, :, :1].float() - out)
    return rearrange(out.to(q.dtype), "B H L D -> B L (H D)")


def _qkv(attn: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # hy3dgen SelfAttention's
    q, k, v = rearrange(attn.qkv(x), "B L (K H D) -> K B H L D", K=3, H=attn.num_heads)
    q, k = attn.norm(q, k, v)
    return q, k, v


def double_block(block: torch.nn.Module, img: Tensor, txt: Tensor, vec: Tensor, log_count: float,
                 kernel: str) -> tuple[Tensor, Tensor]:
    """hy3dgen's DoubleStreamBlock.forward, `txt` being one token that stands for exp(log_count)."""
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)
    img_q, img_k, img_v = _qkv(block.img_attn, (1 + img_mod1.scale) * block.img_norm1(img) + img_mod1.shift)
    txt_q, txt_k, txt_v = _qkv(block.txt_attn, (1 + txt_mod1.scale) * block.txt_norm1(txt) + txt_mod1.shift)
    attn = repeated_key_attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                                  torch.cat((txt_v, img_v), dim=2), log_count, kernel)
    txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]
    img = img + img_mod1.gate * block.img_attn.proj(img_attn)
    img = img + img_mod2.gate * block.img_mlp((1 + img_mod2.scale) * block.img_norm2(img) + img_mod2.shift)
    txt = txt + txt_mod1.gate * block.txt_attn.proj(txt_attn)
    txt = txt + txt_mod2.gate * block.txt_mlp((1 + txt_mod2.scale) * block.txt_norm2(txt) + txt_mod2.shift)
    return img, txt


def single_block(block: torch.nn.Module, x: Tensor, vec: Tensor, log_count: float, kernel: str) -> Tensor:
    """hy3dgen's SingleStreamBlock.forward, token 0 of `x` standing for exp(log_count)."""
    mod, _ = block.modulation(vec)
    x_mod = (1 + mod.scale) * block.pre_norm(x) + mod.shift
    qkv, mlp = torch.split(block.linear1(x_mod), [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = rearrange(qkv, "B L (K H D) -> K B H L D", K=3, H=block.num_heads)
    q, k = block.norm(q, k, v)
    attn = repeated_key_attention(q, k, v, log_count, kernel)
    return x + mod.gate * block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))


_COMPILED: dict[str, Callable[..., Any]] = {}


def _repeated_blocks(compiled: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The repeated-token block functions, compiled once per process when the model's blocks are
    (models/dit_compile.py; every block shares the graphs: its parameters are graph inputs)."""
    if not compiled:
        return double_block, single_block
    if not _COMPILED:
        _COMPILED["double"] = torch.compile(double_block, dynamic=False)
        _COMPILED["single"] = torch.compile(single_block, dynamic=False)
    return _COMPILED["double"], _COMPILED["single"]


def _timestep_embedding(t: Tensor, model: torch.nn.Module) -> Tensor:
    return import_shapegen().models.denoisers.hunyuan3ddit.timestep_embedding(t, 256, model.time_factor)


def time_vector(model: torch.nn.Module, t: Tensor,  # [B]
                guidance: Tensor | None = None) -> Tensor:  # [B] (guidance-distilled models) -> [B, hidden]
    """The modulation vector of hy3dgen's `Hunyuan3DDiT.forward` for timestep `t` (and guidance)."""
    vec = model.time_in(_timestep_embedding(t, model).to(dtype=model.latent_in.weight.dtype))
    if model.guidance_embed:
        if guidance is None:
            raise ValueError("a guidance-distilled model needs the guidance strength")
        vec = vec + model.guidance_in(_timestep_embedding(guidance, model))
    return vec


def forward_from_vec(model: torch.nn.Module, x: Tensor, vec: Tensor,  # [B, L, C], [B, hidden]
                     context: Tensor, count: int = 1) -> Tensor:  # [B, N, C_context] -> [B, L, C]
    """hy3dgen's `Hunyuan3DDiT.forward` from the time vector on. `count` > 1: `context` is one token
    ([B, 1, C_context]) standing for `count` copies of itself (module docstring, 1)."""
    latent = model.latent_in(x)
    cond = model.cond_in(context)
    if count == 1:
        for block in model.double_blocks:
            latent, cond = block(img=latent, txt=cond, vec=vec, pe=None)
        latent = torch.cat((cond, latent), 1)
        for block in model.single_blocks:
            latent = block(latent, vec=vec, pe=None)
    else:
        double, single = _repeated_blocks(is_compiled(model))
        log_count, kernel = math.log(count), _lse_kernel(latent)
        for block in model.double_blocks:
            latent, cond = double(block, latent, cond, vec, log_count, kernel)
        latent = torch.cat((cond, latent), 1)
        for block in model.single_blocks:
            latent = single(block, latent, vec, log_count, kernel)
    return model.final_layer(latent[:, cond.shape[1]:], vec)


def velocity(model: torch.nn.Module, x: Tensor, vec: Tensor, context: Tensor,  # [B, L, C], [B, hidden], [B, N, C']
             uncond: Tensor | None = None, count: int = 1,
             guidance_scale: Tensor | None = None) -> Tensor:  # 0-d tensor -> [B, L, C]
    """One sampling step's velocity. `uncond` None: the model's prediction for `context` (guidance-distilled
    models). Else classifier-free guidance, without + scale * (with - without), where `uncond` is the
    unconditional context, or with `count` > 1 its one repeated token (module docstring, 1)."""
    if uncond is None:
        return forward_from_vec(model, x, vec, context)
    if count == 1:  # both halves as one batch, as hy3dgen runs them
        both = forward_from_vec(model, torch.cat([x] * 2), torch.cat([vec] * 2), torch.cat([context, uncond]))
        with_cond, without = both.chunk(2)
    else:
        with_cond = forward_from_vec(model, x, vec, context)
        without = forward_from_vec(model, x, vec, uncond, count)
    return without + guidance_scale * (with_cond - without)


def enable_step_graphs(model: torch.nn.Module) -> None:
    """Make `step_function(model)` replay each step from a CUDA graph (recorded once per input signature,
    models/cuda_graphs.py) on CUDA inputs. Idempotent."""
    if not step_graphs_enabled(model):
        model._step_graphs = GraphedForward(velocity)


def disable_step_graphs(model: torch.nn.Module) -> None:
    model.__dict__.pop("_step_graphs", None)


def step_function(model: torch.nn.Module) -> Callable[..., Tensor]:
    """`velocity`, or its CUDA-graph replay when `enable_step_graphs(model)` was called."""
    graphed = getattr(model, "_step_graphs", None)
    return graphed if isinstance(graphed, GraphedForward) else velocity


def step_graphs_enabled(model: torch.nn.Module) -> bool:
    return step_function(model) is not velocity


def repeated_token(context: Tensor) -> Tensor | None:  # [B, N, C] -> [B, 1, C]
    """The one token every row of `context` repeats, or None when its tokens differ."""
    first = context[:, :1]
    return first if bool((context == first).all()) else None
