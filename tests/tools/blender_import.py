"""Import a GLB with Blender's glTF importer (bpy module, headless) and describe what it built.

Run with the Blender venv's Python (bpy 5.x), never inside the worker's venv:
    python blender_import.py <model.glb> <report.json>
The report lists, for every mesh object, its vertex/face counts and what feeds the Principled BSDF's
Base Color, Roughness, Metallic and Normal inputs (the upstream node chain), or the unlinked value.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import bpy

_INPUTS = ("Base Color", "Roughness", "Metallic", "Normal")


def _chain(socket: Any) -> list[dict[str, Any]]:
    """Nodes upstream of `socket`, nearest first, following each node's first linked input."""
    chain: list[dict[str, Any]] = []
    while socket.is_linked:
        link = socket.links[0]
        node = link.from_node
        entry: dict[str, Any] = {"type": node.type, "output": link.from_socket.name}
        if node.type == "TEX_IMAGE" and node.image is not None:
            entry["image"] = node.image.name
            entry["colorspace"] = node.image.colorspace_settings.name
            entry["size"] = list(node.image.size)
        chain.append(entry)
        linked = [s for s in node.inputs if s.is_linked]
        if not linked:
            break
        socket = linked[0]
    return chain


def _describe_input(socket: Any) -> dict[str, Any]:
    if socket.is_linked:
        return {"linked": True, "chain": _chain(socket)}
    value = socket.default_value
    return {"linked": False, "value": list(value) if hasattr(value, "__len__") else float(value)}


def _describe_material(material: Any) -> dict[str, Any]:
    bsdf = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return {"name": material.name, "principled": False}
    return {
        "name": material.name,
        "principled": True,
        "inputs": {name: _describe_input(bsdf.inputs[name]) for name in _INPUTS},
    }


def main(glb: str, out: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.import_scene.gltf(filepath=glb)
    objects = []
    for obj in bpy.context.scene.objects:
        if obj.type != "MESH":
            continue
        mesh = obj.data
        objects.append(
            {
                "name": obj.name,
                "vertices": len(mesh.vertices),
                "faces": len(mesh.polygons),
                "materials": [_describe_material(m) for m in mesh.materials if m is not None],
            }
        )
    with open(out, "w", encoding="utf-8") as fh:
        json.dump({"import_result": sorted(result), "blender": bpy.app.version_string, "objects": objects}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
