"""Mesh operations shared by the shape builders: cleanup, decimation, smoothing, normals, statistics.

Pure functions on `MeshData`: every knob is a keyword argument, nothing is changed in place.
"""
from __future__ import annotations

from typing import Any

import fast_simplification
import numpy as np
import trimesh
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from pipeline.context import StageContext
from pipeline.types import MeshData


def _check(ctx: StageContext | None) -> None:
    if ctx is not None:
        ctx.check()


def _mesh(vertices: np.ndarray, faces: np.ndarray) -> MeshData:
    return MeshData(
        vertices=np.ascontiguousarray(vertices, dtype=np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.int32),
    )


def _trimesh(mesh: MeshData) -> trimesh.Trimesh:
    # process=False: trimesh must not merge or reorder anything behind our back.
    return trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices, dtype=np.float64), faces=np.asarray(mesh.faces), process=False
    )


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:  # [F] float64
    v = vertices.astype(np.float64)[faces]  # [F, 3, 3]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)


def _signed_volumes(vertices: np.ndarray, faces: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Signed volume enclosed by each face group (divergence theorem); positive when faces wind outward."""
    v = vertices.astype(np.float64)[faces]  # [F, 3, 3]
    per_face = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])) / 6.0
    return np.bincount(labels, weights=per_face, minlength=count)


def _face_components(faces: np.ndarray, n_vertices: int) -> tuple[int, np.ndarray]:
    """Connected components of faces that share a vertex: (count, label per face [F])."""
    rows = np.repeat(faces[:, 0], 2)
    cols = faces[:, 1:].reshape(-1)
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_vertices, n_vertices))
    _, vertex_labels = connected_components(graph, directed=False)
    # Relabel so vertices without faces do not count as components.
    used, labels = np.unique(vertex_labels[faces[:, 0]], return_inverse=True)
    return len(used), labels.reshape(-1)


def _used_vertices(faces: np.ndarray, n_vertices: int) -> np.ndarray:  # [V] bool
    # A mask instead of np.unique(faces), whose hash-based path is slow on millions of entries.
    used = np.zeros(n_vertices, dtype=bool)
    used[faces.reshape(-1)] = True
    return used


def _row_keys(rows: np.ndarray) -> np.ndarray:  # [N, K] int64 >= 0 -> [N] int64, equal rows <-> equal keys
    """One integer per row, so 1-D np.unique can replace the much slower row-wise np.unique(axis=0)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    base = int(rows.max()) + 1
    if base ** rows.shape[1] >= 2**62:  # too wide to pack: fall back to row-wise unique
        return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1)
    keys = np.zeros(len(rows), dtype=np.int64)
    for column in range(rows.shape[1]):
        keys = keys * base + rows[:, column]
    return keys


def _edges(faces: np.ndarray) -> np.ndarray:  # [F, 3] -> [3F, 2] directed edges, face-major
    return faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)


def _edge_uses(faces: np.ndarray) -> tuple[np.ndarray, int]:
    """How many faces use each directed edge's undirected edge ([3F] int), and the number of distinct edges."""
    _, inverse, uses = np.unique(_row_keys(np.sort(_edges(faces), axis=1)), return_inverse=True, return_counts=True)
    return uses[inverse], len(uses)


def _winding_consistent(faces: np.ndarray) -> bool:
    """No directed edge is used twice, i.e. every pair of neighbouring faces walks their edge both ways."""
    keys = _row_keys(_edges(faces))
    ordered = np.sort(keys)
    return not np.any(ordered[1:] == ordered[:-1])


def _vertex_fans(faces: np.ndarray, n_vertices: int) -> np.ndarray:  # [V] int
    """Number of separate face fans around each vertex: 1 on a manifold, 2+ where surfaces pinch together.

    Corners (face, vertex) are joined when their faces share an edge through that vertex; the fans of a
    vertex are the connected groups of its corners.
    """
    corners = np.arange(3 * len(faces)).reshape(-1, 3)  # [F, 3] corner id = 3 * face + slot
    start = corners.reshape(-1)  # corner at each directed edge's first vertex ...
    end = corners[:, [1, 2, 0]].reshape(-1)  # ... and at its second vertex
    # Dense edge ids (< 3F) keep the (edge, vertex) pairs below packable into one int64.
    edge_id = np.unique(_row_keys(np.sort(_edges(faces), axis=1)), return_inverse=True)[1].reshape(-1)  # [3F]
    flat = faces.reshape(-1)
    # One record per (edge, end vertex, corner); records equal in (edge, vertex) are corners to join.
    record_corner = np.concatenate([start, end])
    record_group = _row_keys(np.stack([np.concatenate([edge_id, edge_id]), flat[record_corner]], axis=1))
    order = np.argsort(record_group, kind="stable")
    same = record_group[order[1:]] == record_group[order[:-1]]
    a, b = record_corner[order[:-1]][same], record_corner[order[1:]][same]
    graph = sparse.coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(flat), len(flat)))
    _, corner_fan = connected_components(graph, directed=False)
    _, first = np.unique(_row_keys(np.stack([flat, corner_fan], axis=1)), return_index=True)
    return np.bincount(flat[first], minlength=n_vertices)


