"""The PyTorch rasteriser: fast path against the per-pixel reference, camera conventions, UV space."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.render.camera import orbit_camera, project_points
from pipeline.render.raster import (
    interpolate,
    rasterize,
    rasterize_reference,
    rasterize_uv,
    rasterize_uv_reference,
)


def _random_mesh(seed: int, vertices: int = 60, faces: int = 90) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(vertices, 3, generator=g) * 1.8 - 0.9
    f = torch.randint(0, vertices, (faces, 3), generator=g)
    return v, f


def _assert_match(fast, ref, min_equal: float = 0.995) -> None:
    same = fast.face_id == ref.face_id
    # ids may differ only on exact edges and depth ties; both sides agree on everything else
    assert same.float().mean() >= min_equal
    assert fast.mask.any()
    covered = same & fast.mask
    assert torch.allclose(fast.bary[covered], ref.bary[covered], atol=1e-4)
    assert torch.allclose(fast.depth[covered], ref.depth[covered], atol=1e-4)
    assert torch.isinf(fast.depth[~fast.mask]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fov", [0.0, 50.0])
def test_camera_fast_path_matches_reference(seed: int, fov: float) -> None:
    v, f = _random_mesh(seed)
    camera = orbit_camera(37.0 * seed - 20.0, 25.0 - 10.0 * seed, size=41, fov=fov)
    fast = rasterize(v, f, camera, chunk=997)  # small chunks: candidates straddle chunk borders
    _assert_match(fast, rasterize_reference(v, f, camera))


@pytest.mark.parametrize("seed", [3, 4])
def test_uv_fast_path_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    uvs = torch.rand(50, 2, generator=g)
    faces = torch.randint(0, 50, (70, 3), generator=g)
    fast = rasterize_uv(uvs, faces, 57, chunk=1500)
    ref = rasterize_uv_reference(uvs, faces, 57)
    same = fast.face_id == ref.face_id
    assert same.float().mean() >= 0.995
    assert torch.allclose(fast.bary[same & fast.mask], ref.bary[same & fast.mask], atol=1e-4)


def test_nearest_fragment_wins() -> None:
    # two overlapping squares facing the front camera; the one at z = 0.5 is nearer than z = -0.5
    quad = torch.tensor([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float32) * 0.8
    far = torch.cat([quad, torch.full((4, 1), -0.5)], 1)
    near = torch.cat([quad * 0.5, torch.full((4, 1), 0.5)], 1)
    v = torch.cat([far, near])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    frags = rasterize(v, f, orbit_camera(0.0, 0.0, size=32))
    centre = frags.face_id[16, 16].item()
    assert centre in (2, 3)
    assert frags.face_id[4, 16].item() in (0, 1)  # only the far square reaches row 4
    assert frags.depth[16, 16].item() == pytest.approx(3.0 - 0.5, abs=1e-4)  # camera at distance 3


def test_front_view_pixel_mapping_follows_types() -> None:
    # pipeline/types.py: pixel (col, row) of an N x N front view sees x = (col+.5)/N*2-1, y = 1-(row+.5)/N*2
    n = 64
    camera = orbit_camera(0.0, 0.0, size=n)
    points = torch.tensor([[0.5, 0.25, 0.3], [-0.75, -0.5, -0.2]])
    xy, _, _ = project_points(points, camera)
    expected = torch.tensor([[(0.5 + 1) / 2 * n, (1 - 0.25) / 2 * n], [(-0.75 + 1) / 2 * n, (1 + 0.5) / 2 * n]])
    assert torch.allclose(xy, expected, atol=1e-4)
    # an interpolated plane at z = 0 returns the world point under each pixel centre
    v = torch.tensor([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=torch.float32)
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize(v, f, camera)
    assert frags.mask.all()
    pos = interpolate(v, f, frags)
    cols = (torch.arange(n) + 0.5) / n * 2 - 1
    assert torch.allclose(pos[5, :, 0], cols, atol=1e-5)
    assert torch.allclose(pos[:, 7, 1], -cols, atol=1e-5)


def test_orbit_azimuths_follow_view_azimuth() -> None:
    # right (90) looks from +X, back (180) from -Z, left (270) from -X
    for azimuth, eye in ((90.0, [1, 0, 0]), (180.0, [0, 0, -1]), (270.0, [-1, 0, 0]), (0.0, [0, 0, 1])):
        camera = orbit_camera(azimuth, 0.0, size=8, distance=3.0)
        assert np.allclose(camera.position, np.array(eye) * 3.0, atol=1e-9)
    top = orbit_camera(0.0, 90.0, size=8)  # straight down still gives a valid frame
    assert np.allclose(top.forward, [0, -1, 0], atol=1e-9)
    # the right camera's image-right is -Z: a point at -Z appears right of one at +Z
    xy, _, _ = project_points(torch.tensor([[0.0, 0, -0.5], [0.0, 0, 0.5]]), orbit_camera(90.0, 0.0, size=8))
    assert xy[0, 0] > xy[1, 0]


def test_uv_rows_follow_gltf_convention() -> None:
    # a triangle in the top strip of UV space (small v) covers the top rows of the map
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.25]])
    frags = rasterize_uv(uvs, torch.tensor([[0, 1, 2]]), 32)
    rows = torch.nonzero(frags.mask)[:, 0]
    assert rows.max().item() < 8 and rows.min().item() == 0
    # interpolating the UVs themselves gives back the texel centres
    uv = interpolate(uvs, torch.tensor([[0, 1, 2]]), frags)
    r, c = 1, 5
    assert torch.allclose(uv[r, c], torch.tensor([(c + 0.5) / 32, (r + 0.5) / 32]), atol=1e-5)


def test_full_square_leaves_no_gaps() -> None:
    # a grid of small triangles over the whole UV square covers every texel exactly once (no cracks)
    n = 37
    u, v = torch.meshgrid(torch.linspace(0, 1, n + 1), torch.linspace(0, 1, n + 1), indexing="ij")
    uvs = torch.stack([u.flatten(), v.flatten()], 1)
    idx = torch.arange((n + 1) ** 2).view(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].flatten(), idx[1:, :-1].flatten(), idx[1:, 1:].flatten(), idx[:-1, 1:].flatten()
    faces = torch.cat([torch.stack([a, b, c], 1), torch.stack([a, c, d], 1)])
    frags = rasterize_uv(uvs, faces, 128, chunk=5000)
    assert frags.mask.all()
    assert torch.allclose(frags.bary.sum(-1), torch.ones(128, 128), atol=1e-5)


def test_empty_inputs_and_deadline_callback() -> None:
    camera = orbit_camera(0.0, 0.0, size=16)
    empty = rasterize(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), camera)
    assert (empty.face_id == -1).all()
    v, f = _random_mesh(5)

    class Stop(Exception):
        pass

    def check() -> None:
        raise Stop

    with pytest.raises(Stop):
        rasterize(v, f, orbit_camera(0.0, 0.0, size=64), chunk=100, check=check)
