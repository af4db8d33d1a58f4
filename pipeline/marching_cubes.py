"""Marching cubes in plain PyTorch: runs where the grid lives (CUDA in production, CPU in tests).

`pipeline.hunyuan_sampler.extract_surface` uses it on CUDA grids, so only the mesh is copied to the CPU;
on CPU grids it keeps scikit-image's Lewiner marching cubes, which stays the reference (tests compare).

Case table: built here by code on first use. Corner c of a cell sits at offset (c & 1, c >> 1 & 1, c >> 2 & 1)
along the grid's dims (0, 1, 2); edge 4 * a + p runs along dim a, with the other two dims' bits given by p.
For each of the 256 inside-masks, each cell face contributes the segments where the surface cuts it: none,
one (two crossing edges), or two on an ambiguous face (diagonal corners alike), paired so each segment cuts
off one INSIDE corner. That rule reads only the face's own 4 corners, so the two cells sharing a face cut
it alike and the mesh has no cracks. The segments are oriented (d = m x n_face, m pointing from inside to
outside in the face) and chained into closed loops, each loop triangulated as a fan whose diagonals never
lie on a cell face (a diagonal on a face would be shared with the neighbouring cell's triangles).

Differences from scikit-image (Lewiner): on ambiguous faces Lewiner asks the asymptotic decider and adds a
vertex at the cell centre in some cases; here the inside corners of such a face are always kept apart and
no vertex is added. Both give closed 2-manifolds; on fields that are smooth at the grid's scale they have
the same vertices (one per crossing grid edge, at the same interpolated position) and nearly the same
triangles.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from pipeline.render.raycast import expand_rows

Segment = tuple[int, int]  # (from edge, to edge): the surface enters the face at one edge, leaves at the other


def _bit(value: int, axis: int) -> int:
    return (value >> axis) & 1


def _corner_position(corner: int) -> np.ndarray:
    return np.array([_bit(corner, axis) for axis in range(3)], dtype=np.float64)


def _edge_corners(edge: int) -> tuple[int, int]:
    """(lower corner, upper corner) of local edge `edge` = 4 * axis + p."""
    axis, p = divmod(edge, 4)
    low_axis, high_axis = (other for other in range(3) if other != axis)
    lower = (p & 1) << low_axis | (p >> 1) << high_axis
    return lower, lower | 1 << axis


EDGE_CORNERS = [_edge_corners(edge) for edge in range(12)]
FACES = [(axis, side) for axis in range(3) for side in (0, 1)]  # face = the corners with bit `axis` == `side`


def face_edges(face: tuple[int, int]) -> list[int]:
    axis, side = face
    return [edge for edge in range(12) if edge // 4 != axis and _bit(EDGE_CORNERS[edge][0], axis) == side]


_FACE_EDGE_SETS = [set(face_edges(face)) for face in FACES]


def _edge_midpoint(edge: int) -> np.ndarray:
    low, high = EDGE_CORNERS[edge]
    return (_corner_position(low) + _corner_position(high)) / 2


def _share_face(edge_a: int, edge_b: int) -> bool:
    return any(edge_a in edges and edge_b in edges for edges in _FACE_EDGE_SETS)


def crossing_edges(case: int) -> list[int]:
    return [edge for edge, (low, high) in enumerate(EDGE_CORNERS) if _bit(case, low) != _bit(case, high)]


def face_segments(case: int, face: tuple[int, int]) -> list[Segment]:
    """The oriented segments where the surface of `case` cuts `face` (triangles wind CCW seen from outside)."""
    axis, side = face
    normal = np.zeros(3)
    normal[axis] = 2 * side - 1  # outward normal of the face, seen from the cell
    crossing = crossing_edges(case)
    edges = [edge for edge in face_edges(face) if edge in crossing]
    corners = [corner for corner in range(8) if _bit(corner, axis) == side]
    inside = [corner for corner in corners if _bit(case, corner)]
    outside = [corner for corner in corners if not _bit(case, corner)]
    if len(edges) == 2:
        # m: from the inside corners toward the outside ones
        pairs = [(edges[0], edges[1], np.mean([_corner_position(c) for c in outside], axis=0)
                  - np.mean([_corner_position(c) for c in inside], axis=0))]
    elif len(edges) == 4:  # ambiguous: one segment around each inside corner, keeping them apart
        centre = np.mean([_corner_position(c) for c in corners], axis=0)
        pairs = []
        for corner in inside:
            a, b = (edge for edge in edges if corner in EDGE_CORNERS[edge])
            pairs.append((a, b, centre - _corner_position(corner)))
    else:
        return []
    segments = []
    for a, b, m in pairs:
        direction = np.cross(m, normal)
        forward = float(np.dot(_edge_midpoint(b) - _edge_midpoint(a), direction)) > 0
        segments.append((a, b) if forward else (b, a))
    return segments


def case_loops(case: int) -> list[list[int]]:
    """The closed, oriented loops of crossing edges that bound the surface inside one cell."""
    following: dict[int, int] = {}
    for face in FACES:
        for start, end in face_segments(case, face):
            if start in following:
                raise RuntimeError(f"case {case}: edge {start} starts two segments")
            following[start] = end
    if sorted(following) != sorted(following.values()) or sorted(following) != crossing_edges(case):
        raise RuntimeError(f"case {case}: the segments do not close into loops over the crossing edges")
    loops, left = [], set(following)
    while left:
        loop = [min(left)]
        while following[loop[-1]] != loop[0]:
            loop.append(following[loop[-1]])
        left -= set(loop)
        loops.append(loop)
    return loops


def _fan(loop: list[int]) -> list[tuple[int, int, int]]:
    """Fan triangles of one loop, from the first start vertex whose diagonals all cross the cell's interior."""
    size = len(loop)
    for start in range(size):
        ring = loop[start:] + loop[:start]
        if not any(_share_face(ring[0], ring[i]) for i in range(2, size - 1)):
            return [(ring[0], ring[i], ring[i + 1]) for i in range(1, size - 1)]
    raise RuntimeError(f"loop {loop}: every fan has a diagonal on a cell face")


