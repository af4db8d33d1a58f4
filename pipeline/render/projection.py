"""Albedo by projection: colour each texel from the prepared views that see it, weighted by how squarely
the surface faces each view, with a depth test so occluded texels take no colour from a view."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree

from pipeline.context import StageContext
from pipeline.render.camera import Camera, orbit_camera, project_points
from pipeline.render.raster import rasterize
from pipeline.types import PreparedView

MIRROR_WEIGHT = 0.5  # a mirrored front guess counts less than any real photo
_QUERY_CHUNK = 1 << 18  # nearest-fill queries between deadline checks


def view_camera(view: PreparedView) -> Camera:
    """The camera a prepared view was taken with: the orbit camera of its azimuth/elevation showing the
    [-1, 1]^2 square through the origin (orthographic when fov is 0, as the front view always is)."""
    size = int(view.rgba.shape[0])
    if view.fov <= 0:
        return orbit_camera(view.azimuth, view.elevation, size=size)
    distance = 1.0 / math.tan(math.radians(view.fov) / 2.0)
    return orbit_camera(view.azimuth, view.elevation, size=size, fov=view.fov, distance=distance)


def mirrored_back(front: PreparedView) -> PreparedView:
    """The front picture flipped left-right, used as a stand-in back photo (symmetric-object guess)."""
    return PreparedView(
        name="back-mirrored",
        rgba=np.ascontiguousarray(front.rgba[:, ::-1]),
        source="generated",
        azimuth=(front.azimuth + 180.0) % 360.0,
        elevation=front.elevation,
        fov=front.fov,
        mask_method=front.mask_method,
    )


def _sample(
    image: torch.Tensor,  # [N, N, 4] float32 0..1 RGBA
    xy: torch.Tensor,  # [P, 2] pixel coordinates
) -> tuple[torch.Tensor, torch.Tensor]:  # (rgb [P, 3], alpha [P]) bilinear, alpha-weighted
    size = image.shape[0]
    premultiplied = torch.cat([image[..., :3] * image[..., 3:], image[..., 3:]], dim=-1)
    grid = (xy / size * 2.0 - 1.0).view(1, 1, -1, 2)
    out = torch.nn.functional.grid_sample(
        premultiplied.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, :, 0].T  # [P, 4]
    alpha = out[:, 3]
    return out[:, :3] / alpha.clamp(min=1e-6)[:, None], alpha


def project_views(
    views: list[PreparedView],
    vertices: torch.Tensor,  # [V, 3] the mesh the texels lie on (occluder for the depth test)
    faces: torch.Tensor,  # [F, 3]
    points: torch.Tensor,  # [P, 3] texel positions
    normals: torch.Tensor,  # [P, 3] unit texel normals
    *,
    ctx: StageContext,
    power: float = 4.0,
    weights: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (rgb [P, 3] float32 0..1, seen [P] bool)
    """Blend the views at each texel with weights cos(angle to the view)^power (times weights[view.name],
    default 1), where the view's mask covers the texel and no other surface hides it."""
    weights = weights or {}
    colour = torch.zeros_like(points)
    total = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    for i, view in enumerate(views):
        ctx.report(i / max(len(views), 1), f"projecting view {view.name}")
        camera = view_camera(view)
        depth_map = rasterize(vertices, faces, camera, check=ctx.check).depth
        xy, _, depth = project_points(points, camera)
        size = camera.width
        col = xy[:, 0].floor().long()
        row = xy[:, 1].floor().long()
        inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
        # nearest surface within one pixel: texels just behind an occluder's silhouette count as hidden,
        # so bilinear sampling never blends the occluder's colour onto them
        near_map = -torch.nn.functional.max_pool2d(-depth_map[None, None], 3, stride=1, padding=1)[0, 0]
        nearest = near_map[row.clamp(0, size - 1), col.clamp(0, size - 1)]
        if camera.orthographic:
            to_camera = torch.as_tensor(-camera.forward, dtype=points.dtype, device=points.device).expand_as(points)
        else:
            eye = torch.as_tensor(camera.position, dtype=points.dtype, device=points.device)
            to_camera = torch.nn.functional.normalize(eye - points, dim=-1)
        cos = (normals * to_camera).sum(-1).clamp(min=0.0)
        # world size of one view pixel at the texel: the depth-test bias grows with it and with the slope
        pixel = 2.0 / (float(camera.projection[1, 1]) * size) * (depth if not camera.orthographic else 1.0)
        tan = torch.sqrt((1.0 - cos * cos).clamp(min=0.0)) / cos.clamp(min=0.1)
        visible = inside & (depth <= nearest + pixel * (2.0 + 1.5 * tan))
        image = torch.as_tensor(view.rgba, device=points.device).float() / 255.0
        rgb, alpha = _sample(image, xy)
        w = cos.pow(power) * visible.float() * (alpha >= 0.5).float() * weights.get(view.name, 1.0)
        colour += w[:, None] * rgb
        total += w
    seen = total > 1e-4
    rgb = torch.where(seen[:, None], colour / total.clamp(min=1e-12)[:, None], torch.zeros_like(colour))
    return rgb, seen


def fill_unseen(
    rgb: np.ndarray,  # [P, 3] colours
    seen: np.ndarray,  # [P] bool
    points: np.ndarray,  # [P, 3] texel positions
    *,
    neighbours: int = 1,
    max_tree_points: int | None = None,
    seed: int = 0,
    check: Callable[[], None] | None = None,
    default: np.ndarray | None = None,  # [3] colour when nothing was seen at all
) -> np.ndarray:  # [P, 3]
    """Unseen texels take the colour of the nearest seen texel on the surface (3-D), or with `neighbours` > 1
    the inverse-distance mean of that many. `max_tree_points`: search a random subset of the seen texels
    (colours vary slowly, the tree stays small)."""
    if seen.all():
        return rgb
    out = rgb.copy()
    if not seen.any():
        out[:] = np.full(3, 0.5) if default is None else default
        return out
    seen_idx = np.flatnonzero(seen)
    if max_tree_points is not None and seen_idx.size > max_tree_points:
        seen_idx = np.sort(np.random.default_rng(seed).choice(seen_idx, max_tree_points, replace=False))
    k = int(min(neighbours, seen_idx.size))
    # median-balanced trees query far-away points pathologically slowly on surface samples (43 s vs 0.9 s)
    tree = cKDTree(points[seen_idx], balanced_tree=False, compact_nodes=False)
    unseen = np.flatnonzero(~seen)
    seen_rgb = rgb[seen_idx]
    for start in range(0, len(unseen), _QUERY_CHUNK):
        if check is not None:
            check()
        part = unseen[start : start + _QUERY_CHUNK]
        distance, nearest = tree.query(points[part], k=k, workers=-1)
        if k == 1:
            out[part] = seen_rgb[nearest]
            continue
        weight = 1.0 / np.maximum(distance, 1e-9)
        out[part] = (seen_rgb[nearest] * weight[..., None]).sum(axis=1) / weight.sum(axis=1, keepdims=True)
    return out
