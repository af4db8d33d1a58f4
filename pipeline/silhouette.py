"""The `silhouette` shape model: a closed mesh inflated from the front view's outline, no weights, CPU only.

Inflation profile ("medial balls", as in Teddy-style sketch modelling): every point q inside the outline
carries the largest disc that fits in the outline there (radius = inside distance d(q)); the solid is the
union of the matching balls centred on the picture plane z = 0. Its depth at (x, y) is therefore
2 * sqrt(max_q(d(q)^2 - |p - q|^2)): round cross-sections, a thin handle becomes a thin tube, a wide body a
thick one, and the outline seen from the front is exactly the silhouette. Holes the grid can resolve are
kept (a ring stays a ring); smaller ones are matting noise and are filled. Only the largest piece of the
mask is used. Parts thinner than the grid (wires, thin handles) would fall between grid points and cut the
object apart, so the skeleton of those parts carries balls of a minimum radius: they become thin tubes.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes
from skimage.morphology import skeletonize

from pipeline.context import StageContext
from pipeline.errors import StageError
from pipeline.meshops import clean_mesh, decimate, smooth
from pipeline.types import MeshData, MeshResult, PreparedView

PROFILE = "medial-balls"
_PAD = 2  # empty grid cells around the object so marching cubes closes the surface
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def object_mask(
    mask: np.ndarray,  # [H, W] bool
    *,
    min_hole_pixels: float,
) -> np.ndarray:  # [H, W] bool
    """The largest 8-connected piece of `mask`, with its holes smaller than `min_hole_pixels` filled."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    piece = labels == int(sizes.argmax())
    # Holes are the 4-connected background regions that do not reach the border.
    holes, hole_count = ndimage.label(ndimage.binary_fill_holes(piece) & ~piece)
    if hole_count:
        hole_sizes = np.bincount(holes.ravel())
        small = hole_sizes < min_hole_pixels
        small[0] = False
        piece |= small[holes]
    return piece


def signed_distance(mask: np.ndarray) -> np.ndarray:  # [H, W] bool -> [H, W] float32, pixels
    """Euclidean distance to the outline, positive inside. The outline runs along pixel edges, hence the
    half-pixel shift of the centre-to-centre distance transform."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, 0.5 - outside).astype(np.float32)


def sample_grid(
    mask: np.ndarray,  # [H, W] bool, the front view's object pixels
    resolution: int,
    pad: int,
) -> np.ndarray:  # [G + 2 pad, G + 2 pad] float32, indexed [ix, iy] with x right and y up, in grid cells
    """Signed distance at the centres of a resolution^2 grid over world X, Y in [-1, 1], plus `pad` cells
    on each side. Computed at the view's resolution first so the outline keeps sub-cell accuracy."""
    height, width = mask.shape
    border = int(np.ceil((pad + 1) * max(height, width) / resolution)) + 1
    sdf = signed_distance(np.pad(mask, border))
    centres = (np.arange(-pad, resolution + pad) + 0.5) / resolution * 2.0 - 1.0  # [G + 2 pad] world
    cols = (centres + 1.0) / 2.0 * width - 0.5 + border  # x -> column
    rows = (1.0 - centres) / 2.0 * height - 0.5 + border  # y (up) -> row (down)
    grid_rows, grid_cols = np.meshgrid(rows, cols)  # [ix, iy] layout: first index follows x
    values = ndimage.map_coordinates(sdf, [grid_rows, grid_cols], order=1, mode="nearest")
    return (values * resolution / width).astype(np.float32)  # pixels -> grid cells (square pixels)


def thin_part_balls(
    mask: np.ndarray,  # [H, W] bool
    resolution: int,
    pad: int,
    *,
    min_radius: float,
) -> np.ndarray:  # [M, 2] float64 centres in sample_grid's [ix, iy] index frame
    """Skeleton pixels of the parts whose half-width is below `min_radius` grid cells."""
    height, width = mask.shape
    half_width = (ndimage.distance_transform_edt(mask) - 0.5) * resolution / width  # grid cells
    rows, cols = np.nonzero(skeletonize(mask) & (half_width < min_radius))
    ix = (cols + 0.5) * resolution / width - 0.5 + pad
    iy = (height - rows - 0.5) * resolution / height - 0.5 + pad
    return np.stack([ix, iy], axis=1)


