"""Exact point-to-surface distances and area-uniform surface samples, for the geometry benchmarks.

`surface_distance` finds, for each point, the distance to the nearest triangle of a mesh: the triangles
are listed in a `pipeline.render.raycast.TriangleGrid` (each grid cell lists every triangle whose bounding
box grown by `pad` meets it), so a point only tests the triangles of its own cell; every triangle within
`pad` of the point is among them, so any answer <= `pad` is exact. Points left farther are asked again with
a larger pad; `capped_distance` stops after the first pass and returns min(distance, pad), also exact.
`surface_distance_reference` tests every point against every triangle (small inputs only);
the tests compare the two.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.render.raycast import TriangleGrid, expand_rows

_PAIR_CHUNK = 1 << 20  # (point, triangle) tests per step: temporaries stay small (~100 MB)


def _sub(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _segment_sq(p: tuple[torch.Tensor, ...], a: tuple[torch.Tensor, ...],
                b: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Squared distance from p to the segment ab (a zero-length segment is its end point)."""
    ab, ap = _sub(b, a), _sub(p, a)
    length = _dot(ab, ab)
    t = (_dot(ap, ab) / torch.where(length > 0, length, torch.ones_like(length))).clamp(0.0, 1.0)
    d = (ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2])
    return _dot(d, d)


def point_triangle_sq(points: torch.Tensor,  # [3, P] x, y, z rows
                      tris: torch.Tensor,  # [9, P]: v0, v1, v2 rows, one triangle per point
                      ) -> torch.Tensor:  # [P] squared distance
    """Squared distance from each point to its triangle.

    For a triangle (convex), the nearest point is the point's projection onto the plane when that lies
    inside the triangle, and otherwise lies on the boundary: so the distance is the plane distance or the
    nearest of the three edges. Degenerate (zero-area) triangles fall back to their edges.
    """
    p = points.unbind(0)
    v0, v1, v2 = tris[0:3].unbind(0), tris[3:6].unbind(0), tris[6:9].unbind(0)
    normal = _cross(_sub(v1, v0), _sub(v2, v0))
    norm_sq = _dot(normal, normal)
    # The projection is inside when p lies on the inner side of all three edge planes.
    inside = norm_sq > 0
    for a, b in ((v0, v1), (v1, v2), (v2, v0)):
        inside &= _dot(_cross(_sub(b, a), _sub(p, a)), normal) >= 0
    height = _dot(_sub(p, v0), normal)
    plane_sq = height * height / torch.where(inside, norm_sq, torch.ones_like(norm_sq))
    edge_sq = torch.minimum(torch.minimum(_segment_sq(p, v0, v1), _segment_sq(p, v1, v2)), _segment_sq(p, v2, v0))
    return torch.where(inside, plane_sq, edge_sq)


def _tri_rows(vertices: np.ndarray, faces: np.ndarray) -> torch.Tensor:  # -> [9, F] float32
    tris = np.asarray(vertices, dtype=np.float32)[np.asarray(faces)]  # [F, 3, 3]
    return torch.from_numpy(np.ascontiguousarray(tris.reshape(-1, 9).T))


def _grid_distance(grid: TriangleGrid, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:  # -> [N]
    """Distance to the nearest triangle listed in each point's cell (inf where the cell lists none)."""
    best = torch.full((points.shape[0],), float("inf"), dtype=torch.float32)
    start, count = grid.lookup(points)
    ends = torch.cumsum(count, 0)
    first = 0
    while first < points.shape[0]:
        # as many points as keep this step's (point, triangle) pairs near _PAIR_CHUNK (at least one point)
        done = int(ends[first - 1]) if first else 0
        last = max(int(torch.searchsorted(ends, done + _PAIR_CHUNK, right=True)), first + 1)
        row, local = expand_rows(count[first:last])
        face = grid.faces[start[first:last][row] + local]
        sq = point_triangle_sq(points[first:last][row].T, rows[:, face])
        best[first:last] = best[first:last].scatter_reduce(0, row, sq, reduce="amin")
        first = last
    return best.sqrt()


def capped_distance(points: np.ndarray,  # [N, 3]
                    vertices: np.ndarray,  # [V, 3]
                    faces: np.ndarray,  # [F, 3]
                    limit: float,
                    cell: float) -> np.ndarray:  # [N] float32
    """min(distance to the nearest triangle, `limit`), exact, in one pass over a grid with pad = `limit`.

    Every triangle within `limit` of a point is listed in its cell, so a point whose listed triangles are all
    farther than `limit` is farther than `limit` from the whole mesh.
    """
    rows = _tri_rows(vertices, faces)
    grid = TriangleGrid(rows.T.reshape(-1, 3, 3).contiguous(), cell=cell, pad=limit, max_entries=64 * rows.shape[1])
    found = _grid_distance(grid, rows, torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)))
    return found.clamp(max=limit).numpy()


def surface_distance(points: np.ndarray,  # [N, 3]
                     vertices: np.ndarray,  # [V, 3]
                     faces: np.ndarray,  # [F, 3]
                     pad: float,
                     cell: float | None = None) -> np.ndarray:  # [N] float32
    """Unsigned distance from each point to the nearest triangle, exact (float32) at any distance.

    `pad`: distances up to it are settled in the first pass, so make it a little over the typical answer;
    `cell` (default 1.5 pad): the triangle grid's cell (smaller: fewer tests per point, more listing memory).
    """
    rows = _tri_rows(vertices, faces)
    tris = rows.T.reshape(-1, 3, 3).contiguous()
    query = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    result = torch.full((query.shape[0],), float("inf"), dtype=torch.float32)
    todo = torch.arange(query.shape[0])
    span = float((tris.amax(dim=(0, 1)) - tris.amin(dim=(0, 1))).norm())
    while todo.numel() and pad <= 2 * span:
        grid = TriangleGrid(tris, cell=cell if cell is not None else 1.5 * pad, pad=pad,
                            max_entries=64 * tris.shape[0])
        found = _grid_distance(grid, rows, query[todo])
        settled = found <= pad
        result[todo[settled]] = found[settled]
        todo = todo[~settled]
        pad, cell = 4.0 * pad, None  # a larger pad lists each triangle in more cells: let the cell grow
    if todo.numel():  # farther than twice the mesh's size from it: few points, test every triangle
        result[todo] = torch.from_numpy(surface_distance_reference(query[todo].numpy(), vertices, faces)).float()
    return result.numpy()


def surface_distance_reference(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Every point against every triangle, float64 (tests only: small inputs)."""
    p = torch.from_numpy(np.asarray(points, dtype=np.float64))
    tris = torch.from_numpy(np.asarray(vertices, dtype=np.float64)[np.asarray(faces)].reshape(-1, 9))  # [F, 9]
    f = tris.shape[0]
    step = max(1, _PAIR_CHUNK // f)
    out = [point_triangle_sq(chunk.repeat_interleave(f, dim=0).T, tris.repeat(len(chunk), 1).T).view(-1, f).amin(dim=1)
           for chunk in p.split(step)]
    return torch.cat(out).sqrt().numpy()


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int,
                   rng: np.random.Generator) -> np.ndarray:  # [count, 3] float64
    """Points uniform by area on the mesh (face by area, then uniform barycentrics)."""
    tris = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    areas = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    face = rng.choice(len(tris), size=count, p=areas / areas.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    t = tris[face]
    return (1 - r1)[:, None] * t[:, 0] + (r1 * (1 - r2))[:, None] * t[:, 1] + (r1 * r2)[:, None] * t[:, 2]
