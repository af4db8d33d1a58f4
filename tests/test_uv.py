"""UV unwrapping (xatlas in a killable child process, whole or in parts) and its quality figures."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from pipeline.context import Deadline, StageContext
from pipeline.errors import JobTimeout, StageError
from pipeline.render.raster import rasterize_uv
from pipeline.types import MeshData
from pipeline.uv import chart_padding, default_parts, face_charts, seam_edges, split_faces, unwrap, uv_quality

DATA = Path(__file__).resolve().parent / "data"


def _load(name: str) -> MeshData:
    mesh = trimesh.load(DATA / name, process=False)
    return MeshData(mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32))


def _children() -> list[str]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return path.read_text().split() if path.exists() else []


def test_unwrap_spot() -> None:
    mesh = _load("spot/spot_triangulated.obj")
    vertices, faces, uvs, vmapping = unwrap(mesh, ctx=StageContext("texture", Deadline(120)), texture_size=512)
    assert faces.shape == mesh.faces.shape and faces.dtype == np.int32
    assert vertices.shape[0] == uvs.shape[0] == vmapping.shape[0] >= mesh.vertices.shape[0]
    assert np.array_equal(vertices, mesh.vertices[vmapping])  # split copies of the original vertices
    # the same triangles, through the vertex map
    assert np.array_equal(vmapping[faces], mesh.faces)
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    # charts do not overlap: total UV area equals the union covered in the raster (within edge texels)
    frags = rasterize_uv(torch.as_tensor(uvs), torch.as_tensor(faces.astype(np.int64)), 512)
    t = uvs[faces].astype(np.float64)
    e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum()
    assert frags.mask.float().mean().item() == pytest.approx(area, rel=0.05)
    assert area > 0.4  # a reasonably packed atlas


def test_unwrap_is_killed_at_the_deadline() -> None:
    mesh = _load("stanford-bunny.obj")  # 69k faces: xatlas alone takes many seconds
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        unwrap(mesh, ctx=StageContext("texture", Deadline(0.5)), texture_size=2048)
    assert time.monotonic() - started < 2.5
    assert _children() == []  # the xatlas process is gone, not left running


def test_chart_padding_grows_with_texture_size() -> None:
    assert chart_padding(512) == 2
    assert chart_padding(4096) == 16


def test_unwrap_failure_is_a_stage_error() -> None:
    broken = MeshData(np.zeros((3, 3), np.float32), np.array([[0, 1, 7]], np.int32))  # index out of range
    with pytest.raises(StageError, match="UV unwrapping failed: .*Index out of range"):
        unwrap(broken, ctx=StageContext("texture", Deadline(60)), texture_size=512)


def _texel_chart_counts(uvs: np.ndarray, faces: np.ndarray, charts: np.ndarray, size: int) -> np.ndarray:
    """[size, size] number of different charts whose faces cover each texel centre (edges included)."""
    owners: list[set[int]] = [set() for _ in range(size * size)]
    points = uvs.astype(np.float64) * size
    for face, chart in zip(faces, charts):
        tri = points[face]
        low = np.maximum(np.floor(tri.min(axis=0) - 0.5).astype(int), 0)
        high = np.minimum(np.ceil(tri.max(axis=0) - 0.5).astype(int), size - 1)
        xs, ys = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1))
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5
        (ax, ay), (bx, by), (cx, cy) = tri
        det = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
        if abs(det) < 1e-12:
            continue
        l0 = ((by - cy) * (centres[:, 0] - cx) + (cx - bx) * (centres[:, 1] - cy)) / det
        l1 = ((cy - ay) * (centres[:, 0] - cx) + (ax - cx) * (centres[:, 1] - cy)) / det
        inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (1 - l0 - l1 >= -1e-6)
        for x, y in centres[inside].astype(int):
            owners[y * size + x].add(int(chart))
    return np.array([len(o) for o in owners]).reshape(size, size)


def _check_unwrap(mesh: MeshData, result: tuple[np.ndarray, ...], size: int) -> dict[str, float | int]:
    """The invariants of any unwrap; returns its uv_quality."""
    vertices, faces, uvs, vmapping = result
    assert faces.shape == mesh.faces.shape and faces.dtype == np.int32
    assert vertices.shape[0] == uvs.shape[0] == vmapping.shape[0] >= len(np.unique(mesh.faces))
    assert vmapping.dtype == np.int64 and uvs.dtype == np.float32
    assert np.array_equal(vertices, mesh.vertices[vmapping])
    assert np.array_equal(vmapping[faces], mesh.faces)  # every face kept, in order, through the vertex map
    assert np.isin(np.arange(len(vertices)), faces).all()  # no stray split vertex
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    _, charts = face_charts(faces)
    assert _texel_chart_counts(uvs, faces, charts, size).max() == 1  # no texel shared by two charts
    return uv_quality(faces, uvs, vmapping, size)


def test_split_faces_gives_equal_compact_parts() -> None:
    mesh = _load("spot/spot_triangulated.obj")
    groups = split_faces(mesh.vertices, mesh.faces, 5)
    assert len(groups) == 5
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(len(mesh.faces)))  # each face once
    sizes = [len(ids) for ids in groups]
    assert max(sizes) - min(sizes) <= 1
    # k-d cells: each part's box is much smaller than the mesh's
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    whole = np.prod(np.ptp(centroids, axis=0))
    assert all(np.prod(np.ptp(centroids[ids], axis=0)) < 0.6 * whole for ids in groups)
    assert [len(ids) for ids in split_faces(mesh.vertices, mesh.faces[:3], 8)] == [1, 1, 1]


def test_unwrap_in_parts_matches_the_one_piece_reference() -> None:
    mesh = _load("spot/spot_triangulated.obj")
    ctx = StageContext("texture", Deadline(120))
    reference = _check_unwrap(mesh, unwrap(mesh, ctx=ctx, texture_size=512, parts=1), 512)
    parted = _check_unwrap(mesh, unwrap(mesh, ctx=ctx, texture_size=512, parts=4), 512)
    assert parted["coverage"] == pytest.approx(reference["coverage"], abs=0.03)
    assert parted["coverage"] > 0.4
    assert parted["charts"] >= 4  # at least one chart per part
    assert parted["seam_edges"] < 2 * reference["seam_edges"]


def test_default_parts_follows_cores_and_size() -> None:
    assert default_parts(100) == 1  # a tiny mesh is not worth cutting
    assert default_parts(40_000) >= 2


def test_uv_quality_counts_charts_seams_and_covered_texels() -> None:
    # a unit square in two triangles, cut along its diagonal into two charts laid side by side
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    vmapping = np.array([0, 1, 2, 2, 1, 3])
    uvs = np.array([[0, 0], [0.5, 0], [0, 1], [1, 1], [1, 0], [0.5, 1]], np.float32) * [1, 0.5]
    quality = uv_quality(faces, uvs, vmapping, 64)
    assert quality == {"charts": 2, "coverage": pytest.approx(0.25, abs=0.02), "seam_edges": 1}
    frags = rasterize_uv(torch.as_tensor(uvs), torch.as_tensor(faces), 64)
    assert uv_quality(faces, uvs, vmapping, 64, covered=frags.mask.numpy()) == quality  # the caller's raster
    with pytest.raises(ValueError, match="64"):
        uv_quality(faces, uvs, vmapping, 64, covered=np.ones((32, 32), bool))
    assert seam_edges(np.array([[0, 1, 2], [2, 1, 3]]), np.arange(4)) == 0
    assert face_charts(np.array([[0, 1, 2], [2, 1, 3], [4, 5, 6]]))[0] == 2