@functools.cache
def triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """[256, T_max, 3] local edge ids of each case's triangles (padded with -1), and [256] triangles per
    case. Built on first use (~70 ms), not at import: CPU workers never extract with it."""
    triangles = [[tri for loop in case_loops(case) for tri in _fan(loop)] for case in range(256)]
    width = max(len(rows) for rows in triangles)
    table = torch.full((256, width, 3), -1, dtype=torch.int64)
    for case, rows in enumerate(triangles):
        if rows:
            table[case, : len(rows)] = torch.tensor(rows)
    return table, torch.tensor([len(rows) for rows in triangles], dtype=torch.int64)


def _strict_threshold(level: float) -> float:
    """The float32 t with (v > t) == (v > level) for every float32 v: scikit-image compares in float64."""
    rounded = np.float32(level)
    if float(rounded) > level:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def marching_cubes(grid: torch.Tensor,  # [N0, N1, N2] float, no NaN
                   level: float) -> tuple[torch.Tensor, torch.Tensor]:  # [V, 3] float32, [F, 3] int64
    """Surface where `grid` crosses `level` (inside: grid > level), on the grid's device.

    Vertices are in index space (dims 0, 1, 2 as scikit-image's), one per crossing grid edge at
    lower corner + t along the edge, t = (level - g0) / (g1 - g0) in float64 (scikit-image interpolates
    in float64 too). Triangles wind counter-clockwise seen from outside (positive enclosed volume).
    """
    shape = grid.shape
    device = grid.device
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=device)
    points = grid.numel()
    inside = grid > _strict_threshold(level)
    bits = inside.to(torch.uint8)
    # Case index: bit c = x + 2y + 4z set when corner (x, y, z) is inside, built one dim at a time
    # (3 passes over the volume instead of 8).
    bits = bits[:, :, :-1] | bits[:, :, 1:] << 4  # bits 0 and 4: corners z = 0, 1
    bits = bits[:, :-1] | bits[:, 1:] << 2  # bits 0, 2, 4, 6: corners 2y + 4z
    case = bits[:-1] | bits[1:] << 1  # [N0 - 1, N1 - 1, N2 - 1], all 8 corners
    del bits
    cell_corner = torch.nonzero((case != 0) & (case != 255))  # [C, 3] lower corners of the active cells
    cell_case = case[cell_corner.unbind(1)].long()
    cell_base = (cell_corner * strides).sum(dim=1)  # their index in the point grid
    del case

    # One vertex per crossing grid edge, keyed by axis * points + lower corner index: nonzero lists each
    # axis's edges in index order, so the concatenated keys are sorted.
    corners, axes = [], []
    for axis in range(3):
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, shape[axis] - 1), slice(1, shape[axis])
        corners.append(torch.nonzero(inside[tuple(lower)] != inside[tuple(upper)]))  # [K, 3]
        axes.append(torch.full((len(corners[-1]),), axis, device=device))
    del inside
    corner, axis = torch.cat(corners), torch.cat(axes)
    base = (corner * strides).sum(dim=1)
    vertex_keys = axis * points + base
    flat = grid.reshape(-1)
    g0 = flat[base].double()
    g1 = flat[base + strides[axis]].double()
    vertices = corner.double()
    vertices[torch.arange(len(axis), device=device), axis] += (level - g0) / (g1 - g0)
    vertices = vertices.float()

    # Faces: each active cell's triangles from the table, local edges -> global keys -> vertex ids.
    table, counts = (part.to(device) for part in triangle_table())
    face_cell, slot = expand_rows(counts[cell_case])  # one row per triangle: its cell, its index there
    local = table[cell_case[face_cell], slot]  # [F, 3] local edge ids
    edge_lower = torch.tensor([[_bit(EDGE_CORNERS[edge][0], a) for a in range(3)] for edge in range(12)],
                              device=device)
    edge_offset = torch.arange(12, device=device) // 4 * points + (edge_lower * strides).sum(dim=1)  # [12]
    face_keys = cell_base[face_cell, None] + edge_offset[local]
    faces = torch.searchsorted(vertex_keys, face_keys)
    return vertices, faces
