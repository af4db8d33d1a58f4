"""pipeline/background.py: GrabCut background removal against known cut-outs, and the mask clean-up."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.background import clean_mask, remove_background
from tests.helpers import example_bytes


def _composite(name: str, backdrop: int) -> tuple[np.ndarray, np.ndarray]:
    """An example with alpha, flattened onto a plain backdrop: (rgb [H,W,3] uint8, true mask [H,W] bool)."""
    rgba = np.asarray(Image.open(io.BytesIO(example_bytes(name))).convert("RGBA")).astype(np.float32)
    weight = rgba[..., 3:] / 255.0
    rgb = np.rint(rgba[..., :3] * weight + backdrop * (1.0 - weight)).astype(np.uint8)
    return rgb, rgba[..., 3] >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(("name", "backdrop"), [("extinguisher.png", 255), ("extinguisher.png", 128),
                                                ("lantern.png", 255), ("crate.png", 128)])
def test_grabcut_recovers_known_cutouts(name: str, backdrop: int) -> None:
    rgb, truth = _composite(name, backdrop)
    mask = remove_background(rgb, method="grabcut")
    assert mask.shape == truth.shape and mask.dtype == bool
    assert _iou(mask, truth) > 0.95


def test_object_touching_the_frame_is_kept() -> None:
    rgb = np.full((120, 160, 3), 235, np.uint8)
    rgb[30:, 50:110] = [150, 60, 30]  # a brown box standing on the bottom edge
    rgb[60:70, 70:90] = [90, 40, 20]
    truth = np.zeros((120, 160), bool)
    truth[30:, 50:110] = True
    assert _iou(remove_background(rgb, method="grabcut"), truth) > 0.97


def test_large_picture_is_cut_at_working_size_and_returned_full_size() -> None:
    rgb, truth = _composite("extinguisher.png", 255)
    big = np.kron(rgb, np.ones((3, 3, 1), np.uint8))  # 768 x 768
    mask = remove_background(big, method="grabcut")
    assert mask.shape == (768, 768)
    assert _iou(mask, np.kron(truth, np.ones((3, 3), bool))) > 0.95


def test_known_background_stays_background() -> None:
    rgb, truth = _composite("extinguisher.png", 255)
    known = ~truth
    known[:, 128:] = False  # the backdrop of the left half was already transparent
    mask = remove_background(rgb, method="grabcut", known_background=known)
    assert not (mask & known).any()
    assert _iou(mask, truth) > 0.95


def test_check_is_called_between_iterations_and_can_stop() -> None:
    rgb, _ = _composite("extinguisher.png", 255)
    calls: list[int] = []

    class Stop(Exception):
        pass

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        remove_background(rgb, method="grabcut", check=check)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown background removal method 'u2net'"):
        remove_background(np.zeros((4, 4, 3), np.uint8), method="u2net")


def test_clean_mask_keeps_largest_component_and_fills_small_holes_only() -> None:
    mask = np.zeros((200, 200), bool)
    mask[20:180, 20:180] = True
    mask[50:53, 50:53] = False  # a speck of highlight: filled
    mask[90:150, 90:150] = False  # a real gap (the space between chair legs): kept
    mask[0:5, 195:200] = True  # a stray blob in the corner: dropped
    cleaned = clean_mask(mask)
    assert cleaned[51, 51] and not cleaned[120, 120] and not cleaned[2, 197]
    assert cleaned[20:180, 20:180].sum() == 160 * 160 - 60 * 60


def test_clean_mask_of_nothing() -> None:
    assert not clean_mask(np.zeros((5, 5), bool)).any()
