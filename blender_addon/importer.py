"""Bring a downloaded bundle into the scene: the GLB with its PBR material, at the 3D cursor, named after
the picture, selected; meta.json stays beside the GLB and the object records where."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from mathutils import Vector

META_PROPERTY = "image_to_3d_meta"
JOB_PROPERTY = "image_to_3d_job_id"


def import_result(
    context: Any, glb_path: Path, meta_path: Path, *, name: str, location: tuple[float, float, float], job_id: str
) -> bpy.types.Object:
    """Import `glb_path`; return the root object (an empty parents several roots)."""
    before = set(bpy.data.objects)
    _import_gltf(context, glb_path)
    new = [obj for obj in bpy.data.objects if obj not in before]
    if not new:
        raise RuntimeError(f"{glb_path.name} holds no objects")
    roots = [obj for obj in new if obj.parent is None]
    collection = roots[0].users_collection[0] if roots[0].users_collection else context.scene.collection
    if len(roots) == 1:
        root = roots[0]
    else:
        root = bpy.data.objects.new(name, None)
        collection.objects.link(root)
        for obj in roots:
            obj.parent = root
        new.append(root)
    root.name = name
    if root.type == "MESH":
        root.data.name = name
    root.location = Vector(location) + root.location
    root[META_PROPERTY] = str(meta_path)
    root[JOB_PROPERTY] = job_id
    _select(context, new, root)
    return root


def _import_gltf(context: Any, path: Path) -> None:
    # Operators need a window in the UI; a timer callback has none, so borrow the first one (headless: none).
    window = context.window_manager.windows[0] if context.window_manager.windows else None
    if window is None:
        result = bpy.ops.import_scene.gltf(filepath=str(path))
    else:
        with context.temp_override(window=window):
            result = bpy.ops.import_scene.gltf(filepath=str(path))
    if "FINISHED" not in result:
        raise RuntimeError(f"the glTF importer could not read {path.name}")


def _select(context: Any, objects: list[bpy.types.Object], active: bpy.types.Object) -> None:
    for obj in context.view_layer.objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    context.view_layer.objects.active = active
