"""pipeline/marching_cubes.py: its case table, and its meshes against scikit-image's Lewiner marching cubes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import measure

from bench.cleanup_cpu import analytic_grid
from pipeline import marching_cubes as mc
from pipeline import meshops
from pipeline.hunyuan_sampler import ShapeSettings, extract_surface
from pipeline.types import MeshData


def _coords(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64)


def _sphere(size: int = 28, radius: float = 9.3) -> np.ndarray:
    x = _coords(size) - size / 2 + 0.17
    return (radius**2 - (x[:, None, None] ** 2 + (1.2 * x[None, :, None]) ** 2 + x[None, None, :] ** 2)).astype(np.float32)


def _torus(size: int = 44) -> np.ndarray:
    # A tube 5 cells thick: thinner ones bring the volumes of the two triangulations (each cell's loops
    # split along other diagonals) 1e-3 apart on their saddle-shaped inner side.
    x = _coords(size) - size / 2 + 0.31
    ring = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2) - 13.0
    return (5.0**2 - (ring**2 + x[None, None, :] ** 2)).astype(np.float32)


def _two_blobs(size: int = 36) -> np.ndarray:
    x = _coords(size)

    def blob(cx: float, cy: float, cz: float, r: float) -> np.ndarray:
        return r**2 - ((x[:, None, None] - cx) ** 2 + (x[None, :, None] - cy) ** 2 + (x[None, None, :] - cz) ** 2)

    return np.maximum(blob(11.2, 12.4, 17.9, 7.1), blob(24.6, 22.3, 17.3, 6.2)).astype(np.float32)


def _cos_field(octree: int = 48) -> np.ndarray:  # the benchmark decoder's field (tests/tiny_models.py), gain 250
    return (250.0 * analytic_grid(octree)[0]).numpy()


def _noise(seed: int, size: int = 40, sigma: float = 2.5) -> np.ndarray:
    """Smooth random blobs, with a border layer outside so every surface closes."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((size, size, size)), sigma)
    field = (field / field.std()).astype(np.float32)
    field[[0, -1], :, :] = field[:, [0, -1], :] = field[:, :, [0, -1]] = -1.0
    return field


def _integer_sphere(size: int = 24) -> np.ndarray:
    """Integer values: many grid points lie exactly on the level."""
    x = np.arange(size) - size // 2
    return (64 - (x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)).astype(np.float32)


FIELDS = {
    "sphere": (_sphere, 0.0),
    "torus": (_torus, 0.0),
    "two blobs": (_two_blobs, 0.0),
    "cos field": (_cos_field, 0.0),
    "noise 0": (lambda: _noise(0), 0.0),
    "noise 1": (lambda: _noise(1, sigma=2.0), 0.3),
    "noise 2": (lambda: _noise(2, size=48, sigma=3.0), -0.2),
    "at the level": (_integer_sphere, 0.0),
    "at the level 14": (_integer_sphere, 14.0),
    "float32 level": (lambda: (np.round(_sphere()) / 10).astype(np.float32), 0.2),  # float32(0.2) > 0.2: inside
}


def _on_grid_edges(vertices: np.ndarray) -> np.ndarray:  # [V] bool
    """Vertices on a grid edge (two integer coordinates), i.e. not Lewiner's added cell-centre vertices."""
    return (np.abs(vertices - np.round(vertices)) == 0).sum(axis=1) >= 2


def _has_ambiguous_face(inside: np.ndarray) -> bool:
    """Some cell face has its diagonal corners alike and the two diagonals different."""
    for axis in range(3):
        face = np.moveaxis(inside, axis, 0)
        a, b, c, d = face[:, :-1, :-1], face[:, 1:, 1:], face[:, 1:, :-1], face[:, :-1, 1:]
        if np.any((a == b) & (c == d) & (a != c)):
            return True
    return False


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def _volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices.astype(np.float64)[faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def _area(vertices: np.ndarray, faces: np.ndarray) -> float:
    v = vertices.astype(np.float64)[faces]
    return float(0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1).sum())


