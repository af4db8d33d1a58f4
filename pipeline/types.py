"""Plain data passed between stages.

World frame (every stage): glTF axes, metres-free unit box. +Y is up, +X is the object's left-to-right
as seen in the front picture, and the front picture looks at the object from +Z towards -Z.
The prepared front view is an orthographic image of the square X, Y in [-1, 1]: pixel (col, row) of an
N x N view sees world x = (col + 0.5) / N * 2 - 1, y = 1 - (row + 0.5) / N * 2.
Meshes are scaled so the object fits in [-1, 1]^3.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VIEW_NAMES = ("front", "left", "back", "right")

VIEW_AZIMUTH = {"front": 0.0, "right": 90.0, "back": 180.0, "left": 270.0}
"""Camera azimuth about +Y in degrees, measured from +Z towards +X: the `right` photo is taken from the
object's right side (camera on +X), `left` from -X, `back` from -Z."""


VIEW_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""What a view may be called: it becomes views/<name>.png in the bundle, a storage key and a meta.json entry
(schemas/meta.schema.json uses this same pattern, and tests hold them equal). No '+': S3 and URLs mangle it."""

_VIEW_NAME = re.compile(VIEW_NAME_PATTERN)


def angled_view_name(prefix: str, azimuth: float, elevation: float) -> str:
    """The name of a view generated at (azimuth, elevation) degrees: `<prefix>_az090_elp00`, `..._elm90`
    (p: level or above, m: below), so names sort by azimuth and every character is safe in a key."""
    sign = "m" if round(elevation) < 0 else "p"
    return f"{prefix}_az{round(azimuth) % 360:03d}_el{sign}{abs(round(elevation)):02d}"


def is_view_name(name: str) -> bool:
    return bool(_VIEW_NAME.match(name))


@dataclass
class SourceImage:
    """One decoded input picture before preparation."""

    name: str  # front / left / back / right
    rgba: np.ndarray  # [H, W, 4] uint8, EXIF orientation applied
    sha256: str  # of the bytes as received
    bytes: int
    width: int
    height: int
    format: str  # PNG / JPEG / WEBP
    mask_source: str  # "alpha", "mask", or "none" (background still present)


@dataclass
class PreparedView:
    """An object view ready for the mesh and texture stages: square RGBA, object centred with a margin,
    background alpha 0. See the module docstring for the pixel <-> world mapping of the front view."""

    name: str  # front / left / back / right / generated names
    rgba: np.ndarray  # [N, N, 4] uint8
    source: str  # "input" or "generated"
    azimuth: float  # degrees, see VIEW_AZIMUTH
    elevation: float = 0.0  # degrees
    fov: float = 0.0  # degrees; 0 = orthographic
    mask_method: str = "alpha"  # how the object was cut out: alpha / mask / grabcut / <model name>

    @property
    def mask(self) -> np.ndarray:  # [N, N] bool
        return self.rgba[..., 3] >= 128


@dataclass
class ViewSet:
    """Output of the multiview stage."""

    views: dict[str, PreparedView]  # always has "front"
    sources: list[SourceImage]
    info: dict[str, Any] = field(default_factory=dict)  # method notes for meta.json

    @property
    def front(self) -> PreparedView:
        return self.views["front"]


@dataclass
class MeshData:
    """A triangle mesh in the world frame."""

    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int32, counter-clockwise seen from outside

    @property
    def bounds(self) -> np.ndarray:  # [2, 3]
        return np.stack([self.vertices.min(0), self.vertices.max(0)])


@dataclass
class MeshResult:
    """Output of the mesh stage: the reduced mesh to texture, the dense one to bake detail from."""

    mesh: MeshData
    dense: MeshData
    model: dict[str, Any]  # name, repo_id, revision, dtype, device, settings used
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TexturedMesh:
    """Output of the texture stage. Maps are [S, S(, C)] uint8 stored as glTF reads images: UV (0, 0) is
    the image's top-left pixel, so texel row = v * S and column = u * S."""

    vertices: np.ndarray  # [V, 3] float32 (split at UV seams)
    faces: np.ndarray  # [F, 3] int32
    uvs: np.ndarray | None  # [V, 2] float32, glTF convention (v down the image); None when texture=false
    normals: np.ndarray  # [V, 3] float32, unit
    tangents: np.ndarray | None  # [V, 4] float32 (xyz, w = handedness) when a normal map is present
    maps: dict[str, np.ndarray]  # albedo [S,S,3|4] sRGB; normal [S,S,3]; roughness, metallic, ao [S,S]; orm [S,S,3]
    roughness: float
    metallic: float
    info: dict[str, Any] = field(default_factory=dict)
    # info["maps"]: per-map method ("projection", "baked", "uniform", ...); info["models"]: role -> model
    # description ({name, repo_id, revision, dtype, device}) for every model the stage ran.