def _closed_manifold(faces: np.ndarray, n_vertices: int) -> bool:
    """Every edge between exactly two faces, consistent winding, one fan per used vertex."""
    if len(faces) == 0 or not np.all(_edge_uses(faces)[0] == 2) or not _winding_consistent(faces):
        return False
    fans = _vertex_fans(faces, n_vertices)
    return bool(np.all(fans[_used_vertices(faces, n_vertices)] == 1))


def _closed_components(faces: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:  # [count] bool
    """Components where every edge is used by exactly two faces."""
    open_edge = _edge_uses(faces)[0] != 2
    return np.bincount(np.repeat(labels, 3)[open_edge], minlength=count) == 0


def _edge_check(faces: np.ndarray, n_vertices: int) -> tuple[bool, bool]:
    """(winding consistent, every edge between exactly two faces) from one sort of the directed edges.

    Same answers as `_winding_consistent` and `np.all(_edge_uses(faces)[0] == 2)` (a test compares them),
    at a fraction of the cost: with no directed edge used twice, every edge has two faces exactly when
    the set of directed edges equals its own reverse.
    """
    edges = _edges(faces)
    forward = np.sort(edges[:, 0] * np.int64(n_vertices) + edges[:, 1])
    if np.any(forward[1:] == forward[:-1]):
        return False, False  # closedness is not needed (nor cheap) when the winding must be fixed
    return True, bool(np.array_equal(forward, np.sort(edges[:, 1] * np.int64(n_vertices) + edges[:, 0])))


def is_watertight(mesh: MeshData) -> bool:
    """mesh_stats' "watertight" (every edge between exactly two faces, consistent winding) from one sort."""
    faces = np.asarray(mesh.faces, dtype=np.int64)
    return len(faces) > 0 and all(_edge_check(faces, len(mesh.vertices)))


def _face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:  # [F, 3] float64, length 2 x area
    v0 = vertices[faces[:, 0]]
    return np.cross(vertices[faces[:, 1]] - v0, vertices[faces[:, 2]] - v0)


def _compact(vertices: np.ndarray, faces: np.ndarray) -> MeshData:
    """Drop unreferenced vertices, keeping the order of the others (as np.unique(faces) would)."""
    used = _used_vertices(faces, len(vertices))
    new_index = np.cumsum(used) - 1
    return _mesh(vertices[used], new_index[faces])


def _large_components(labels: np.ndarray, count: int, normals: np.ndarray,  # [F], -, [F, 3] (2 x area)
                      min_component_ratio: float) -> np.ndarray:  # [F] bool: the face's component is kept
    """Components whose face count and area both reach `min_component_ratio` of the largest's."""
    face_counts = np.bincount(labels, minlength=count)
    areas = np.bincount(labels, weights=0.5 * np.linalg.norm(normals, axis=1), minlength=count)
    keep = (face_counts >= min_component_ratio * face_counts.max()) & (areas >= min_component_ratio * areas.max())
    return keep[labels]


def remove_floaters(mesh: MeshData, *, min_component_ratio: float = 0.02) -> MeshData:
    """Drop the components `clean_mesh` calls floaters, and nothing else.

    For a marching-cubes mesh that is only baked from (the shape stage's dense mesh): its vertices are
    already welded and its winding consistent and outward, so the rest of clean_mesh would only cost time.
    """
    vertices = np.asarray(mesh.vertices)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return _mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    count, labels = _face_components(faces, len(vertices))
    if count > 1:
        faces = faces[_large_components(labels, count, _face_normals(vertices.astype(np.float64), faces),
                                        min_component_ratio)]
    return _compact(vertices, faces)


def merge_vertices(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    *,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Weld vertices that fall in the same `tolerance`-sized cell; returns (vertices [V', 3], faces [F, 3])."""
    cells = np.round(vertices.astype(np.float64) / tolerance).astype(np.int64)
    _, first, inverse = np.unique(_row_keys(cells - cells.min(0)), return_index=True, return_inverse=True)
    return vertices[first], inverse.reshape(-1)[faces]


def clean_mesh(
    mesh: MeshData,
    *,
    min_component_ratio: float = 0.02,
    merge_tolerance: float = 1e-6,
    ctx: StageContext | None = None,
) -> MeshData:
    """Make a builder's raw triangles into a tidy mesh.

    Welds vertices closer than `merge_tolerance` x the bounding-box diagonal, drops degenerate faces
    (repeated corner or zero area) and duplicate faces (same corners in any order), removes floaters
    (components whose face count or area is below `min_component_ratio` of the largest component's),
    makes the winding consistent, turns closed components outward (positive volume), and drops unreferenced
    vertices. About 0.5 s per million faces on one core, so `ctx` is checked between the steps.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return _mesh(np.zeros((0, 3)), np.zeros((0, 3)))

    diagonal = float(np.linalg.norm(np.ptp(vertices[_used_vertices(faces, len(vertices))], axis=0)))
    if diagonal > 0:
        vertices, faces = merge_vertices(vertices, faces, tolerance=merge_tolerance * diagonal)

    _check(ctx)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    normals = _face_normals(vertices, faces)  # kept in step with `faces` for the areas and volumes below
    keep = ~repeated & (np.einsum("ij,ij->i", normals, normals) > 0)  # zero area <-> zero normal
    faces, normals = faces[keep], normals[keep]
    keys = _row_keys(np.sort(faces, axis=1))
    ordered = np.sort(keys)
    if np.any(ordered[1:] == ordered[:-1]):  # np.unique only when there is a duplicate to drop
        unique_rows = np.sort(np.unique(keys, return_index=True)[1])
        faces, normals = faces[unique_rows], normals[unique_rows]
    if len(faces) == 0:
        return _mesh(np.zeros((0, 3)), np.zeros((0, 3)))

    _check(ctx)
    count, labels = _face_components(faces, len(vertices))
    if count > 1:
        keep = _large_components(labels, count, normals, min_component_ratio)
        faces, normals = faces[keep], normals[keep]
        count, labels = _face_components(faces, len(vertices))

    _check(ctx)
    consistent, all_closed = _edge_check(faces, len(vertices))
    # trimesh's fix_winding walks faces in Python, so only pay for it when the winding is actually broken.
    if not consistent:
        tm = _trimesh(_mesh(vertices, faces))
        trimesh.repair.fix_winding(tm)
        faces = np.asarray(tm.faces, dtype=np.int64)
        normals = _face_normals(vertices, faces)

    closed = np.ones(count, dtype=bool) if all_closed else _closed_components(faces, labels, count)
    # Signed volume (divergence theorem): v0 . (v1 x v2) = v0 . ((v1 - v0) x (v2 - v0)).
    per_face = np.einsum("ij,ij->i", vertices[faces[:, 0]], normals) / 6.0
    inverted = closed & (np.bincount(labels, weights=per_face, minlength=count) < 0)
    flip = inverted[labels]
    faces[flip] = faces[flip][:, ::-1]
    return _compact(vertices, faces)


def _fast_decimate(
    vertices: np.ndarray,  # [V, 3] float64
    faces: np.ndarray,  # [F, 3] int64
    target_faces: int,
    ctx: StageContext | None,
    max_faces_per_round: int,
    aggressiveness: int,
) -> tuple[np.ndarray, np.ndarray]:
    while len(faces) > target_faces:
        _check(ctx)
        round_target = max(target_faces, len(faces) - max_faces_per_round)
        before = len(faces)
        vertices, faces = fast_simplification.simplify(
            vertices, faces, target_reduction=1.0 - round_target / before, agg=aggressiveness
        )
        if len(faces) == before or len(faces) > round_target * 1.02:
            break  # the simplifier cannot collapse further without breaking the surface
    return vertices, faces


def _topology_preserving_decimate(
    vertices: np.ndarray,  # [V, 3] float64
    faces: np.ndarray,  # [F, 3] int64
    target_faces: int,
) -> tuple[np.ndarray, np.ndarray]:
    import pymeshlab  # heavy (MeshLab's filter plugins); only this fallback needs it

    meshes = pymeshlab.MeshSet()
    meshes.add_mesh(pymeshlab.Mesh(vertex_matrix=vertices, face_matrix=faces.astype(np.int32)))
    meshes.meshing_decimation_quadric_edge_collapse(
        targetfacenum=target_faces, preservetopology=True, optimalplacement=True, planarquadric=True
    )
    out = meshes.current_mesh()
    return out.vertex_matrix(), out.face_matrix().astype(np.int64)


def decimate(
    mesh: MeshData,
    target_faces: int,
    *,
    ctx: StageContext | None = None,
    max_faces_per_round: int = 1_000_000,
    aggressiveness: int = 7,
) -> MeshData:
    """Quadric edge-collapse decimation to at most about `target_faces` faces; a no-op at or below it.

    Runs fast-simplification, in rounds of at most `max_faces_per_round` removed faces so the deadline is
    checked about once a second (a round costs about 1 s per million input faces on one core; each extra
    round re-reads the mesh, so the default takes a marching-cubes mesh at octree 384 in one). That simplifier can pinch parts thinner than its edge length, and on
    some shapes stops short of the target; when it turns a closed manifold input into something that is
    not, or misses the target by more than 2 %, the reduction is redone with MeshLab's topology-preserving
    collapse (about 10x slower, keeps the surface closed).
    """
    if target_faces < 4:
        raise ValueError(f"target_faces must be at least 4, got {target_faces}")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) <= target_faces:
        return _mesh(vertices, faces)
    out_vertices, out_faces = _fast_decimate(vertices, faces, target_faces, ctx, max_faces_per_round, aggressiveness)
    missed = len(out_faces) > 1.02 * target_faces
    # Check the small output first: the input check costs about as much as the decimation itself.
    if missed or (not _closed_manifold(out_faces, len(out_vertices)) and _closed_manifold(faces, len(vertices))):
        _check(ctx)
        out_vertices, out_faces = _topology_preserving_decimate(vertices, faces, target_faces)
    _check(ctx)
    return _compact(out_vertices, out_faces)


def smooth(mesh: MeshData, *, iterations: int = 10, lamb: float = 0.5, mu: float = -0.53) -> MeshData:
    """Taubin smoothing (alternating shrink `lamb` and inflate `mu` steps), which keeps the volume."""
    tm = _trimesh(mesh)
    trimesh.smoothing.filter_taubin(tm, lamb=lamb, nu=-mu, iterations=iterations)
    return _mesh(tm.vertices, mesh.faces)


Similarity = tuple[float, np.ndarray]
"""(scale, offset [3]): v -> v * scale + offset, a uniform scale and a shift."""


def apply_similarity(mesh: MeshData, similarity: Similarity) -> MeshData:
    scale, offset = similarity
    return _mesh(np.asarray(mesh.vertices, dtype=np.float64) * scale + offset, mesh.faces)


def compose_similarities(first: Similarity, then: Similarity) -> Similarity:
    """The similarity that applies `first`, then `then`."""
    (s1, o1), (s2, o2) = first, then
    return s1 * s2, np.asarray(o1) * s2 + o2


def unit_box_similarity(vertices: np.ndarray, *, extent: float = 1.0) -> Similarity:  # vertices [V, 3]
    """The similarity that centres the bounding box on the origin and makes the largest |coordinate| `extent`."""
    vertices = np.asarray(vertices, dtype=np.float64)
    if len(vertices) == 0:
        return 1.0, np.zeros(3)
    lo, hi = vertices.min(0), vertices.max(0)
    half = float(np.abs(vertices - (lo + hi) / 2).max())
    scale = extent / half if half > 0 else 1.0
    return scale, -(lo + hi) / 2 * scale


def normalize_to_unit_box(mesh: MeshData, *, extent: float = 1.0) -> MeshData:
    """Centre the bounding box on the origin and scale uniformly so the largest |coordinate| is `extent`."""
    return apply_similarity(mesh, unit_box_similarity(mesh.vertices, extent=extent))


def vertex_normals(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
) -> np.ndarray:  # [V, 3] float32
    """Area-weighted unit vertex normals; vertices without any face area get +Z."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    # The cross product's length is twice the face area, so summing it weights by area.
    face_normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # [F, 3]
    normals = np.zeros_like(v)
    for corner in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(f[:, corner], weights=face_normals[:, axis], minlength=len(v))
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 0, normals / np.where(length > 0, length, 1.0), np.array([0.0, 0.0, 1.0]))
    return normals.astype(np.float32)


def mesh_stats(mesh: MeshData) -> dict[str, Any]:
    """Numbers for logs and meta.json: counts, bbox, closedness, Euler characteristic, volume, components."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        raise ValueError("mesh_stats needs a mesh with faces")
    count, _ = _face_components(faces, len(vertices))
    uses, edges = _edge_uses(faces)
    consistent = _winding_consistent(faces)
    fans = _vertex_fans(faces, len(vertices))
    watertight = bool(np.all(uses == 2)) and consistent
    volume = float(_signed_volumes(vertices, faces, np.zeros(len(faces), dtype=np.int64), 1)[0])
    return {
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
        "bbox": mesh.bounds.tolist(),
        "watertight": watertight,
        "winding_consistent": consistent,
        "manifold": bool(np.all(uses <= 2)) and bool(np.all(fans <= 1)),
        "components": int(count),
        "euler": int(len(vertices) - edges + len(faces)),
        "volume": volume if watertight else None,
        "area": float(_face_areas(vertices, faces).sum()),
    }