# (a) the case table


@pytest.mark.parametrize("case", range(256))
def test_case_triangles_bound_closed_loops_over_the_crossing_edges(case):
    table, count = mc.triangle_table()
    rows = table[case, : int(count[case])].tolist()
    assert (table[case, len(rows):] == -1).all()
    crossing = set(mc.crossing_edges(case))
    assert {edge for row in rows for edge in row} == crossing  # every crossing edge used, no other edge
    directed = [(row[i], row[(i + 1) % 3]) for row in rows for i in range(3)]
    assert len(set(directed)) == len(directed)
    boundary = [edge for edge in directed if edge[::-1] not in directed]  # inner diagonals come in pairs
    # The boundary runs on the cell's faces, each crossing edge entered once and left once: closed loops.
    assert sorted(start for start, _ in boundary) == sorted(crossing)
    assert sorted(end for _, end in boundary) == sorted(crossing)
    assert set(boundary) == {segment for face in mc.FACES for segment in mc.face_segments(case, face)}
    for start, end in boundary:
        assert any(start in mc.face_edges(face) and end in mc.face_edges(face) for face in mc.FACES)
    for start, end in set(directed) - set(boundary):  # diagonals cross the cell, never lie on a face
        assert not any(start in mc.face_edges(face) and end in mc.face_edges(face) for face in mc.FACES)


@pytest.mark.parametrize("axis", range(3))
def test_cells_sharing_a_face_cut_it_alike_with_opposite_directions(axis):
    """No cracks and consistent winding: for every pair of cases that agree on the shared face, the upper
    cell's segments on its side-1 face are the lower cell's side-0 segments reversed (edges shifted)."""
    shift = {edge: mc.EDGE_CORNERS.index(tuple(c ^ (1 << axis) for c in mc.EDGE_CORNERS[edge]))
             for edge in mc.face_edges((axis, 1))}
    upper_corners = [c for c in range(8) if c >> axis & 1]
    for below in range(256):
        for above in range(256):
            if any((below >> c & 1) != (above >> (c ^ (1 << axis)) & 1) for c in upper_corners):
                continue
            mine = {(shift[a], shift[b]) for a, b in mc.face_segments(below, (axis, 1))}
            theirs = {(b, a) for a, b in mc.face_segments(above, (axis, 0))}
            assert mine == theirs


# (b) meshes against scikit-image


@pytest.mark.parametrize("name", list(FIELDS))
def test_mesh_matches_scikit_image(name):
    make, level = FIELDS[name]
    field = make()
    vertices, faces = mc.marching_cubes(torch.from_numpy(field), level)
    assert vertices.dtype == torch.float32 and faces.dtype == torch.int64
    vertices, faces = vertices.numpy(), faces.numpy()
    ref_vertices, ref_faces, _, _ = measure.marching_cubes(field, level, method="lewiner")
    # Same vertex set, once Lewiner's cell-centre vertices (ambiguous cells only) are left out.
    on_edges = _on_grid_edges(ref_vertices)
    assert len(vertices) == on_edges.sum()
    np.testing.assert_allclose(_sorted_rows(vertices), _sorted_rows(ref_vertices[on_edges]), rtol=1e-5, atol=1e-5)
    stats = meshops.mesh_stats(MeshData(vertices=vertices, faces=faces.astype(np.int32)))
    assert stats["watertight"] and stats["winding_consistent"] and stats["manifold"]
    assert meshops._closed_manifold(faces, len(vertices))
    ref_stats = meshops.mesh_stats(MeshData(vertices=ref_vertices, faces=ref_faces.astype(np.int32)))
    if not _has_ambiguous_face(field > level):  # where Lewiner may join what we keep apart
        assert stats["components"] == ref_stats["components"]
    volume, ref_volume = _volume(vertices, faces), -_volume(ref_vertices, ref_faces)  # Lewiner winds inward
    assert volume > 0
    assert volume == pytest.approx(ref_volume, rel=1e-3)
    assert _area(vertices, faces) == pytest.approx(_area(ref_vertices, ref_faces), rel=1e-2)


