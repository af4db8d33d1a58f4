"""models/torchvision_compat.py: the torchvision stand-in and the hy3dgen import that uses it."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.torchvision_compat import CenterCrop, Compose, InterpolationMode, Normalize, Resize, import_shapegen

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_resize_matches_pil_bilinear_antialias():
    """torchvision's tensor Resize (bilinear, antialias) is defined to match PIL's BILINEAR resize."""
    rgb = np.asarray(Image.open(EXAMPLES / "chair_wood.jpg").convert("RGB").resize((160, 120)))
    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None] / 255  # [1, 3, 120, 160]
    out = Resize(48, InterpolationMode.BILINEAR, antialias=True)(tensor)
    assert out.shape == (1, 3, 48, 64)  # shorter edge -> 48, longer edge int(48 * 160 / 120)
    pil = np.asarray(Image.fromarray(rgb).resize((64, 48), Image.BILINEAR)).astype(np.float32) / 255
    ours = out[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - pil).mean() < 2 / 255
    assert np.abs(ours - pil).max() < 12 / 255


def test_resize_size_rule_and_identity():
    image = torch.rand(2, 3, 50, 30)
    assert Resize(20)(image).shape == (2, 3, 33, 20)  # int(20 * 50 / 30) = 33
    assert Resize([10, 12])(image).shape == (2, 3, 10, 12)
    assert Resize(30)(image) is image


def test_center_crop_and_normalize_match_their_definitions():
    image = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).view(2, 3, 7, 9)
    # torchvision: top = int(round((h - th) / 2)), left = int(round((w - tw) / 2))
    assert torch.equal(CenterCrop(4)(image), image[..., 2:6, 2:6])
    padded = CenterCrop((9, 9))(image)  # smaller than the crop: zero-padded first (left/top floor(pad / 2))
    assert padded.shape == (2, 3, 9, 9) and torch.equal(padded[..., 1:8, :], image) and padded[..., 0, :].eq(0).all()
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    expected = (image - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(Normalize(mean, std)(image), expected)
    chain = Compose([Resize(7), CenterCrop(7), Normalize(mean, std)])
    assert chain(image).shape == (2, 3, 7, 7)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_stand_in_is_gone_after_import_and_transformers_sees_no_torchvision():
    shapegen = import_shapegen()
    from transformers.utils import is_torchvision_available

    assert "torchvision" not in sys.modules and "torchvision.transforms" not in sys.modules
    assert not is_torchvision_available()
    conditioner = sys.modules["hy3dgen.shapegen.models.conditioner"]
    assert conditioner.transforms.Resize is Resize
    assert shapegen.Hunyuan3DDiTFlowMatchingPipeline is not None
