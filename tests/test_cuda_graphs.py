"""CUDA-graph replay of a module's forward: off the GPU it must be the eager forward; on a GPU (the device
machine; skipped in CI) the replay must give the eager result bit for bit."""
from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from models.cuda_graphs import GraphedForward, graph_forward


def _tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def _inputs(device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=generator).to(device)
    hidden = torch.randn(1, 7, 16, generator=generator).to(device)
    return sample, torch.tensor(seed * 100.0 + 1.0, device=device), hidden


def test_off_the_gpu_the_graphed_forward_is_the_eager_one() -> None:
    unet = _tiny_unet()
    sample, timestep, hidden = _inputs("cpu", 1)
    with torch.no_grad():
        expected = unet(sample, timestep, hidden, return_dict=False)[0]
        graph_forward(graph_forward(unet))  # idempotent: one wrapper
        assert isinstance(unet.forward, GraphedForward) and not isinstance(unet.forward.eager, GraphedForward)
        got = unet(sample, timestep, hidden, return_dict=False)[0]
    assert torch.equal(got, expected)
    assert unet.forward.graphs == {}  # nothing captured on CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_replays_equal_eager_calls_with_new_inputs_each_time() -> None:
    unet = _tiny_unet().cuda()
    calls = [_inputs("cuda", seed) for seed in range(4)]
    with torch.no_grad():
        expected = [unet(*call, return_dict=False)[0] for call in calls]
        graph_forward(unet)
        got = [unet(*call, return_dict=False)[0] for call in calls]
        assert len(unet.forward.graphs) == 1  # one signature, captured once, replayed for the others
        with torch.enable_grad():  # autograd on: eager, nothing new captured
            unet(*calls[0], return_dict=False)
        assert len(unet.forward.graphs) == 1
    for want, have in zip(expected, got):
        assert torch.equal(want, have)
    assert got[0].data_ptr() != got[1].data_ptr()  # outputs are copies, not the graph's reused buffer


def test_cuda_graphs_setting_defaults_on_and_turns_off() -> None:
    from utils.settings import Settings

    assert Settings.from_env({}).cuda_graphs is True
    assert Settings.from_env({"CUDA_GRAPHS": "0"}).cuda_graphs is False