# (c) orientation and the wiring into extract_surface


def _settings(octree: int) -> ShapeSettings:
    return ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=octree, num_chunks=1, seed=0)


@pytest.mark.parametrize("name", ["cos field", "two blobs", "torus"])
def test_extract_surface_with_torch_matches_the_scikit_image_path(name):
    make, level = FIELDS[name]
    grid = torch.from_numpy(make())[None]
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=grid.shape[1] - 1, num_chunks=1,
                             seed=0, mc_level=level)
    reference = extract_surface(grid, settings)  # CPU grid: scikit-image by default
    ours = extract_surface(grid, settings, method="torch")
    vertices, faces = mc.marching_cubes(grid[0], level)
    # The orientation of the current output (outward, positive volume) is marching_cubes' own.
    assert _volume(reference.vertices, reference.faces) > 0
    assert _volume(vertices.numpy(), faces.numpy()) > 0
    assert ours.faces.dtype == reference.faces.dtype and ours.vertices.dtype == reference.vertices.dtype
    # Smooth fields: Lewiner adds no cell-centre vertex, so the vertex sets are equal.
    np.testing.assert_allclose(_sorted_rows(ours.vertices), _sorted_rows(reference.vertices), rtol=1e-5, atol=1e-6)
    assert _volume(ours.vertices, ours.faces) == pytest.approx(_volume(reference.vertices, reference.faces),
                                                               rel=1e-3)


def test_extract_surface_rejects_an_unknown_method():
    with pytest.raises(ValueError):
        extract_surface(torch.zeros(1, 4, 4, 4), _settings(3), method="nope")


# (d) nothing to extract


@pytest.mark.parametrize("value", [-1.0, 1.0, 0.0])
def test_empty_and_full_grids_give_no_faces(value):
    vertices, faces = mc.marching_cubes(torch.full((6, 5, 7), value), 0.0)
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    assert extract_surface(torch.full((1, 6, 6, 6), value), _settings(5), method="torch") is None


def test_non_cubic_grid():
    field = _sphere(28)[2:25, :, 4:]
    vertices, faces = mc.marching_cubes(torch.from_numpy(field), 0.0)
    ref_vertices, _, _, _ = measure.marching_cubes(field, 0.0, method="lewiner")
    np.testing.assert_allclose(_sorted_rows(vertices.numpy()), _sorted_rows(ref_vertices), atol=1e-5)
    assert meshops._closed_manifold(faces.numpy(), len(vertices))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares the CUDA run with the CPU one")
@pytest.mark.parametrize("name", ["cos field", "noise 2", "float32 level"])
def test_cuda_gives_the_cpu_mesh(name):
    make, level = FIELDS[name]
    field = torch.from_numpy(make())
    vertices, faces = mc.marching_cubes(field, level)
    cuda_vertices, cuda_faces = mc.marching_cubes(field.cuda(), level)
    assert torch.equal(cuda_faces.cpu(), faces)
    torch.testing.assert_close(cuda_vertices.cpu(), vertices, rtol=0, atol=1e-5)
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=field.shape[0] - 1, num_chunks=1,
                             seed=0, mc_level=level)
    on_cuda = extract_surface(field[None].cuda(), settings)  # CUDA grids use ours by default
    on_cpu = extract_surface(field[None], settings, method="torch")
    np.testing.assert_array_equal(on_cuda.faces, on_cpu.faces)


def test_benchmark_runs():
    from bench.marching_cubes import main

    result = main(["--device", "cpu", "--octree", "32", "--repeats", "1"])
    rows = result["rows"]
    assert rows["torch"]["faces"] > 0
    assert rows["torch"]["vertices"] == rows["scikit-image"]["vertices"] == rows["extract_surface (torch)"]["vertices"]
