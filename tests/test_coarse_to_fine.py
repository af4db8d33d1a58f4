"""Coarse-to-fine volume decoding (pipeline/coarse_to_fine.py) against decoding every grid point."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import meshops
from pipeline.coarse_to_fine import decode_coarse_to_fine, levels
from pipeline.context import Deadline, StageContext
from pipeline.errors import JobCancelled
from pipeline.hunyuan_sampler import (
    ShapeSettings,
    decode_volume,
    encode_condition,
    extract_surface,
    sample_latents,
)
from tests.helpers import REPO
from tests.tiny_models import build_pipeline, dit_config

CPU = torch.device("cpu")
STEEP = 250.0  # logits as steep as a trained decoder's (bench/shape_gpu.py's default --field-gain)


def full_grid(field, resolution: int, box_v: float = 1.01) -> torch.Tensor:  # [B, R+1, R+1, R+1]
    axis = torch.from_numpy(np.linspace(-box_v, box_v, resolution + 1, dtype=np.float32))
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    return field(points).view(-1, resolution + 1, resolution + 1, resolution + 1)


def settings(resolution: int, decoder: str = "vanilla") -> ShapeSettings:
    return ShapeSettings(steps=2, guidance_scale=5.0, octree_resolution=resolution, num_chunks=8000, seed=0,
                         decoder=decoder)


def test_levels_halve_down_to_a_quarter():
    assert levels(384) == [96, 192, 384]
    assert levels(64) == [16, 32, 64]
    assert levels(48) == [24, 48]  # 12 would be below the 16 floor
    assert levels(383) == [383]  # odd: the fine points would not line up with the coarse ones
    assert levels(384, halvings=3) == [48, 96, 192, 384]


@pytest.mark.parametrize("gain", [3.0, STEEP])
def test_analytic_fields_give_the_full_grid_mesh(gain):
    """Two fields at once (batch 2): a rounded box, and two plates about one fine cell thick."""

    def field(points: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [2, N]
        box = torch.cos(points).sum(-1) - 2.7
        plates = 0.008 - (points[:, 2].abs() - 0.5).abs()  # |z| within 0.008 of 0.5
        return gain * torch.stack([box, plates])

    resolution = 128
    full = full_grid(field, resolution)
    ours, decoded = decode_coarse_to_fine(field, 2, resolution, 1.01, 0.0, torch.float32, CPU)
    assert not ours.isnan().any() and ((ours > 0) == (full > 0)).all()
    for index in range(2):
        mesh = extract_surface(ours[index : index + 1], settings(resolution))
        reference = extract_surface(full[index : index + 1], settings(resolution))
        assert np.array_equal(mesh.faces, reference.faces)
        assert np.array_equal(mesh.vertices, reference.vertices)
    if gain == STEEP:  # the band is thin: only a small part of the grid is decoded
        assert decoded < 0.35 * full[0].numel()


@pytest.fixture(scope="module")
def steep_run():
    """The tiny standard model with steep logits, sampled once; (pipe, latents)."""
    pipe = build_pipeline(dit_config("hunyuan3d-2"), device="cpu", dtype=torch.float32, gain=STEEP)
    image = Image.open(REPO / "examples" / "lantern.png").convert("RGBA")
    ctx = StageContext("mesh", Deadline(120.0))
    condition = encode_condition(pipe, image, 5.0)
    return pipe, sample_latents(pipe, condition, settings(64), ctx)


def test_hierarchical_decoding_gives_the_vanilla_mesh(steep_run):
    pipe, latents = steep_run
    ctx = StageContext("mesh", Deadline(120.0))
    vanilla = extract_surface(decode_volume(pipe, latents, settings(64), ctx), settings(64))
    hierarchical = extract_surface(decode_volume(pipe, latents, settings(64, "hierarchical"), ctx), settings(64))
    assert np.array_equal(hierarchical.faces, vanilla.faces)
    assert np.allclose(hierarchical.vertices, vanilla.vertices, atol=1e-6)
    # The steep field's wobble makes no extra surface: one closed outward component.
    stats = meshops.mesh_stats(meshops.clean_mesh(vanilla))
    assert stats["components"] == 1 and stats["watertight"] and stats["volume"] > 0


def test_hierarchical_decoding_checks_the_deadline_between_chunks(steep_run):
    pipe, latents = steep_run
    deadline = Deadline(120.0)
    # Cancel while the coarse grid (one chunk at octree 64) is decoded: the refinement must stop.
    hook = pipe.vae.geo_decoder.register_forward_hook(lambda *_: deadline.cancel())
    try:
        with pytest.raises(JobCancelled):
            decode_volume(pipe, latents, settings(64, "hierarchical"), StageContext("mesh", deadline))
    finally:
        hook.remove()
