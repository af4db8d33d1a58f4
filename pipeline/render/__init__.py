"""Rendering core in plain PyTorch (CPU in tests, CUDA in production): cameras, a triangle rasteriser for
camera and UV space with attribute interpolation, nearest ray-triangle hits on a uniform grid (raycast), and
projection of pictures onto a mesh's texels."""
from pipeline.render.camera import Camera, look_at, orbit_camera, orthographic, perspective, project_points
from pipeline.render.raster import (
    Fragments,
    interpolate,
    rasterize,
    rasterize_reference,
    rasterize_uv,
    rasterize_uv_reference,
)

__all__ = [
    "Camera",
    "Fragments",
    "interpolate",
    "look_at",
    "orbit_camera",
    "orthographic",
    "perspective",
    "project_points",
    "rasterize",
    "rasterize_reference",
    "rasterize_uv",
    "rasterize_uv_reference",
]
