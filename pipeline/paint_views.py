"""The six views Hunyuan3D-Paint generates and the normal / position maps it is conditioned on, rendered
with our rasteriser in the conventions of hy3dgen's texgen renderer (differentiable_renderer/mesh_render.py).

Upstream, step by step, and what it means in our world frame (pipeline/types.py: +Y up, front from +Z):
- `MeshRender.set_mesh` maps a mesh point (x, y, z) to (-x, z, -y) in its Z-up renderer frame, then
  centres the bounding box and scales the bounding sphere's diameter to 1.15 (`normalize_for_views`).
- `get_mv_matrix(elev, azim, 1.45)`: azimuth 0 puts the camera on the mesh's +Z, 90 on its +X (our
  VIEW_AZIMUTH), elevation 90 above; orthographic over [-0.6, 0.6]^2. custom_rasterizer stores NDC
  y = -1 in image row 0, so the images it hands the model are upright (mesh +Y at the top).
  `view_camera` is that camera as a proper rotation in our frame, for our row-0-at-the-top rasteriser.
- Normal maps (use_abs_coor=True) are per-vertex means of face normals computed in the renderer frame,
  whose handedness flip turns an outward normal n into (nx, -nz, ny): colour = 0.5 + 0.5 * that.
  Position maps: colour = 0.5 - renderer position / 1.15 = 0.5 + (x, -z, y) / 1.15. Background is white.
  (Both are Blender's Z-up world axes, the frame the model was trained in.)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.render.camera import Camera, orthographic
from pipeline.render.raster import interpolate, rasterize

# hy3dgen texgen pipelines.py: Hunyuan3DTexGenConfig
VIEW_AZIMUTHS = (0.0, 90.0, 180.0, 270.0, 0.0, 180.0)
VIEW_ELEVATIONS = (0.0, 0.0, 0.0, 0.0, 90.0, -90.0)
VIEW_WEIGHTS = (1.0, 0.1, 0.5, 0.1, 0.05, 0.05)
# hy3dgen MeshRender defaults
CAMERA_DISTANCE = 1.45
ORTHO_HALF_EXTENT = 0.6  # ortho_scale 1.2
SCALE_FACTOR = 1.15  # diameter of the normalised mesh's bounding sphere
_NEAR, _FAR = 0.1, 100.0

_TO_RENDERER = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (x, y, z) -> (-x, z, -y)


def camera_index(azimuth: float, elevation: float) -> int:
    """The camera class id the multiview UNet embeds for a view (upstream's `camera_info` formula)."""
    azim, elev = int(azimuth), int(elevation)
    per_ring = {-20: 1, 0: 1, 20: 1, -90: 3, 90: 3}
    offset = {-20: 0, 0: 12, 20: 24, -90: 36, 90: 40}
    return (((azim // 30) + 9) % 12) // per_ring[elev] + offset[elev]


def _upstream_view(elevation: float, azimuth: float, distance: float) -> np.ndarray:  # [4, 4] renderer frame
    """hy3dgen camera_utils.get_mv_matrix, float for float (its straight-up views rely on cos(90 deg) != 0)."""
    elev, azim = math.radians(-elevation), math.radians(azimuth + 90.0)
    position = distance * np.array([math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)])
    lookat = -position / np.linalg.norm(position)
    right = np.cross(lookat, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    up = np.cross(right, lookat)
    up /= np.linalg.norm(up)
    rotation = np.stack([right, up, -lookat])  # rows: camera axes in the renderer frame
    view = np.eye(4)
    view[:3, :3] = rotation
    view[:3, 3] = -rotation @ position
    return view


def view_camera(azimuth: float, elevation: float, size: int) -> Camera:
    """Upstream's orthographic camera for one view, in our world frame (normalised as normalize_for_views)."""
    to_renderer = np.eye(4)
    to_renderer[:3, :3] = _TO_RENDERER
    # Negating camera y turns custom_rasterizer's bottom-up rows into ours; with the axis swap (also a
    # reflection) the result is a proper rotation.
    view = np.diag([1.0, -1.0, 1.0, 1.0]) @ _upstream_view(elevation, azimuth, CAMERA_DISTANCE) @ to_renderer
    projection = orthographic(ORTHO_HALF_EXTENT, _NEAR, _FAR)
    return Camera(view=view, projection=projection, width=size, height=size)


def normalize_for_views(
    vertices: np.ndarray,  # [V, 3]
) -> tuple[np.ndarray, np.ndarray, float]:  # (normalised [V, 3] float32, centre [3], scale)
    """Upstream's auto_center: bounding-box centre to the origin, bounding sphere diameter to 1.15."""
    v = vertices.astype(np.float64)
    centre = (v.max(axis=0) + v.min(axis=0)) / 2.0
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    scale = SCALE_FACTOR / max(2.0 * radius, 1e-12)
    return ((v - centre) * scale).astype(np.float32), centre, scale


def welded_vertex_normals(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
) -> np.ndarray:  # [V, 3] float32 unit
    """Mean of the unit normals of the faces around each position (trimesh's mean_vertex_normals, as
    upstream), with vertices split at UV seams welded first so seams do not show in the normal maps."""
    _, weld = np.unique(vertices, axis=0, return_inverse=True)
    weld = weld.reshape(-1)
    v = vertices.astype(np.float64)
    normals = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)
    corners = weld[faces].reshape(-1)
    sums = np.stack([np.bincount(corners, weights=np.repeat(normals[:, c], 3), minlength=weld.max() + 1)
                     for c in range(3)], axis=1)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-20)
    return sums[weld].astype(np.float32)


@dataclass
class ViewMaps:
    """Conditioning images for the multiview model, upstream-encoded, white background, in [0, 1]."""

    normal: torch.Tensor  # [N, 3, S, S] float32
    position: torch.Tensor  # [N, 3, S, S] float32
    mask: torch.Tensor  # [N, S, S] bool, pixels the mesh covers


def encode_normals(normals: torch.Tensor) -> torch.Tensor:  # [..., 3] -> [..., 3] colour in [0, 1]
    return 0.5 + 0.5 * torch.stack([normals[..., 0], -normals[..., 2], normals[..., 1]], dim=-1)


def encode_positions(positions: torch.Tensor) -> torch.Tensor:  # [..., 3] normalised -> [..., 3] colour
    return 0.5 + torch.stack([positions[..., 0], -positions[..., 2], positions[..., 1]], dim=-1) / SCALE_FACTOR


def render_view_maps(
    vertices: np.ndarray,  # [V, 3] normalised (normalize_for_views)
    faces: np.ndarray,  # [F, 3]
    normals: np.ndarray,  # [V, 3] unit (welded_vertex_normals)
    *,
    size: int,
    device: str,
    supersample: int = 2,
    check: Callable[[], None] | None = None,
) -> ViewMaps:
    """Normal and position maps of the six views. Rendered at `supersample` x `size` and box-filtered, as
    upstream renders at 2048 and lets PIL shrink to 512 (custom_rasterizer has no antialiasing)."""
    v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    f = torch.as_tensor(faces.astype(np.int64), device=device)
    n = torch.as_tensor(normals, dtype=torch.float32, device=device)
    attributes = torch.cat([encode_normals(n), encode_positions(v)], dim=1)  # [V, 6]
    big = size * supersample
    images, masks = [], []
    for azimuth, elevation in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS):
        frags = rasterize(v, f, view_camera(azimuth, elevation, big), check=check)
        # Upstream interpolates raw normals without renormalising; encoding is affine, so interpolate colours.
        colour = torch.where(frags.mask[..., None], interpolate(attributes, f, frags), torch.ones(6, device=device))
        images.append(colour.permute(2, 0, 1))
        masks.append(frags.mask.float()[None])
    pooled = F.avg_pool2d(torch.stack(images), supersample)  # [N, 6, S, S]
    coverage = F.avg_pool2d(torch.stack(masks), supersample)[:, 0]
    return ViewMaps(normal=pooled[:, :3].contiguous(), position=pooled[:, 3:].contiguous(), mask=coverage >= 0.5)
