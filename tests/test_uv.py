"""UV unwrapping (xatlas in a killable child process)."""
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
from pipeline.uv import chart_padding, unwrap

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
