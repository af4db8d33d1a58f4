"""Coarse-to-fine decoding of an occupancy field on hy3dgen's dense grid, with exact (full) attention.

The field is decoded on every point of a coarse grid (octree / 4), then level by level only inside the
coarse cells the surface can cross: cells whose corners are on both sides of the level, or where some
corner's logit is within `band` of it (a trained decoder's logits pass +-1 within a cell or two of the
surface, so a cell with every corner beyond the band holds no surface; this is hy3dgen's 0.95 rule). At
the intermediate levels those cells are grown by one cell, so a surface that leaves the band between
two coarse points is still followed. Every other fine point takes the trilinear interpolation of the
coarser level: all corners of a skipped cell are on one side and beyond the band, so their
interpolation is too, and every point ends on the side of the surface it was on at the coarse level.

Marching cubes (Lewiner) builds a cell's triangles from its own 8 corners only, and every fine cell
the surface crosses lies inside a refined coarse cell, all of whose fine points were decoded; so the
mesh equals the one from decoding every point, up to the decoder's floating-point batch effects (a
test checks it on the tiny model). hy3dgen's HierarchicalVolumeDecoding follows the same idea, but
marks points rather than cells, re-decodes the coarse points, leaves NaN where it skipped, has no
batch support and no hook for a deadline.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Query = Callable[[torch.Tensor], torch.Tensor]
"""[N, 3] query points -> [B, N] logits (any float dtype); the caller chunks and checks its deadline."""

BAND = 0.95  # hy3dgen's: |logit - level| below this counts as near the surface


def levels(resolution: int, halvings: int = 2, min_resolution: int = 16) -> list[int]:
    """Grid resolutions from coarse to fine, each twice the last, ending at `resolution`.

    Halves at most `halvings` times and only while the resolution is even and stays >= `min_resolution`
    (384 -> [96, 192, 384]; an odd resolution is decoded in one level).
    """
    out = [resolution]
    while len(out) <= halvings and out[0] % 2 == 0 and out[0] // 2 >= min_resolution:
        out.insert(0, out[0] // 2)
    return out


def axis_points(box_v: float, resolution: int) -> torch.Tensor:  # [R + 1] float32
    """hy3dgen's grid coordinates along one axis (the same float32 values as its dense grid)."""
    return torch.from_numpy(np.linspace(-box_v, box_v, resolution + 1, dtype=np.float32))


def active_cells(grid: torch.Tensor,  # [B, n, n, n] float32
                 level: float, band: float, grow: int) -> torch.Tensor:  # [n - 1]^3 bool (any of the batch)
    """Cells the surface may cross: corners on both sides of `level`, or a corner within `band` of it;
    then grown by `grow` cells in every direction."""
    above = (grid > level).float()[:, None]  # marching cubes counts > level as inside
    some_above = F.max_pool3d(above, 2, stride=1)
    all_above = -F.max_pool3d(-above, 2, stride=1)
    near = F.max_pool3d(-(grid - level).abs()[:, None], 2, stride=1) > -band
    active = ((some_above != all_above) | near).any(dim=0)  # [1, n-1, n-1, n-1]
    if grow > 0:
        active = F.max_pool3d(active.float()[None], 2 * grow + 1, stride=1, padding=grow)[0] > 0
    return active[0]


def fine_points(cells: torch.Tensor) -> torch.Tensor:  # [r]^3 bool -> [2r + 1]^3 bool
    """The points of the twice-finer grid that lie in (or on) the given coarse cells."""
    fine_cells = cells.repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
    # A point is needed when any of the (up to 8) fine cells around it is.
    return F.max_pool3d(fine_cells.float()[None, None], 2, stride=1, padding=1)[0, 0] > 0


def decode_coarse_to_fine(query: Query, batch: int, resolution: int, box_v: float, level: float,
                          dtype: torch.dtype, device: torch.device, band: float = BAND,
                          halvings: int = 2) -> tuple[torch.Tensor, int]:
    """Decode the field on the (resolution + 1)^3 grid; returns ([B, R+1, R+1, R+1] float32 logits,
    number of points decoded). Skipped points hold interpolated values on the right side of `level`."""
    steps = levels(resolution, halvings)
    coarse = steps[0]
    axis = axis_points(box_v, coarse)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    grid = query(points.to(device, dtype)).float().view(batch, coarse + 1, coarse + 1, coarse + 1)
    decoded = torch.ones(grid.shape[1:], dtype=torch.bool, device=device)
    count = grid[0].numel()
    for step, fine in enumerate(steps[1:]):
        last = step == len(steps) - 2
        cells = active_cells(grid, level, band, grow=0 if last else 1)
        grid = F.interpolate(grid[:, None], size=(fine + 1,) * 3, mode="trilinear", align_corners=True)[:, 0]
        known = torch.zeros(grid.shape[1:], dtype=torch.bool, device=device)
        known[::2, ::2, ::2] = decoded
        decoded = fine_points(cells)
        index = torch.nonzero(decoded & ~known)  # [N, 3]
        if len(index):
            axis = axis_points(box_v, fine).to(device)
            values = query(axis[index].to(dtype)).float()  # [B, N]
            grid[:, index[:, 0], index[:, 1], index[:, 2]] = values
        decoded |= known
        count += len(index)
    return grid, count
