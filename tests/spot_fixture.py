"""A real TexturedMesh for export tests: Keenan Crane's Spot (tests/data/spot) with its texture.

Roughness/metallic are uniform maps, the normal map is flat, tangents come from the UV layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from pipeline.types import PreparedView, TexturedMesh, ViewSet

DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def compute_tangents(
    vertices: np.ndarray,  # [V, 3] float32
    faces: np.ndarray,  # [F, 3] int32
    uvs: np.ndarray,  # [V, 2] float32, glTF convention (v down)
    normals: np.ndarray,  # [V, 3] float32, unit
) -> np.ndarray:  # [V, 4] float32
    """Per-vertex tangents (xyz, w = handedness): summed face tangents, Gram-Schmidt against the normal."""
    p, t = vertices[faces].astype(np.float64), uvs[faces].astype(np.float64)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)[:, None]
    face_t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det
    face_b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det
    tan, bit = np.zeros_like(vertices, np.float64), np.zeros_like(vertices, np.float64)
    for corner in range(3):
        np.add.at(tan, faces[:, corner], face_t)
        np.add.at(bit, faces[:, corner], face_b)
    n = normals.astype(np.float64)
    tan -= n * (tan * n).sum(1, keepdims=True)
    length = np.linalg.norm(tan, axis=1, keepdims=True)
    # A vertex whose UV triangles are degenerate gets any unit vector orthogonal to its normal.
    fallback = np.cross(n, np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    fallback /= np.linalg.norm(fallback, axis=1, keepdims=True)
    tan = np.where(length > 1e-9, tan / np.maximum(length, 1e-12), fallback)
    w = np.where((np.cross(n, tan) * bit).sum(1) < 0, -1.0, 1.0)
    return np.concatenate([tan, w[:, None]], axis=1).astype(np.float32)


def spot_textured(size: int = 256, *, normal_map: bool = True, tangents: bool = True, ao: bool = False) -> TexturedMesh:
    """Spot with albedo, uniform roughness 0.8 / metallic 0 maps and their ORM; optionally a flat normal map."""
    mesh = trimesh.load(DATA / "spot" / "spot_triangulated.obj", process=False)
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.faces, np.int32)
    uvs = np.asarray(mesh.visual.uv, np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]  # OBJ v points up the image, glTF v down
    normals = np.asarray(mesh.vertex_normals, np.float32)
    albedo = np.asarray(Image.open(DATA / "spot" / "spot_texture.png").convert("RGB").resize((size, size)))
    roughness = np.full((size, size), round(0.8 * 255), np.uint8)
    metallic = np.zeros((size, size), np.uint8)
    occlusion = np.full((size, size), 255, np.uint8)
    maps = {"albedo": albedo, "roughness": roughness, "metallic": metallic}
    methods = {"albedo": "source texture", "roughness": "uniform", "metallic": "uniform", "orm": "packed"}
    if ao:
        columns = np.broadcast_to(np.arange(size), (size, size))
        occlusion = (155 + 100 * np.cos(columns / size * np.pi) ** 2).astype(np.uint8)
        maps["ao"] = occlusion
        methods["ao"] = "baked"
    else:
        methods["ao"] = "not baked"
    maps["orm"] = np.stack([occlusion, roughness, metallic], axis=-1)
    if normal_map:
        maps["normal"] = np.broadcast_to(np.array([128, 128, 255], np.uint8), (size, size, 3)).copy()
        methods["normal"] = "flat"
    return TexturedMesh(
        vertices=vertices,
        faces=faces,
        uvs=uvs,
        normals=normals,
        tangents=compute_tangents(vertices, faces, uvs, normals) if tangents else None,
        maps=maps,
        roughness=0.8,
        metallic=0.0,
        info={"maps": methods, "models": {}},
    )


def untextured(mesh: TexturedMesh, *, roughness: float = 0.6, metallic: float = 0.25) -> TexturedMesh:
    """The same geometry as texture=false produces it: no UVs, no maps, uniform material values."""
    return TexturedMesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        uvs=None,
        normals=mesh.normals,
        tangents=None,
        maps={},
        roughness=roughness,
        metallic=metallic,
        info={"maps": {"albedo": "not computed (texture=false)"}},
    )


def example_views(size: int = 128) -> ViewSet:
    """A ViewSet with a front view prepared from examples/lantern.png and a generated back view."""
    rgba = np.asarray(Image.open(EXAMPLES / "lantern.png").convert("RGBA").resize((size, size)))
    front = PreparedView(name="front", rgba=rgba, source="input", azimuth=0.0, mask_method="alpha")
    back = PreparedView(
        name="back", rgba=rgba[:, ::-1].copy(), source="generated", azimuth=180.0, fov=30.0, mask_method="alpha"
    )
    return ViewSet(views={"front": front, "back": back}, sources=[], info={"recentred": True})
