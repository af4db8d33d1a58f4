"""An occupancy-logit field like a trained Hunyuan3D decoder's, made from a real mesh, on hy3dgen's grid.

    grid, info = logit_grid(load_source(path), octree=384)   # [1, R+1, R+1, R+1] float32, positive inside

The field is clip(signed distance / cell, -4, 4) with cell = 2 box_v / R, on the (R+1)^3 points
`np.linspace(-box_v, box_v, R + 1)` per axis ("ij" order, as `pipeline.hunyuan_sampler._dense_grid`):
|logit| < 1 within about one cell of the surface, as a decoder's logits. Only points within 4 cells of the
surface need their distance; the others only their side:

- side: ray parity along the grid lines. For each axis, every triangle is intersected with the grid lines
  along that axis that cross its projection; each crossing flips the side of the points beyond it. Lines
  through a triangle edge or vertex (common: spot is symmetric about a grid plane) are settled by a
  consistent tie-break (`_edge_sides`), so each axis alone is right; each point still takes the majority of
  the three axes, and `info["sign_disagreements"]` counts the points where they differ (0 on the three test
  meshes). This needs a closed, consistently wound mesh: `load_source` welds the vertices and caps open
  boundary loops.
- distance: exact point-to-triangle distance (bench/surface_distance.py), capped at 4 cells, for the points
  near a dense sampling of the surface (a superset of those within 4 cells).

`logit_reference` computes the same field point by point (winding number, every triangle); the tests
compare the two.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from bench.surface_distance import capped_distance, surface_distance_reference
from pipeline import meshops
from pipeline.types import MeshData

CLIP = 4.0  # |logit| where the field saturates, in cells
BOX_V = 1.01  # hy3dgen's decoded cube [-box_v, box_v]^3 (ShapeSettings.box_v)
EXTENT = 0.95  # the source mesh is scaled into [-EXTENT, EXTENT]^3


def grid_axis(octree: int, box_v: float = BOX_V) -> np.ndarray:  # [R+1] float64
    """The grid coordinates along one axis, the float32 values the decoder is queried at."""
    return np.linspace(-box_v, box_v, octree + 1, dtype=np.float32).astype(np.float64)


def cap_holes(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Close each open boundary loop with a fan around its centroid; returns (vertices, faces, loops capped).

    For simple loops (each boundary vertex on one loop once), as the bunny's five holes in its base.

    A boundary edge is a directed edge whose reverse no face uses; its cap triangle walks it backwards to
    the loop's new centre vertex, so the cap's winding matches the mesh's.
    """
    edges = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    n = len(vertices)
    forward = edges[:, 0] * n + edges[:, 1]
    open_edges = edges[~np.isin(edges[:, 1] * n + edges[:, 0], forward)]
    if len(open_edges) == 0:
        return vertices, faces, 0
    if len(np.unique(open_edges[:, 0])) != len(open_edges):
        raise ValueError("a boundary loop passes a vertex twice: a fan cannot cap it")
    graph = sparse.coo_matrix((np.ones(len(open_edges)), (open_edges[:, 0], open_edges[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    loops, loop_of_edge = np.unique(label[open_edges[:, 0]], return_inverse=True)
    centres = np.stack([np.bincount(loop_of_edge, weights=vertices[open_edges[:, 0], axis]) for axis in range(3)], 1)
    centres /= np.bincount(loop_of_edge)[:, None]
    caps = np.stack([open_edges[:, 1], open_edges[:, 0], n + loop_of_edge], axis=1)
    return np.vstack([vertices, centres]), np.vstack([faces, caps]), len(loops)


def load_source(path: Path) -> tuple[MeshData, dict[str, Any]]:
    """The mesh welded (UV seams split vertices), holes capped, centred and scaled into [-0.95, 0.95]^3."""
    tm = trimesh.load(path, process=False, force="mesh")
    vertices, faces = np.asarray(tm.vertices, dtype=np.float64), np.asarray(tm.faces, dtype=np.int64)
    diagonal = float(np.linalg.norm(np.ptp(vertices, axis=0)))
    vertices, faces = meshops.merge_vertices(vertices, faces, tolerance=1e-9 * diagonal)
    vertices, faces, capped = cap_holes(vertices, faces)
    mesh = meshops.normalize_to_unit_box(MeshData(vertices=vertices, faces=faces), extent=EXTENT)
    stats = meshops.mesh_stats(mesh)
    return mesh, {"faces": stats["faces"], "holes_capped": capped, "watertight": stats["watertight"],
                  "components": stats["components"]}


def _edge_sides(pb: np.ndarray, pc: np.ndarray, faces: np.ndarray, yb: np.ndarray, yc: np.ndarray,
                face: np.ndarray) -> np.ndarray:  # -> [P, 3] float, the sign of each edge at each line
    """Which side of each triangle edge (v1v2, v2v0, v0v1) the line (yb, yc) passes, never 0.

    Each edge's function is computed from its lower-numbered vertex, so the two triangles sharing an edge
    get exactly opposite values; a line exactly on an edge is moved by an infinitesimal (e, e^2) (simulation
    of simplicity): it then lies strictly on one side, the same one for every triangle, so a line through
    an edge or vertex crosses the surface exactly as often as one beside it.
    """
    sides = []
    for i, j in ((1, 2), (2, 0), (0, 1)):
        a, b = faces[face, i], faces[face, j]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        db, dc = pb[hi] - pb[lo], pc[hi] - pc[lo]
        value = db * (yc - pc[lo]) - dc * (yb - pb[lo])
        # d value / d(yb) = -dc, d value / d(yc) = db: the perturbed value's sign when value is exactly 0
        tie = np.where(dc != 0, -np.sign(dc), np.sign(db))
        side = np.where(value != 0, np.sign(value), tie)
        sides.append(np.where(a < b, side, -side))  # back to this triangle's direction
    return np.stack(sides, axis=1)


def _axis_parity(mesh: MeshData, axis: np.ndarray, along: int) -> np.ndarray:  # -> [R+1]^3 bool, "ij" order
    """Inside by crossing parity along the grid lines parallel to axis `along`."""
    b, c = [other for other in range(3) if other != along]
    size = len(axis)
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    pb, pc, pz = vertices[:, b], vertices[:, c], vertices[:, along]
    # the grid lines (ib, ic) inside each triangle's projected bounding box
    b0 = np.searchsorted(axis, pb[faces].min(1), "left")
    b1 = np.searchsorted(axis, pb[faces].max(1), "right")
    c0 = np.searchsorted(axis, pc[faces].min(1), "left")
    c1 = np.searchsorted(axis, pc[faces].max(1), "right")
    nb, nc = np.maximum(b1 - b0, 0), np.maximum(c1 - c0, 0)
    face = np.repeat(np.arange(len(faces)), nb * nc)
    local = np.arange(len(face)) - np.repeat(np.cumsum(nb * nc) - nb * nc, nb * nc)
    ib, ic = b0[face] + local // nc[face], c0[face] + local % nc[face]
    yb, yc = axis[ib], axis[ic]
    sides = _edge_sides(pb, pc, faces, yb, yc, face)
    hit = np.all(sides == sides[:, :1], axis=1)  # strictly on the same side of all three edges
    # where the line crosses the triangle's plane: barycentric weights from the (unperturbed) edge functions
    corner = faces[face[hit]]  # [H, 3]
    fb, fc, fz = pb[corner], pc[corner], pz[corner]
    lb, lc = yb[hit, None], yc[hit, None]
    weight = (fb[:, [2, 0, 1]] - fb[:, [1, 2, 0]]) * (lc - fc[:, [1, 2, 0]]) \
        - (fc[:, [2, 0, 1]] - fc[:, [1, 2, 0]]) * (lb - fb[:, [1, 2, 0]])  # [H, 3], edge opposite each corner
    total = weight.sum(axis=1)
    z = (weight * fz).sum(axis=1) / np.where(total != 0, total, 1.0)
    first_beyond = np.searchsorted(axis, z, "right")  # the points past this crossing flip side
    toggles = np.zeros((size, size, size + 1), dtype=np.uint8)
    np.bitwise_xor.at(toggles, (ib[hit], ic[hit], first_beyond), 1)
    parity = np.bitwise_xor.accumulate(toggles, axis=2)[:, :, :size].astype(bool)  # [b, c, along]
    return np.moveaxis(parity, 2, along)


def inside_grid(mesh: MeshData, axis: np.ndarray) -> tuple[np.ndarray, int]:
    """[R+1]^3 bool inside (majority of the three axes' parities), and how many points they disagree on."""
    votes = np.zeros((len(axis),) * 3, dtype=np.uint8)
    for along in range(3):
        votes += _axis_parity(mesh, axis, along)
    return votes >= 2, int(np.count_nonzero((votes == 1) | (votes == 2)))


def _surface_lattice(mesh: MeshData, spacing: float) -> np.ndarray:  # [S, 3] float64
    """Points on every triangle, no two neighbours farther apart than `spacing` (each edge cut in n)."""
    tris = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    longest = np.linalg.norm(tris - tris[:, [1, 2, 0]], axis=2).max(1)
    cuts = np.maximum(np.ceil(longest / spacing), 1).astype(np.int64)
    points = []
    for n in np.unique(cuts):
        i, j = np.nonzero(np.add.outer(np.arange(n + 1), np.arange(n + 1)) <= n)
        weights = np.stack([n - i - j, i, j], axis=1) / n  # [L, 3]
        points.append(np.einsum("lk,fkd->fld", weights, tris[cuts == n]).reshape(-1, 3))
    return np.concatenate(points)


def near_surface(mesh: MeshData, axis: np.ndarray, reach: float) -> np.ndarray:  # [R+1]^3 bool
    """Grid points that may lie within `reach` of the surface (a superset).

    Lattice points 0.5 cell apart lie within 0.5 cell of every surface point, and each is within half a
    cell per axis of its nearest grid point: so every grid point within `reach` of the surface is within
    ceil(reach / cell) + 1 grid steps (per axis) of a marked grid point.
    """
    cell = float(axis[1] - axis[0])
    lattice = _surface_lattice(mesh, 0.5 * cell)
    index = np.clip(np.rint((lattice - axis[0]) / cell).astype(np.int64), 0, len(axis) - 1)
    marked = np.zeros((len(axis),) * 3, dtype=bool)
    marked[index[:, 0], index[:, 1], index[:, 2]] = True
    steps = int(np.ceil(reach / cell)) + 1
    return ndimage.maximum_filter(marked, size=2 * steps + 1)


def logit_grid(mesh: MeshData, octree: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """[1, R+1, R+1, R+1] float32 clip(signed distance / cell, -4, 4), and timings and counts."""
    axis = grid_axis(octree)
    cell = 2 * BOX_V / octree
    started = time.perf_counter()
    inside, disagreements = inside_grid(mesh, axis)
    sign_seconds = time.perf_counter() - started
    started = time.perf_counter()
    band = np.nonzero(near_surface(mesh, axis, CLIP * cell))
    points = np.stack([axis[band[0]], axis[band[1]], axis[band[2]]], axis=1)
    distance = capped_distance(points, mesh.vertices, mesh.faces, limit=CLIP * cell, cell=2 * cell) / cell
    field = np.where(inside, np.float32(CLIP), np.float32(-CLIP))
    field[band] = np.where(inside[band], distance, -distance)
    info = {"sign_seconds": sign_seconds, "distance_seconds": time.perf_counter() - started,
            "band_points": int(len(points)), "sign_disagreements": disagreements}
    return torch.from_numpy(field)[None], info


def winding_number(mesh: MeshData, points: np.ndarray) -> np.ndarray:  # [N, 3] -> [N] float64
    """Generalised winding number (sum of the triangles' signed solid angles / 4 pi): 1 inside a closed
    outward mesh, 0 outside. Every point against every triangle (Van Oosterom and Strackee's formula)."""
    tris = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]  # [F, 3, 3]
    total = []
    for chunk in np.array_split(points, max(1, len(points) * len(tris) // (1 << 20))):
        corners = tris[None] - chunk[:, None, None]  # [n, F, 3, 3]
        a, b, c = corners[:, :, 0], corners[:, :, 1], corners[:, :, 2]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("nfd,nfd->nf", a, np.cross(b, c))
        dots = la * lb * lc + np.einsum("nfd,nfd->nf", a, b) * lc + np.einsum("nfd,nfd->nf", b, c) * la \
            + np.einsum("nfd,nfd->nf", c, a) * lb
        total.append(2 * np.arctan2(det, dots).sum(axis=1) / (4 * np.pi))
    return np.concatenate(total)


def logit_reference(mesh: MeshData, points: np.ndarray, octree: int) -> np.ndarray:  # [N, 3] -> [N] float
    """The same field at arbitrary points, each on its own: side by winding number, every triangle's
    distance."""
    cell = 2 * BOX_V / octree
    distance = surface_distance_reference(points, mesh.vertices, mesh.faces) / cell
    return np.where(winding_number(mesh, points) > 0.5, 1.0, -1.0) * np.minimum(distance, CLIP)
