"""The random-weight shape models of tests/tiny_models.py: the FlashVDM VAE's lighter geometry decoder, and
the rewired field that both VAEs must return alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from skimage import measure

from tests.tiny_models import (
    DEFAULT_GAIN,
    FIELD_LEVEL,
    build_vae,
    dit_config,
    rewire_geo_decoder,
    vae_config,
    vae_params,
)

TURBO = "hunyuan3d-2-vae-turbo"
# The wobble (rewire_geo_decoder's latent-dependent term), in field units, at the default wobble 0.1: each of
# the attention and MLP branches adds 0.1 * (a c_proj row, entries ~U(+-1/sqrt(n)) from nn.Linear's init) .
# (activations of rms about 0.6 and 0.4), i.e. about 0.1 * 0.6 / sqrt(3) = 0.035 and 0.023 rms over weight
# draws; 0.1 is 2.5 times their sum's rms. Measured on a 41^3 grid: 0.012 to 0.058 (tiny decoders, unit
# normal and DiT-sampled latents), 0.029 (real standard) and 0.040 (real turbo). A field within 0.1 of the
# exact one has its surface within 0.1 / 0.71 = 0.14 of it (0.71: the field's smallest gradient there).
WOBBLE_TOLERANCE = 0.1


def test_turbo_vae_params_are_the_lighter_decoder():
    real = vae_params("real", TURBO)
    assert real == {**vae_params("real"), "geo_decoder_downsample_ratio": 2, "geo_decoder_mlp_expand_ratio": 1,
                    "geo_decoder_ln_post": False}
    assert real["width"] // 2 == 512 and real["heads"] // 2 == 8  # head width 64, as the standard decoder's
    with pytest.raises(KeyError):
        vae_params("tiny", "some-future-vae")  # no silent turbo config for a VAE we know nothing of
    decoder = build_vae(vae_config(TURBO)).geo_decoder
    tiny = vae_params("tiny")
    assert not decoder.enable_ln_post and not hasattr(decoder, "ln_post")
    assert (decoder.latents_proj.in_features, decoder.latents_proj.out_features) == (tiny["width"], tiny["width"] // 2)
    block = decoder.cross_attn_decoder
    assert block.mlp.c_fc.out_features == tiny["width"] // 2  # expand 1
    assert block.attn.attention.heads == tiny["heads"] // 2
    assert isinstance(block.attn.attention.q_norm, torch.nn.Identity)  # hy3dgen turns qk_norm off without ln_post


def _fields(wobble: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(standard, turbo, exact) logits on a grid over the decoding box, for three latent seeds each."""
    standard = build_vae(dit_config("hunyuan3d-2")["vae"])  # the VAE inside the DiT files
    turbo = build_vae(vae_config(TURBO))
    if wobble is not None:
        for vae in (standard, turbo):
            rewire_geo_decoder(vae, wobble=wobble)
    axis = torch.linspace(-1.01, 1.01, 41)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
    exact = DEFAULT_GAIN * (torch.cos(points).sum(-1) - FIELD_LEVEL)
    fields = []
    with torch.no_grad():
        for vae in (standard, turbo):
            per_seed = []
            for seed in range(3):
                latents = torch.randn(1, *vae.latent_shape, generator=torch.Generator().manual_seed(seed))
                per_seed.append(vae.geo_decoder(queries=points, latents=vae(latents))[..., 0])
            fields.append(torch.cat(per_seed))
    return fields[0], fields[1], exact.expand(3, -1)


def test_without_wobble_both_decoders_return_the_exact_field():
    standard, turbo, exact = _fields(wobble=0.0)
    # Turbo: channel 0 reaches output_proj as it is. Standard: ln_post divides it by
    # sqrt(big^2 + field^2) * sqrt(2 / width), not big * sqrt(2 / width): relative error field^2 / (2 big^2),
    # at most 1.1^2 / 800 < 0.0016 in the box (the field's bracket is >= 3 cos 1.01 - 2.7 = -1.1).
    assert torch.allclose(turbo, exact, atol=1e-5 * DEFAULT_GAIN, rtol=0)
    assert torch.allclose(standard, exact, atol=1e-5 * DEFAULT_GAIN, rtol=0.0016)


def test_with_wobble_both_decoders_give_the_same_closed_surface():
    standard, turbo, exact = _fields(wobble=None)  # the default wobble, as the tests and the benchmark use
    band = WOBBLE_TOLERANCE * DEFAULT_GAIN
    for field in (standard, turbo):
        assert (field - exact).abs().max() < band
        assert (field[1:] - field[0]).abs().max() > 1e-4 * DEFAULT_GAIN  # the latents do reach the output
    clear = exact.abs() > band  # off the band where the wobbles may move it, the sign pattern is the exact one
    assert ((standard > 0) == (exact > 0))[clear].all() and ((turbo > 0) == (exact > 0))[clear].all()
    assert ((standard > 0) == (turbo > 0)).float().mean() > 0.95  # the band is a thin shell
    # One closed surface each, reaching the exact one's +-acos(0.7) = +-0.795 on the axes to within the shift.
    shift = WOBBLE_TOLERANCE / 0.71
    for field in (standard, turbo):
        for grid in field.view(3, 41, 41, 41):
            vertices, faces, _, _ = measure.marching_cubes(grid.numpy(), 0.0, spacing=(2.02 / 40,) * 3)
            mesh = trimesh.Trimesh(vertices - 1.01, faces)
            assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
            assert np.allclose(mesh.bounds, [[-0.795] * 3, [0.795] * 3], atol=shift)
