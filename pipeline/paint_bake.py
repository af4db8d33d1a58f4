"""Generated views -> UV texture: back-projection with a depth test, cos^k view weighting, the weighted
merge, and filling what no view saw.

Upstream (hy3dgen MeshRender.back_project / fast_bake_texture) splats each view's pixels into UV space.
We gather instead: every texel of the UV raster (pipeline/bake.py TexelSurface) is projected into each
view, kept if the view sees it (depth test against the view's depth map, not within a few pixels of a
silhouette or depth edge, angle to the view axis under 75 degrees), and samples the view bilinearly with
weight = view weight * cos(angle)^4, as upstream's bake_exp. Texels no view saw take the colour of the
nearest seen texels on the surface (3-D distance, so across UV seams too).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.bake import TexelSurface
from pipeline.render.camera import Camera, project_points
from pipeline.render.projection import fill_unseen as fill_unseen_texels
from pipeline.render.raster import rasterize

BAKE_EXP = 4  # hy3dgen Hunyuan3DTexGenConfig.bake_exp
ANGLE_LIMIT = 75.0  # degrees; MeshRender.bake_angle_thres
EDGE_MARGIN = 2.0 / 512.0  # of the view size; MeshRender.bake_unreliable_kernel_size
EDGE_JUMP = 1.5  # depth steps over 1.5 x the steepest allowed surface slope are occlusion edges
_MAX_TREE_POINTS = 1 << 18  # seen texels sampled for the fill's KD-tree


def reliable_pixels(
    depth: torch.Tensor,  # [H, W] view depth, +inf where empty
    *,
    margin: int,
    jump: float,
) -> torch.Tensor:  # [H, W] bool
    """Covered pixels at least `margin` pixels away from the silhouette and from depth steps over `jump`
    between neighbours (occlusion edges), where generated views smear foreground into background."""
    covered = torch.isfinite(depth)
    finite = torch.where(covered, depth, torch.zeros_like(depth))
    edge = torch.zeros_like(covered)
    for dim in (0, 1):
        n = depth.shape[dim] - 1
        step = (finite.diff(dim=dim).abs() > jump) & covered.narrow(dim, 1, n) & covered.narrow(dim, 0, n)
        edge.narrow(dim, 0, n).logical_or_(step)
        edge.narrow(dim, 1, n).logical_or_(step)
    bad = (~covered | edge).float()[None, None]
    near_bad = F.max_pool2d(bad, 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0
    return covered & ~near_bad


def project_view(
    image: torch.Tensor,  # [3, H, W] float in [0, 1]
    camera: Camera,
    vertices: torch.Tensor,  # [V, 3] same frame as the camera
    faces: torch.Tensor,  # [F, 3]
    points: torch.Tensor,  # [T, 3] texel positions
    normals: torch.Tensor,  # [T, 3] unit texel normals
    *,
    exp: int = BAKE_EXP,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (colour [T, 3], cos^exp weight [T], 0 where not seen)
    """What one view says about each texel and how much to trust it."""
    height, width = image.shape[1:]
    depth_map = rasterize(vertices, faces, camera, check=check).depth
    pixel_size = 2.0 / (camera.projection[1, 1] * height)  # world units per pixel (orthographic)
    # A surface within the angle limit changes depth by at most tan(limit) pixels per pixel; more is a step.
    jump = EDGE_JUMP * math.tan(math.radians(ANGLE_LIMIT)) * pixel_size
    reliable = reliable_pixels(depth_map, margin=max(1, round(EDGE_MARGIN * max(height, width))), jump=jump)
    xy, _, depth = project_points(points, camera)
    col, row = xy[:, 0].floor().long(), xy[:, 1].floor().long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    pixel = row.clamp(0, height - 1) * width + col.clamp(0, width - 1)
    visible = inside & reliable.flatten()[pixel] & (depth <= depth_map.flatten()[pixel] + 2.0 * pixel_size)
    towards_camera = -torch.as_tensor(camera.forward, dtype=normals.dtype, device=normals.device)
    cos = normals @ towards_camera
    cos = torch.where(visible & (cos >= math.cos(math.radians(ANGLE_LIMIT))), cos, torch.zeros_like(cos))
    grid = torch.stack([xy[:, 0] / width * 2.0 - 1.0, xy[:, 1] / height * 2.0 - 1.0], dim=-1)
    colour = F.grid_sample(image[None].float(), grid[None, None], mode="bilinear", padding_mode="border",
                           align_corners=False)[0, :, 0].T  # [T, 3]
    return colour, cos.clamp(min=0.0) ** exp


def merge_views(
    images: torch.Tensor,  # [N, 3, H, W] in [0, 1]
    cameras: Sequence[Camera],
    weights: Sequence[float],
    surface: TexelSurface,  # UV raster of the same mesh, positions in the cameras' frame
    vertices: torch.Tensor,  # [V, 3]
    faces: torch.Tensor,  # [F, 3]
    *,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (texture [S, S, 3] float, seen [S, S] bool)
    """Weighted average of all views per texel. Like upstream's fast_bake_texture, a view that would only
    repaint texels already painted (over 99 % of its own) is skipped, so low-weight views do not blur."""
    size = surface.size
    covered = torch.nonzero(surface.mask.flatten()).squeeze(1)
    points = surface.position.view(-1, 3)[covered]
    normals = surface.normal.view(-1, 3)[covered]
    total = torch.zeros(covered.numel(), 3, dtype=torch.float32, device=points.device)
    trust = torch.zeros(covered.numel(), dtype=torch.float32, device=points.device)
    for image, camera, weight in zip(images, cameras, weights):
        if check is not None:
            check()
        colour, cos_weight = project_view(image, camera, vertices, faces, points, normals, check=check)
        sees = cos_weight > 0
        if sees.any() and float(((trust > 0) & sees).sum()) / float(sees.sum()) > 0.99:
            continue
        total += colour * (weight * cos_weight)[:, None]
        trust += weight * cos_weight
    texture = torch.zeros(size * size, 3, dtype=torch.float32, device=points.device)
    texture[covered] = total / trust.clamp(min=1e-8)[:, None]
    seen = torch.zeros(size * size, dtype=torch.bool, device=points.device)
    seen[covered] = trust > 1e-8
    return texture.view(size, size, 3), seen.view(size, size)


def fill_unseen(
    texture: np.ndarray,  # [S, S, 3] float
    seen: np.ndarray,  # [S, S] bool
    covered: np.ndarray,  # [S, S] bool, texels on the mesh
    positions: np.ndarray,  # [S, S, 3] texel positions
    *,
    neighbours: int = 4,
    seed: int = 0,
) -> np.ndarray:  # [S, S, 3]: covered texels all hold a colour
    """Unseen covered texels take the inverse-distance mean of the nearest seen texels in 3-D
    (render.projection.fill_unseen over the covered texels). With no seen texel at all the texture is left
    as it is."""
    if not (covered & ~seen).any() or not seen.any():
        return texture.copy()
    out = texture.reshape(-1, 3).copy()
    on_mesh = np.flatnonzero(covered | seen)
    out[on_mesh] = fill_unseen_texels(
        out[on_mesh], seen.reshape(-1)[on_mesh], positions.reshape(-1, 3)[on_mesh],
        neighbours=neighbours, max_tree_points=_MAX_TREE_POINTS, seed=seed,
    )
    return out.reshape(texture.shape)