def add_balls(
    height2: np.ndarray,  # [A, B] squared half-depth in grid cells
    centres: np.ndarray,  # [M, 2] in height2's index frame
    radius: float,  # grid cells
) -> np.ndarray:  # [A, B]
    """height2 united with balls of `radius` at `centres`: max(height2, radius^2 - |p - c|^2)."""
    out = height2.copy()
    reach = int(np.ceil(radius))
    base = np.floor(centres).astype(np.int64)  # [M, 2]
    for dx in range(-reach, reach + 2):
        for dy in range(-reach, reach + 2):
            cells = base + (dx, dy)  # [M, 2]
            ok = np.all((cells >= 0) & (cells < out.shape), axis=1)
            value = radius**2 - np.sum((cells[ok] - centres[ok]) ** 2, axis=1)
            np.maximum.at(out, (cells[ok, 0], cells[ok, 1]), value.astype(out.dtype))
    return out


def _min_plus_along_last(values: np.ndarray, ctx: StageContext, chunk_elements: int) -> np.ndarray:
    """out[..., b] = min_b' ((b - b')^2 + values[..., b']): one separable pass of a generalised distance
    transform, brute force in chunks (exact, and fast enough at preview resolutions)."""
    length = values.shape[-1]
    offsets = np.arange(length, dtype=np.float32)
    square = (offsets[:, None] - offsets[None, :]) ** 2  # [B, B]
    rows = values.reshape(-1, length)
    out = np.empty_like(rows)
    step = max(1, chunk_elements // (length * length))
    for start in range(0, len(rows), step):
        ctx.check()
        out[start : start + step] = (rows[start : start + step, None, :] + square[None]).min(axis=2)
    return out.reshape(values.shape)


def inflate(
    sdf: np.ndarray,  # [A, B] float32 signed distance in grid cells, positive inside
    ctx: StageContext,
    *,
    chunk_elements: int = 8_000_000,
) -> np.ndarray:  # [A, B] float32: squared half-depth, negative outside the outline
    """max over inside cells q of (sdf(q)^2 - |p - q|^2): the union of the medial balls, seen as a height
    field. Computed as a separable min-plus transform of -sdf^2 (Felzenszwalb & Huttenlocher)."""
    cost = np.where(sdf > 0, -(sdf.astype(np.float32) ** 2), np.float32(np.inf))
    cost = _min_plus_along_last(cost, ctx, chunk_elements)
    cost = _min_plus_along_last(cost.T.copy(), ctx, chunk_elements).T
    return -cost


def _field(
    height2: np.ndarray,  # [A, B] squared half-depth in grid cells
    pad: int,
) -> tuple[np.ndarray, float]:  # [A, B, K] implicit field (positive inside), z of layer 0 in grid cells
    half_depth = float(np.sqrt(max(float(height2.max()), 0.0)))
    layers = 2 * (int(np.ceil(half_depth)) + pad) + 1
    z0 = -(layers - 1) / 2.0  # layers at integers, symmetric about z = 0, so thin parts are sampled
    z = z0 + np.arange(layers, dtype=np.float32)  # [K]
    return height2[:, :, None] - z[None, None, :] ** 2, z0


def _inside_unit_box(mesh: MeshData) -> MeshData:
    """An object touching the picture's edge comes out up to half a cell beyond it (and decimation may
    nudge vertices a little further): shrink such a mesh about the origin into [-1, 1]^3."""
    reach_out = float(np.abs(mesh.vertices).max())
    if reach_out <= 1.0:
        return mesh
    return MeshData(vertices=(mesh.vertices / np.float32(reach_out)).clip(-1.0, 1.0), faces=mesh.faces)


def build_silhouette_mesh(
    front: PreparedView,
    *,
    target_faces: int,
    ctx: StageContext,
    resolution: int = 160,
    smooth_iterations: int = 20,
    min_hole_cells: float = 4.0,
    min_tube_radius: float = 0.75,
    min_object_cells: float = 4.0,
) -> MeshResult:
    """Inflate the front view's outline into a closed mesh.

    resolution: grid cells across the view's [-1, 1] square (the mesh's detail scale).
    smooth_iterations: Taubin passes after marching cubes (removes grid facets, keeps the volume).
    min_hole_cells: holes in the outline smaller than this many grid cells are filled.
    min_tube_radius: parts thinner than this (grid cells) become tubes of this radius instead of vanishing.
    min_object_cells: an object covering fewer grid cells than this is refused as too small.
    Returns `dense` (cleaned marching-cubes surface) and `mesh` (decimated to <= ~target_faces).
    """
    ctx.report(0.0, "reading the outline")
    height, width = front.mask.shape
    cell_pixels = (height / resolution) * (width / resolution)
    mask = object_mask(front.mask, min_hole_pixels=min_hole_cells * cell_pixels)
    if not mask.any():
        raise StageError(
            "the picture has no object pixels; send a picture with a visible object, or a mask / alpha "
            "channel that marks it",
            stage="mesh",
        )
    if mask.sum() < min_object_cells * cell_pixels:
        raise StageError(
            f"the object covers only {int(mask.sum())} of {height * width} pixels, too few to mesh at "
            f"resolution {resolution}; crop the picture closer to the object",
            stage="mesh",
        )

    with ctx.timed("field"):
        ctx.report(0.1, "measuring distances to the outline")
        sdf = sample_grid(mask, resolution, _PAD)
        tubes = thin_part_balls(mask, resolution, _PAD, min_radius=min_tube_radius)
        reach = int(np.ceil(min_tube_radius))
        occupied = np.concatenate([np.argwhere(sdf > 0), np.floor(tubes).astype(np.int64)])
        if len(occupied) == 0:
            raise StageError(
                f"the object is too thin to mesh at resolution {resolution}; crop the picture closer to it",
                stage="mesh",
            )
        lo = np.maximum(occupied.min(0) - _PAD - reach, 0)
        hi = np.minimum(occupied.max(0) + _PAD + reach + 2, sdf.shape)
        sdf = sdf[lo[0] : hi[0], lo[1] : hi[1]]

        ctx.report(0.25, "inflating the outline")
        height2 = add_balls(inflate(sdf, ctx), tubes - lo, min_tube_radius)
        field, z0 = _field(height2, _PAD)
        # The box faces are outside by construction, so marching cubes always closes the surface.
        for axis in range(3):
            field.swapaxes(0, axis)[[0, -1]] = -1.0

    ctx.report(0.45, "extracting the surface")
    with ctx.timed("extract"):
        if field.max() <= 0:
            raise StageError("no surface could be built from the outline; check the object mask", stage="mesh")
        verts, faces, _, _ = marching_cubes(field, level=0.0, allow_degenerate=False)
    # Grid index -> world: cell centres at (i + 0.5) / G * 2 - 1, z symmetric about the picture plane.
    offset = np.array([lo[0] - _PAD + 0.5, lo[1] - _PAD + 0.5, 0.0])
    grid_xyz = verts.astype(np.float64) + offset
    grid_xyz[:, 2] += z0
    world = grid_xyz * (2.0 / resolution)
    world[:, :2] -= 1.0
    # skimage winds faces clockwise seen along the descending field, i.e. from inside: reverse them.
    raw = MeshData(vertices=world.astype(np.float32), faces=faces[:, ::-1].astype(np.int32))

    ctx.report(0.65, "smoothing and cleaning the surface")
    with ctx.timed("cleanup"):
        dense = _inside_unit_box(clean_mesh(smooth(raw, iterations=smooth_iterations), ctx=ctx))

        ctx.report(0.8, f"reducing {len(dense.faces)} faces to {target_faces}")
        mesh = _inside_unit_box(decimate(dense, target_faces, ctx=ctx))
    ctx.report(1.0, "silhouette mesh ready")
    return MeshResult(
        mesh=mesh,
        dense=dense,
        model={
            "name": "silhouette",
            "repo_id": None,
            "revision": None,
            "dtype": "float32",
            "device": "cpu",
            "settings": {
                "resolution": resolution,
                "profile": PROFILE,
                "smooth_iterations": smooth_iterations,
                "min_hole_cells": min_hole_cells,
                "min_tube_radius": min_tube_radius,
            },
        },
        info={"dense_vertices": len(dense.vertices), "dense_faces": len(dense.faces), "grid": list(field.shape)},
    )
