"""Gutter dilation: the exact reference, one search for several maps, and jump flooding against the reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from pipeline.dilation import dilate, dilate_maps, dilate_maps_exact, dilate_maps_jump_flooding, nearest_covered
from pipeline.render.raster import rasterize_uv

SPOT = Path(__file__).resolve().parent / "data" / "spot"


def _spot_coverage(size: int) -> np.ndarray:  # [S, S] bool: a real UV layout's charts
    mesh = trimesh.load(SPOT / "spot_triangulated.obj", process=False)
    uvs = np.asarray(mesh.visual.uv, np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]
    faces = torch.as_tensor(np.asarray(mesh.faces, np.int64))
    return rasterize_uv(torch.as_tensor(uvs), faces, size).mask.numpy()


def _maps(size: int) -> dict[str, np.ndarray]:  # the texture stage's three dilated maps, realistic albedo
    rng = np.random.default_rng(0)
    albedo = np.array(Image.open(SPOT / "spot_texture.png").convert("RGB").resize((size, size)))
    normal = rng.random((size, size, 3), dtype=np.float32)
    ao = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return {"albedo": albedo, "normal": normal, "ao": ao}


def test_dilate_fills_near_texels_and_keeps_covered_ones() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((32, 32, 3), np.uint8)
    coverage = np.zeros((32, 32), bool)
    coverage[8:16, 8:16] = True
    image[coverage] = rng.integers(1, 255, (64, 3), dtype=np.uint8)
    out = dilate(image, coverage, pixels=3)
    assert np.array_equal(out[coverage], image[coverage])
    assert (out[5:19, 8:16] > 0).all() and (out[8:16, 5:19] > 0).all()  # within 3 texels: filled
    assert (out[:4] == 0).all() and (out[:, 20:] == 0).all()  # further away stays as it was
    # a filled texel copies its nearest covered neighbour
    assert np.array_equal(out[8, 6], image[8, 8])
    assert np.array_equal(out[17, 17], image[15, 15])
    single = dilate(image[..., 0], coverage, pixels=100)
    assert (single > 0).all()


def test_pixels_of_the_size_fill_every_texel() -> None:
    """One covered corner texel: the opposite corner is 21 texels away, yet pixels=16 (the size) fills it."""
    coverage = np.zeros((16, 16), bool)
    coverage[0, 0] = True
    image = np.zeros((16, 16), np.uint8)
    image[0, 0] = 7
    assert (dilate(image, coverage, pixels=16) == 7).all()
    assert (dilate_maps_exact({"x": image}, coverage, pixels=16)["x"] == 7).all()
    assert (dilate_maps_jump_flooding({"x": image}, torch.as_tensor(coverage), pixels=16)["x"] == 7).all()
    bounded = dilate(image, coverage, pixels=15)
    assert bounded[15, 15] == 0 and bounded[0, 15] == 7
    for out in (dilate_maps_exact({"x": image}, coverage, pixels=15)["x"],
                dilate_maps_jump_flooding({"x": image}, torch.as_tensor(coverage), pixels=15)["x"]):
        assert np.array_equal(out, bounded)


@pytest.mark.parametrize("pixels", [4, 256])
def test_one_exact_search_equals_the_reference_per_map(pixels: int) -> None:
    coverage = _spot_coverage(256)
    maps = _maps(256)
    out = dilate_maps(maps, coverage, pixels=pixels, device="cpu")
    assert list(out) == list(maps)
    for name, image in maps.items():
        assert out[name].dtype == image.dtype and out[name].shape == image.shape
        assert np.array_equal(out[name], dilate(image, coverage, pixels=pixels)), name
    # tensors in, the same arrays out
    from_tensors = dilate_maps({k: torch.as_tensor(v) for k, v in maps.items()}, torch.as_tensor(coverage),
                               pixels=pixels, device="cpu")
    assert all(np.array_equal(from_tensors[k], out[k]) for k in maps)


@pytest.mark.parametrize("layout", ["spot", "sparse"])
def test_jump_flooding_finds_a_nearly_nearest_covered_texel(layout: str) -> None:
    size = 256 if layout == "spot" else 96
    coverage = _spot_coverage(size) if layout == "spot" else np.random.default_rng(2).random((size, size)) < 0.01
    source, squared = nearest_covered(torch.as_tensor(coverage))
    source, squared = source.numpy(), squared.numpy()
    index = np.arange(size * size).reshape(size, size)
    assert (source >= 0).all() and coverage.reshape(-1)[source].all()
    assert np.array_equal(source[coverage], index[coverage])
    rows, cols = np.indices((size, size))
    assert np.array_equal((rows - source // size) ** 2 + (cols - source % size) ** 2, squared)
    extra = np.sqrt(squared) - ndimage.distance_transform_edt(~coverage)
    assert extra.max() < 1.5 and (extra < 1e-9).mean() > 0.999


@pytest.mark.parametrize("pixels", [4, 256])
def test_jump_flooding_dilation_agrees_with_the_reference(pixels: int) -> None:
    size = 256
    coverage = _spot_coverage(size)
    maps = {**_maps(size), "index": np.arange(size * size, dtype=np.int32).reshape(size, size)}
    fast = dilate_maps_jump_flooding(maps, torch.as_tensor(coverage), pixels=pixels)
    exact = dilate_maps_exact(maps, coverage, pixels=pixels)
    for name, image in maps.items():
        assert fast[name].dtype == image.dtype and fast[name].shape == image.shape
        assert np.array_equal(fast[name][coverage], image[coverage]), name
    # over 99.5 % of the texels as the reference; the 0.1-0.2 % that differ here are all ties (another covered
    # texel at the same distance), jump flooding's rare misses would count too
    differ = (fast["albedo"] != exact["albedo"]).any(-1)
    assert differ.mean() < 0.005
    # every copied texel comes from a covered texel within the bound and at most 1.5 texels further than the
    # nearest one; texels the reference leaves alone stay alone
    distance = ndimage.distance_transform_edt(~coverage)
    source = fast["index"]
    copied = source != maps["index"]
    assert coverage.reshape(-1)[source[copied]].all()
    rows, cols = np.indices((size, size))
    chosen = np.hypot(rows - source // size, cols - source % size)
    assert (chosen[copied] <= pixels).all() and (chosen - distance)[copied].max() < 1.5
    reference_copied = exact["index"] != maps["index"]
    assert not (copied & ~reference_copied).any() and copied.sum() >= 0.999 * reference_copied.sum()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CUDA run with the CPU one")
def test_dilate_maps_on_cuda_is_jump_flooding() -> None:
    coverage = _spot_coverage(512)
    maps = _maps(512)
    on_cuda = dilate_maps(maps, coverage, pixels=512, device="cuda")
    on_cpu = dilate_maps_jump_flooding(maps, torch.as_tensor(coverage), pixels=512)
    assert all(np.array_equal(on_cuda[k], on_cpu[k]) for k in maps)
