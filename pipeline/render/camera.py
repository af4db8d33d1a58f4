"""Cameras for the rasteriser: OpenGL-style view and projection matrices, and an orbit helper that follows
pipeline/types.py (azimuth about +Y from +Z towards +X, elevation towards +Y)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Camera:
    """A pinhole or orthographic camera. The camera looks down its -Z axis with +Y up (OpenGL).

    Pixel (col, row) of the image sees NDC x = (col + 0.5) / width * 2 - 1, y = 1 - (row + 0.5) / height * 2.
    """

    view: np.ndarray  # [4, 4] float64, world -> camera
    projection: np.ndarray  # [4, 4] float64, camera -> clip (OpenGL conventions, NDC z in [-1, 1])
    width: int
    height: int

    @property
    def orthographic(self) -> bool:
        return bool(self.projection[3, 3] == 1.0)

    @property
    def position(self) -> np.ndarray:  # [3] world position of the eye
        return np.linalg.inv(self.view)[:3, 3]

    @property
    def forward(self) -> np.ndarray:  # [3] unit world direction the camera looks along
        return -self.view[2, :3]


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """World -> camera matrix [4, 4] for an eye looking at target (up defaults to +Y)."""
    back = np.asarray(eye, np.float64) - np.asarray(target, np.float64)
    back /= np.linalg.norm(back)
    up = np.array([0.0, 1.0, 0.0]) if up is None else np.asarray(up, np.float64)
    if abs(float(np.dot(back, up))) > 0.999:  # looking straight up or down: any other up will do
        up = np.array([0.0, 0.0, -1.0]) if back[1] > 0 else np.array([0.0, 0.0, 1.0])
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    view = np.eye(4)
    view[0, :3], view[1, :3], view[2, :3] = right, true_up, back
    view[:3, 3] = -view[:3, :3] @ np.asarray(eye, np.float64)
    return view


def orthographic(extent: float, near: float, far: float, aspect: float = 1.0) -> np.ndarray:
    """Projection [4, 4] seeing camera x in [-extent*aspect, extent*aspect], y in [-extent, extent]."""
    proj = np.eye(4)
    proj[0, 0] = 1.0 / (extent * aspect)
    proj[1, 1] = 1.0 / extent
    proj[2, 2] = -2.0 / (far - near)
    proj[2, 3] = -(far + near) / (far - near)
    return proj


def perspective(fov_y: float, near: float, far: float, aspect: float = 1.0) -> np.ndarray:
    """Projection [4, 4] with vertical field of view fov_y in degrees."""
    f = 1.0 / math.tan(math.radians(fov_y) / 2.0)
    proj = np.zeros((4, 4))
    proj[0, 0] = f / aspect
    proj[1, 1] = f
    proj[2, 2] = (far + near) / (near - far)
    proj[2, 3] = 2.0 * far * near / (near - far)
    proj[3, 2] = -1.0
    return proj


def orbit_camera(
    azimuth: float,
    elevation: float,
    *,
    size: int,
    distance: float = 3.0,
    fov: float = 0.0,
    extent: float = 1.0,
    target: np.ndarray | None = None,
    near: float = 0.1,
    far: float | None = None,
) -> Camera:
    """A square camera on a sphere around `target` (default origin), looking at it.

    azimuth, elevation: degrees (VIEW_AZIMUTH: 0 = front on +Z, 90 = right on +X). fov: vertical field of
    view in degrees, 0 = orthographic showing [-extent, extent]^2 around the target (the prepared view
    mapping when extent = 1).
    """
    target = np.zeros(3) if target is None else np.asarray(target, np.float64)
    az, el = math.radians(azimuth), math.radians(elevation)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    view = look_at(target + distance * direction, target)
    far = 2.0 * distance + 2.0 if far is None else far
    proj = orthographic(extent, near, far) if fov <= 0 else perspective(fov, near, far)
    return Camera(view=view, projection=proj, width=size, height=size)


def project_points(points: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """World points [N, 3] -> (pixel xy [N, 2] with pixel centres at +0.5, NDC z [N], view depth [N]).

    View depth is the distance in front of the camera along its axis (positive = visible side).
    """
    mvp = torch.as_tensor(camera.projection @ camera.view, dtype=points.dtype, device=points.device)
    clip = torch.addmm(mvp[:, 3], points, mvp[:, :3].T)  # [N, 4] without building homogeneous points
    ndc = clip[:, :3] if camera.orthographic else clip[:, :3] / clip[:, 3:]
    scale = torch.tensor([0.5 * camera.width, -0.5 * camera.height], dtype=points.dtype, device=points.device)
    xy = torch.addcmul(scale.abs(), ndc[:, :2], scale)  # x = (ndc_x + 1) W / 2, y = (1 - ndc_y) H / 2
    view_z = torch.as_tensor(camera.view[2], dtype=points.dtype, device=points.device)
    depth = -torch.addmv(view_z[3:].expand(points.shape[0]), points, view_z[:3])
    return xy, ndc[:, 2], depth
