"""The grid ray caster against the every-triangle reference."""
from __future__ import annotations

import pytest
import torch
import trimesh

from pipeline.render.raycast import TriangleGrid, nearest_hits, nearest_hits_reference


def _bumpy_sphere(seed: int) -> torch.Tensor:  # [F, 3, 3]
    generator = torch.Generator().manual_seed(seed)
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    vertices = vertices * (1 + 0.05 * torch.randn(len(vertices), 1, generator=generator))
    return vertices[torch.tensor(sphere.faces)]


def _lines(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    origin = torch.randn(count, 3, generator=generator)
    origin = origin / origin.norm(dim=1, keepdim=True) * (0.85 + 0.3 * torch.rand(count, 1, generator=generator))
    direction = torch.randn(count, 3, generator=generator)
    return origin, direction / direction.norm(dim=1, keepdim=True)


def _assert_same(fast, slow) -> None:
    assert torch.equal(fast.face, slow.face)
    assert torch.equal(fast.found, slow.found)
    hit = slow.found
    assert torch.allclose(fast.distance[hit], slow.distance[hit])
    assert torch.allclose(fast.u[hit], slow.u[hit]) and torch.allclose(fast.v[hit], slow.v[hit])


@pytest.mark.parametrize("facing", [-1, 0, 1])
@pytest.mark.parametrize("cell,pad", [(0.1, 0.03), (0.05, 0.0), (0.3, 0.1)])
def test_grid_finds_the_nearest_hit_like_the_reference(facing: int, cell: float, pad: float) -> None:
    tris = _bumpy_sphere(0)
    origin, direction = _lines(2000, 1)
    grid = TriangleGrid(tris, cell=cell, pad=pad)
    fast = nearest_hits(grid, origin, direction, 0.4, facing=facing)
    slow = nearest_hits_reference(tris, origin, direction, 0.4, facing=facing)
    _assert_same(fast, slow)
    assert 0.2 < float(fast.found.float().mean()) < 1.0  # the case mixes hits and misses


def test_hits_beyond_the_cage_do_not_count() -> None:
    tris = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])  # z = 1, normal +z
    grid = TriangleGrid(tris, cell=0.5, pad=0.1)
    origin = torch.tensor([[0.2, 0.2, 0.0], [0.2, 0.2, 0.5]])
    direction = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    hits = nearest_hits(grid, origin, direction, 0.75, facing=0)
    assert hits.face.tolist() == [-1, 0]
    assert hits.distance[1].item() == pytest.approx(0.5)
    assert hits.u[1].item() == pytest.approx(0.2) and hits.v[1].item() == pytest.approx(0.2)
    # facing -1 keeps triangles whose normal points along the direction (this one: +z); 1 the opposite ones
    assert nearest_hits(grid, origin, direction, 0.75, facing=-1).face.tolist() == [-1, 0]
    assert nearest_hits(grid, origin, direction, 0.75, facing=1).face.tolist() == [-1, -1]


def test_a_huge_triangle_grows_the_cells_instead_of_the_listing() -> None:
    small = _bumpy_sphere(2) * 0.2
    huge = torch.tensor([[[-5.0, -5.0, 0.3], [5.0, -5.0, 0.3], [0.0, 5.0, 0.3]]])
    tris = torch.cat([small, huge])
    grid = TriangleGrid(tris, cell=0.01, pad=0.005)
    assert grid.cell > 0.01 and grid.entries <= 48 * len(tris)
    origin, direction = _lines(1000, 3)
    origin = origin * 0.3
    _assert_same(nearest_hits(grid, origin, direction, 0.5, facing=0),
                 nearest_hits_reference(tris, origin, direction, 0.5, facing=0))


def test_the_deadline_check_runs_every_round() -> None:
    tris = _bumpy_sphere(4)
    origin, direction = _lines(100, 5)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):  # lines that never hit keep searching for many rounds
        nearest_hits(TriangleGrid(tris, cell=0.05, pad=0.01), origin * 3.0, direction, 1.0, check=check)


def test_a_grid_needs_triangles_and_a_positive_cell() -> None:
    with pytest.raises(ValueError, match="at least one triangle"):
        TriangleGrid(torch.zeros(0, 3, 3), cell=0.1, pad=0.0)
    with pytest.raises(ValueError, match="cell must be"):
        TriangleGrid(_bumpy_sphere(0), cell=0.0, pad=0.0)
