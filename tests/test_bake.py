"""Baking: tangent frames, normal maps (self-bake flat, bumps with the right sign), ambient occlusion."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipeline.bake import bake_ao, bake_normal_map, tangent_frames, texel_surface
from pipeline.context import Deadline, StageContext
from pipeline.render.geometry import vertex_normals
from pipeline.types import MeshData
from pipeline.uv import unwrap

DATA = Path(__file__).resolve().parent / "data"


def _ctx() -> StageContext:
    return StageContext("texture", Deadline(120))


def _grid(n: int, height=lambda x, y: 0.0 * x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Square [-1, 1]^2 in the z = height(x, y) sheet facing +Z; UVs map it onto the whole image with
    +Y at the top (u = (x + 1) / 2, v = (1 - y) / 2)."""
    x, y = np.meshgrid(np.linspace(-1, 1, n + 1), np.linspace(-1, 1, n + 1), indexing="xy")
    vertices = np.stack([x, y, height(x, y)], -1).reshape(-1, 3).astype(np.float32)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int32)
    uvs = np.stack([(vertices[:, 0] + 1) / 2, (1 - vertices[:, 1]) / 2], 1).astype(np.float32)
    return vertices, faces, uvs


@pytest.fixture(scope="module")
def spot_unwrapped() -> tuple[MeshData, tuple[np.ndarray, ...]]:
    mesh = trimesh.load(DATA / "spot" / "spot_triangulated.obj", process=False)
    data = MeshData(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32))
    v, f, uv, vmap = unwrap(data, ctx=_ctx(), texture_size=256)
    normals = vertex_normals(data.vertices, data.faces)[vmap]
    return data, (v, f, uv, normals, tangent_frames(v, f, uv, normals))


def test_plane_tangents_follow_u_and_image_up() -> None:
    v, f, uv = _grid(2)
    normals = vertex_normals(v, f)
    assert np.allclose(normals, [0, 0, 1], atol=1e-6)
    tangents = tangent_frames(v, f, uv, normals)
    assert np.allclose(tangents, [1, 0, 0, 1], atol=1e-6)  # T = +u = +X; bitangent cross(N, T) = +Y = image up
    mirrored = uv.copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]  # mirrored chart: u runs along -X, handedness flips
    assert np.allclose(tangent_frames(v, f, mirrored, normals), [-1, 0, 0, -1], atol=1e-6)


