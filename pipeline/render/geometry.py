"""Small mesh helpers shared by the bakers and the texture stage."""
from __future__ import annotations

import numpy as np


def face_normals(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
) -> np.ndarray:  # [F, 3] float64, length = 2 x triangle area (counter-clockwise -> outward)
    v = vertices.astype(np.float64)
    return np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])


def vertex_normals(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
) -> np.ndarray:  # [V, 3] float32 unit
    """Area-weighted vertex normals. Vertices in no face (or only degenerate ones) get +Z."""
    fn = face_normals(vertices, faces)
    corners = faces.ravel()
    sums = np.stack(
        [np.bincount(corners, weights=np.repeat(fn[:, c], 3), minlength=len(vertices)) for c in range(3)], axis=1
    )
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    unit = np.where(length > 1e-20, sums / np.maximum(length, 1e-20), np.array([0.0, 0.0, 1.0]))
    return unit.astype(np.float32)


def sphere_directions(count: int) -> np.ndarray:  # [count, 3] float64 unit, evenly spread (Fibonacci)
    i = np.arange(count) + 0.5
    y = 1.0 - 2.0 * i / count
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, 1.0))
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=1)
