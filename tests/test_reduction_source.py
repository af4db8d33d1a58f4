"""bench/reduction_source.py and its helpers (bench/mesh_field.py, bench/surface_distance.py) against
plain references: a field made from a real mesh, exact surface distances, and the benchmark's core."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from bench import mesh_field, surface_distance
from bench.reduction_source import MESHES, UNIT, measure_mesh
from pipeline import meshops
from pipeline.types import MeshData


@pytest.fixture(scope="module")
def spot() -> MeshData:
    return mesh_field.load_source(MESHES["spot"])[0]


def test_point_triangle_distance_matches_trimesh():
    rng = np.random.default_rng(0)
    tris = rng.normal(size=(5000, 3, 3))
    tris[:50, 2] = tris[:50, 1]  # degenerate triangles: a segment
    points = rng.normal(size=(5000, 3)) * 2
    expected = np.linalg.norm(trimesh.triangles.closest_point(tris, points) - points, axis=1)
    got = surface_distance.point_triangle_sq(torch.from_numpy(points.T.copy()),
                                             torch.from_numpy(tris.reshape(-1, 9).T.copy())).sqrt().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_surface_distance_matches_every_triangle(spot):
    rng = np.random.default_rng(1)
    near = surface_distance.sample_surface(spot.vertices, spot.faces, 800, rng) + rng.normal(0, 0.02, (800, 3))
    points = np.vstack([near, rng.uniform(-3, 3, (100, 3))])  # the far ones need the larger pads
    expected = surface_distance.surface_distance_reference(points, spot.vertices, spot.faces)
    got = surface_distance.surface_distance(points, spot.vertices, spot.faces, pad=0.005)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    capped = surface_distance.capped_distance(points, spot.vertices, spot.faces, limit=0.02, cell=0.03)
    np.testing.assert_allclose(capped, np.minimum(expected, 0.02), atol=2e-6)


def test_cap_holes_closes_an_open_mesh():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    pair = sphere.face_adjacency[0]  # two faces sharing an edge: one hole of four edges
    far = int(np.argmin(sphere.triangles_center @ sphere.triangles_center[pair[0]]))  # a hole of three
    faces = np.delete(np.asarray(sphere.faces), [*pair, far], axis=0)
    assert not meshops.mesh_stats(MeshData(vertices=sphere.vertices, faces=faces))["watertight"]
    vertices, capped_faces, loops = mesh_field.cap_holes(np.asarray(sphere.vertices), faces)
    mesh = MeshData(vertices=vertices, faces=capped_faces)
    assert loops == 2
    assert meshops.mesh_stats(mesh)["watertight"]
    np.testing.assert_allclose(mesh_field.winding_number(mesh, np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])),
                               [1.0, 0.0], atol=1e-9)


def test_parity_counts_lines_through_edges_and_vertices_once():
    # An octahedron whose vertices are grid points: many grid lines run exactly through its vertices and
    # along its edges' projections, where a naive parity count double-counts or misses crossings.
    axis = mesh_field.grid_axis(40)
    centre, k = (20, 20, 20), 12
    corners = [(k, 0, 0), (-k, 0, 0), (0, k, 0), (0, -k, 0), (0, 0, k), (0, 0, -k)]
    index = np.array([[centre[d] + offset[d] for d in range(3)] for offset in corners])
    octa = trimesh.convex.convex_hull(axis[index])  # outward-wound
    mesh = MeshData(vertices=octa.vertices, faces=octa.faces)
    i = np.indices((41, 41, 41))
    l1 = sum(abs(i[d] - centre[d]) for d in range(3))
    strictly = l1 != k  # points on the surface may go either way
    for along in range(3):
        parity = mesh_field._axis_parity(mesh, axis, along)
        np.testing.assert_array_equal(parity[strictly], (l1 < k)[strictly])


def test_field_matches_the_pointwise_reference(spot):
    octree = 48
    grid, info = mesh_field.logit_grid(spot, octree)
    assert grid.shape == (1, octree + 1, octree + 1, octree + 1) and grid.dtype == torch.float32
    assert info["sign_disagreements"] == 0
    field = grid[0].numpy()
    rng = np.random.default_rng(2)
    near = np.argwhere(np.abs(field) < mesh_field.CLIP)
    index = np.vstack([rng.integers(0, octree + 1, (150, 3)), near[rng.choice(len(near), 150)]])
    axis = mesh_field.grid_axis(octree)
    expected = mesh_field.logit_reference(spot, axis[index], octree)
    np.testing.assert_allclose(field[index[:, 0], index[:, 1], index[:, 2]], expected, atol=1e-4)
    assert np.all(np.abs(field) <= mesh_field.CLIP)


def test_core_reduces_both_strides_close_to_the_dense_surface():
    octree, target = 96, 2000
    result = measure_mesh(MESHES["spot"], octree, target, strides=[1, 2], repeats=1, samples=20_000)
    dense, coarse = result["strides"]
    assert coarse["faces_raw"] < 0.35 * dense["faces_raw"]  # about a quarter
    cell = 2 * mesh_field.BOX_V / octree / UNIT  # this octree's cell in the reported unit (4)
    for row in (dense, coarse):
        assert row["faces"] <= 1.02 * target and row["watertight"] and row["components"] == 1
        for way in row["error"].values():
            assert all(math.isfinite(value) for value in way.values())
            assert way["mean"] < 0.25 * cell and way["max"] < 2 * cell
    assert coarse["error_clean"]["to_dense"]["mean"] < 0.1 * cell
