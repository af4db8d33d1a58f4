"""models/dit_forward.py against hy3dgen's own `Hunyuan3DDiT.forward`, on tiny random models (CPU; the
CUDA-graph replay on CUDA only)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.cuda_graphs import GraphedForward
from models.dit_forward import (
    disable_step_graphs,
    enable_step_graphs,
    forward_from_vec,
    repeated_key_attention,
    repeated_token,
    step_function,
    step_graphs_enabled,
    time_vector,
    velocity,
)
from models.torchvision_compat import import_shapegen
from pipeline.hunyuan_sampler import encode_condition
from tests.helpers import REPO
from tests.tiny_models import build_pipeline, dit_config

GENERATOR_SEED = 1


def _dit(name: str, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        return import_shapegen().pipelines.instantiate_from_config(dit_config(name)["model"]).eval()


def _inputs(batch: int = 2, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(GENERATOR_SEED)
    x = torch.randn(batch, 24, 8, generator=generator)
    t = torch.rand(batch, generator=generator)
    context = torch.randn(batch, 50, 32, generator=generator)
    return x.to(device), t.to(device), context.to(device)


def _close(got: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance * float(expected.abs().max()))


@pytest.mark.parametrize("count", [1, 2, 37])
def test_repeated_key_attention_is_sdpa_on_the_repeated_keys(count):
    torch.manual_seed(count)
    q, k, v = (torch.randn(2, 3, length, 16) for length in (11, 6, 6))
    k[:, :, 0] *= 3  # a key that dominates some queries, so its weight matters
    repeated_k = torch.cat([k[:, :, :1].expand(-1, -1, count, -1), k[:, :, 1:]], dim=2)
    repeated_v = torch.cat([v[:, :, :1].expand(-1, -1, count, -1), v[:, :, 1:]], dim=2)
    expected = F.scaled_dot_product_attention(q, repeated_k, repeated_v).transpose(1, 2).reshape(2, 11, 48)
    _close(repeated_key_attention(q, k, v, math.log(count)), expected)


@pytest.mark.parametrize("name", ["hunyuan3d-2", "hunyuan3d-2-turbo"])
@torch.inference_mode()
def test_forward_from_the_time_vector_is_hy3dgens_forward(name):
    model = _dit(name)
    x, t, context = _inputs()
    guidance = torch.tensor([5.0, 3.5]) if model.guidance_embed else None
    stock = model(x, t, {"main": context}, guidance=guidance)
    assert torch.equal(forward_from_vec(model, x, time_vector(model, t, guidance), context), stock)


def test_a_guidance_distilled_model_needs_its_guidance():
    with pytest.raises(ValueError, match="guidance strength"):
        time_vector(_dit("hunyuan3d-2-turbo"), torch.zeros(1))


@pytest.mark.parametrize("zeros", [True, False], ids=["hy3dgen-zeros", "any-token"])
@torch.inference_mode()
def test_one_repeated_token_gives_the_forward_on_the_full_context(zeros):
    model = _dit("hunyuan3d-2")
    x, t, context = _inputs()
    token = torch.zeros_like(context[:, :1]) if zeros else context[:, :1]
    stock = model(x, t, {"main": token.expand(-1, 50, -1)})
    _close(forward_from_vec(model, x, time_vector(model, t), token, count=50), stock)


@torch.inference_mode()
def test_guided_velocity_equals_hy3dgens_batched_guidance():
    model = _dit("hunyuan3d-2")
    x, t, context = _inputs(batch=1)
    uncond = torch.zeros_like(context)
    scale = torch.tensor(5.0)
    with_cond, without = model(torch.cat([x] * 2), t.expand(2), {"main": torch.cat([context, uncond])}).chunk(2)
    expected = without + 5.0 * (with_cond - without)
    vec = time_vector(model, t)
    _close(velocity(model, x, vec, context, uncond, 1, scale), expected)  # vec: batch 1, not 2: rounding
    _close(velocity(model, x, vec, context, uncond[:, :1], 50, scale), expected)
    assert torch.equal(velocity(model, x, vec, context), model(x, t, {"main": context}))


def test_repeated_token():
    context = torch.zeros(2, 5, 4)
    assert torch.equal(repeated_token(context), context[:, :1])
    context[1, 3, 2] = 1.0
    assert repeated_token(context) is None


def test_the_sampler_runs_hy3dgens_unconditional_half_on_one_token():
    pipe = build_pipeline(dit_config("hunyuan3d-2"), device="cpu", dtype=torch.float32)
    image = Image.open(REPO / "examples" / "crate.png").convert("RGBA")
    condition = encode_condition(pipe, image, guidance_scale=5.0)
    assert condition.uncond_token is not None and condition.uncond_token.shape[1] == 1
    assert condition.context_tokens == condition.cond["main"].shape[1] > 1
    distilled = build_pipeline(dit_config("hunyuan3d-2-turbo"), device="cpu", dtype=torch.float32)
    assert encode_condition(distilled, image, guidance_scale=5.0).uncond_token is None


def test_step_graphs_switch():
    model = _dit("hunyuan3d-2")
    assert step_function(model) is velocity and not step_graphs_enabled(model)
    enable_step_graphs(model)
    graphed = step_function(model)
    assert isinstance(graphed, GraphedForward) and step_graphs_enabled(model)
    enable_step_graphs(model)
    assert step_function(model) is graphed  # idempotent: recorded graphs are kept
    x, t, context = _inputs(batch=1)
    with torch.inference_mode():  # CPU tensors: the graphed step runs the plain one
        vec = time_vector(model, t)
        assert torch.equal(graphed(model, x, vec, context), velocity(model, x, vec, context))
    disable_step_graphs(model)
    assert step_function(model) is velocity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@torch.inference_mode()
def test_replayed_guided_steps_equal_the_plain_ones_on_cuda():
    model = _dit("hunyuan3d-2", device="cuda").half()
    x, t, context = (tensor.cuda() for tensor in _inputs(batch=1))
    x, context = x.half(), context.half()
    enable_step_graphs(model)
    step = step_function(model)
    scale = torch.tensor(5.0, device="cuda")
    uncond = torch.zeros_like(context[:, :1])
    for shift in (0.0, 0.3, 0.6):  # new inputs each call: the replay must read them
        vec = time_vector(model, (t + shift).half())
        expected = velocity(model, x + shift, vec, context, uncond, 50, scale)
        assert torch.equal(step(model, x + shift, vec, context, uncond, 50, scale), expected)
    assert len(step.graphs) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA attention kernels need a CUDA device")
@pytest.mark.parametrize("kernel, dtype", [("cudnn", torch.float16), ("flash", torch.float16),
                                           ("flash", torch.bfloat16), ("efficient", torch.float32)])
def test_every_cuda_log_sum_exp_kernel_weighs_the_repeated_key(kernel, dtype):
    if kernel == "cudnn" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("cuDNN attention is used on Hopper and later only")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, length, 64, device="cuda") for length in (300, 200, 200))
    repeated = [torch.cat([t[:, :, :1].expand(-1, -1, 37, -1), t[:, :, 1:]], dim=2) for t in (k, v)]
    expected = F.scaled_dot_product_attention(q, *repeated).transpose(1, 2).reshape(1, 300, 256)
    got = repeated_key_attention(q.to(dtype), k.to(dtype), v.to(dtype), math.log(37), kernel)
    _close(got.float(), expected, tolerance=1e-2 if dtype != torch.float32 else 1e-4)