def test_tangents_orthonormal_with_consistent_handedness(spot_unwrapped) -> None:
    _, (v, f, uv, normals, tangents) = spot_unwrapped
    t, w = tangents[:, :3], tangents[:, 3]
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert np.abs((t * normals).sum(1)).max() < 1e-5
    assert set(np.unique(w)) <= {-1.0, 1.0}
    # every face's corners agree, and w says whether its chart is mirrored: w = +1 when the UV triangle,
    # with v pointing up the image, winds the same way as the (counter-clockwise) face
    corner_w = w[f]
    agree = (corner_w == corner_w[:, :1]).all(1)
    p = uv[f].astype(np.float64) * [1, -1]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    orientation = np.sign(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert agree.mean() > 0.99
    assert (orientation == corner_w[:, 0]).mean() > 0.99


def test_self_bake_is_flat(spot_unwrapped) -> None:
    data, low = spot_unwrapped
    surface = texel_surface(*low[:4], size=256)
    normal_map = bake_normal_map(low, data, size=256, ctx=_ctx(), surface=surface)
    covered = surface.mask.numpy()
    diff = np.abs(normal_map[covered].astype(int) - [128, 128, 255]).max(1)
    assert (diff <= 2).mean() > 0.999
    assert (normal_map[~covered] == [128, 128, 255]).all()


def test_bump_shows_with_the_right_sign() -> None:
    def bump(x, y):
        return 0.15 * np.exp(-(x**2 + y**2) / 0.1)

    low_v, low_f, low_uv = _grid(1)
    normals = vertex_normals(low_v, low_f)
    low = (low_v, low_f, low_uv, normals, tangent_frames(low_v, low_f, low_uv, normals))
    dense_v, dense_f, _ = _grid(120, bump)
    size = 64
    normal_map = bake_normal_map(low, MeshData(dense_v, dense_f), size=size, ctx=_ctx(), cage=0.3).astype(int)

    # analytic normal of the bump at every texel centre, in the plane's tangent frame (T = +X, B = +Y)
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(centres, -centres, indexing="xy")  # row 0 is the top of the image: +Y
    slope = -2 * bump(x, y) / 0.1
    n = np.stack([-slope * x, -slope * y, np.ones_like(x)], -1)
    expected = np.round((n / np.linalg.norm(n, axis=-1, keepdims=True) * 0.5 + 0.5) * 255)
    assert np.abs(normal_map - expected).max() <= 6
    row, col = size // 2, int(1.3 / 2 * size)  # (x, y) ~ (0.3, 0): tilted towards +X -> red well above 128
    assert normal_map[row, col, 0] > 160 and normal_map[row, size - 1 - col, 0] < 96
    assert normal_map[int(0.35 * size), size // 2, 1] > 160  # y ~ +0.3 (upper half): green up (OpenGL)


def test_bake_takes_the_side_facing_like_the_low_surface() -> None:
    # a thin slab around the low plane: its underside (facing -Z) is nearer along the normal than its top;
    # the bake must take the top, not report a flipped normal
    low_v, low_f, low_uv = _grid(1)
    normals = vertex_normals(low_v, low_f)
    low = (low_v, low_f, low_uv, normals, tangent_frames(low_v, low_f, low_uv, normals))
    top_v, top_f, _ = _grid(8, lambda x, y: 0.0 * x + 0.02)
    bottom_v, bottom_f, _ = _grid(8, lambda x, y: 0.0 * x - 0.01)
    slab = MeshData(
        np.concatenate([top_v, bottom_v]), np.concatenate([top_f, bottom_f[:, ::-1] + len(top_v)]).astype(np.int32)
    )
    normal_map = bake_normal_map(low, slab, size=16, ctx=_ctx(), cage=0.1)
    assert (np.abs(normal_map.astype(int) - [128, 128, 255]) <= 1).all()


def test_ao_open_plane_is_unoccluded() -> None:
    v, f, uv = _grid(4)
    surface = texel_surface(v, f, uv, vertex_normals(v, f), size=32)
    ao = bake_ao(MeshData(v, f), surface, samples=64, resolution=64, ctx=_ctx())
    assert ao.shape == (32, 32) and ao.dtype == np.float32
    assert ao.min() > 0.95


def test_ao_inside_an_open_box_is_dark() -> None:
    # floor [-1, 1]^2 at y = 0 facing +Y, walls 2 high: the floor centre sees the sky through a 2 x 2
    # opening 2 above it; its cosine-weighted visibility (point-to-rectangle form factor) is 0.24
    corners = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], np.float32)
    top = corners + [0, 2, 0]
    vertices = np.concatenate([corners, top])
    floor = [[0, 2, 1], [0, 3, 2]]
    walls = []
    for i in range(4):
        j = (i + 1) % 4
        walls += [[i, j, j + 4], [i, j + 4, i + 4]]
    faces = np.array(floor + walls, np.int32)
    floor_faces = np.array(floor, np.int32)
    uvs = np.stack([(corners[:, 0] + 1) / 2, (corners[:, 2] + 1) / 2], 1).astype(np.float32)
    normals = np.tile([[0.0, 1.0, 0.0]], (4, 1)).astype(np.float32)
    surface = texel_surface(corners, floor_faces, uvs, normals, size=32)
    ao = bake_ao(MeshData(vertices, faces), surface, samples=128, resolution=128, ctx=_ctx())
    assert ao.mean() < 0.6
    assert ao[14:18, 14:18].mean() == pytest.approx(0.24, abs=0.05)
    assert ao[1, 1] < ao[16, 16] - 0.04  # corners are darker than the centre (form factor 0.14)
