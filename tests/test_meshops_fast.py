"""The vectorised checks clean_mesh uses, against the plain references they replace (pipeline/meshops.py)."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from bench.cleanup_cpu import raw_mesh
from pipeline import meshops
from pipeline.types import MeshData


def sphere_faces() -> tuple[np.ndarray, np.ndarray]:
    tm = trimesh.creation.icosphere(subdivisions=2)
    return np.asarray(tm.vertices, np.float64), np.asarray(tm.faces, np.int64)


def variants() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    vertices, faces = sphere_faces()
    flipped = faces.copy()
    flipped[7] = flipped[7, ::-1]
    # A third face on an existing edge (0, 1): that edge has three faces, the new ones' edges one.
    extra_vertex = np.vstack([vertices, [[2.0, 2.0, 2.0]]])
    edge = faces[0, :2]
    fin = np.vstack([faces, [[edge[1], edge[0], len(vertices)]]])
    return {
        "closed": (vertices, faces),
        "open": (vertices, faces[1:]),
        "one face flipped": (vertices, flipped),
        "fin": (extra_vertex, fin),
        "two spheres": (np.vstack([vertices, vertices + 3]), np.vstack([faces, faces + len(vertices)])),
    }


@pytest.mark.parametrize("name", list(variants()))
def test_edge_check_agrees_with_the_references(name):
    vertices, faces = variants()[name]
    consistent, closed = meshops._edge_check(faces, len(vertices))
    assert consistent == meshops._winding_consistent(faces)
    if consistent:
        assert closed == bool(np.all(meshops._edge_uses(faces)[0] == 2))


def test_normal_volumes_and_compaction_agree_with_the_references():
    vertices, faces = variants()["two spheres"]
    labels = np.repeat([0, 1], len(faces) // 2)
    normals = meshops._face_normals(vertices, faces)
    per_face = np.einsum("ij,ij->i", vertices[faces[:, 0]], normals) / 6.0
    np.testing.assert_allclose(np.bincount(labels, weights=per_face),
                               meshops._signed_volumes(vertices, faces, labels, 2), rtol=1e-12)
    np.testing.assert_allclose(0.5 * np.linalg.norm(normals, axis=1), meshops._face_areas(vertices, faces))
    sparse_faces = faces[::3] + 5  # unused vertices at the front and in between
    padded = np.vstack([np.zeros((5, 3)), vertices, vertices])
    compact = meshops._compact(padded, sparse_faces)
    used, inverse = np.unique(sparse_faces, return_inverse=True)
    np.testing.assert_array_equal(compact.faces, inverse.reshape(-1, 3))
    np.testing.assert_array_equal(compact.vertices, padded[used].astype(np.float32))


def test_clean_mesh_keeps_a_marching_cubes_mesh_closed_and_outward():
    raw = raw_mesh(64)
    clean = meshops.clean_mesh(raw)
    stats = meshops.mesh_stats(clean)
    assert stats["watertight"] and stats["manifold"] and stats["components"] == 1 and stats["volume"] > 0
    inverted = meshops.clean_mesh(MeshData(vertices=raw.vertices, faces=raw.faces[:, ::-1].copy()))
    assert meshops.mesh_stats(inverted)["volume"] == pytest.approx(stats["volume"])
