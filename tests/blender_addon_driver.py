"""Runs inside Blender's Python (`bpy` module): install the built extension zip, drive Generate against
serve.py, import the result, report what came out as JSON, and unregister cleanly.

    <blender python> tests/blender_addon_driver.py config.json

config: {"zip", "picture", "out", "runs": [{"name", "mode": LOCAL|REMOTE, "url", "key", "source": FILE|IMAGE,
         "cursor": [x, y, z], "cancel": bool, "options": {...}}]}
In module mode timers never fire, so the driver calls the addon's timer function itself; a timer left
registered would hang this process at exit, which is why unregistering is part of what is checked.

The driver ends with os._exit, not by returning: bpy 4.2 as a module shuts Blender down only when the `bpy`
extension module is deallocated. Once a script has registered a PropertyGroup subclass that has a method
(the addon's Image3DOptions.job_input; even unregistered again), that module outlives the interpreter, so
Blender's static SpaceType list is destroyed after Python has gone and its Python panel types crash in
bpy_class_free -> PyGILState_Ensure (SIGSEGV, return code -11). The Blender program shuts down through
WM_exit while Python is alive, and bpy 5.x does not have the bug, so only this harness needs the way round.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bpy  # first: it puts Blender's own modules (addon_utils, ...) on the path
import addon_utils  # noqa: E402

RUN_SECONDS = 240.0


def install(zip_path: str) -> str:
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    assert "FINISHED" in result, result
    module = "bl_ext.user_default.image_to_3d"
    assert module in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
    return module


def pump_until_done(runner: Any, *, cancel_when_running: bool = False) -> float:
    """Drive the addon's timer by hand until the job ends; return the seconds it took."""
    status = bpy.context.window_manager.image_to_3d_status
    started = time.monotonic()
    cancelled = False
    while runner.is_running():
        if runner.pump() is None:  # what Blender's timer loop does with a callback that returns None
            bpy.app.timers.unregister(runner.pump)
        if cancel_when_running and not cancelled and status.job_id and status.stage not in ("upload", "queue"):
            assert "FINISHED" in bpy.ops.image_to_3d.cancel()
            cancelled = True
        if time.monotonic() - started > RUN_SECONDS:
            raise TimeoutError(f"the job did not finish in {RUN_SECONDS:g} s: {status.stage} {status.message}")
        time.sleep(0.05)
    return time.monotonic() - started


def pump_until_started(runner: Any) -> None:
    """Drive the timer until the endpoint has accepted the job and it runs."""
    status = bpy.context.window_manager.image_to_3d_status
    started = time.monotonic()
    while not (status.job_id and status.stage not in ("upload", "queue")):
        assert runner.is_running(), status.error
        runner.pump()
        if time.monotonic() - started > RUN_SECONDS:
            raise TimeoutError("the job did not start")
        time.sleep(0.05)


def material_links(obj: bpy.types.Object) -> dict[str, Any]:
    """Which Principled BSDF inputs are driven by a node, and by what kind of node."""
    if obj.type != "MESH" or not obj.data.materials or obj.data.materials[0] is None:
        return {}
    material = obj.data.materials[0]
    nodes = material.node_tree.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return {"material": material.name, "principled": False}
    links = {}
    for name in ("Base Color", "Normal", "Roughness", "Metallic", "Alpha"):
        socket = bsdf.inputs[name]
        links[name] = socket.links[0].from_node.type if socket.is_linked else None
    images = sorted({n.image.name for n in nodes if n.type == "TEX_IMAGE" and n.image is not None})
    normal_map = next((n for n in nodes if n.type == "NORMAL_MAP"), None)
    normal_source = None
    if normal_map is not None and normal_map.inputs["Color"].is_linked:
        normal_source = normal_map.inputs["Color"].links[0].from_node.type
    return {"material": material.name, "principled": True, "links": links, "images": images,
            "normal_map_source": normal_source,
            "metallic_value": bsdf.inputs["Metallic"].default_value,
            "image_sizes": sorted({tuple(n.image.size) for n in nodes if n.type == "TEX_IMAGE" and n.image})}


def do_run(module: str, run: dict[str, Any], picture: str) -> dict[str, Any]:
    runner = importlib.import_module(module + ".runner")
    importer = importlib.import_module(module + ".importer")
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.mode = run["mode"]
    if run["mode"] == "REMOTE":
        prefs.endpoint, prefs.api_key = run["url"], run.get("key") or ""
    else:
        prefs.server_url, prefs.server_token = run["url"], run.get("key") or ""
    prefs.download_dir = run["download_dir"]

    options = bpy.context.scene.image_to_3d
    options.source = run.get("source", "FILE")
    if options.source == "FILE":
        options.filepath = picture
    else:
        options.image = bpy.data.images.load(picture, check_existing=True)
    for key, value in run.get("options", {}).items():
        setattr(options, key, value)
    bpy.context.scene.cursor.location = run.get("cursor", (0.0, 0.0, 0.0))
    status = bpy.context.window_manager.image_to_3d_status
    status.error = ""

    before = set(bpy.data.objects)
    report: dict[str, Any] = {"name": run["name"]}
    try:
        result = bpy.ops.image_to_3d.generate()
    except RuntimeError as err:  # an operator that reports ERROR raises in background mode
        result = {"ERROR"}
        report["operator_error"] = str(err)
    report["operator"] = sorted(result)
    report["timer_registered_while_running"] = bpy.app.timers.is_registered(runner.pump)
    if "FINISHED" in result and run.get("leave_running"):
        pump_until_started(runner)  # main() then unregisters the addon with this job in flight
    elif "FINISHED" in result:
        report["seconds"] = pump_until_done(runner, cancel_when_running=run.get("cancel", False))
    report["status"] = {k: getattr(status, k) for k in ("running", "progress", "stage", "message", "error", "job_id")}
    new = [obj for obj in bpy.data.objects if obj not in before]
    root = bpy.context.view_layer.objects.active if new else None
    if root is not None and root in new:
        meta_path = Path(root.get(importer.META_PROPERTY, ""))
        report["object"] = {
            "name": root.name,
            "type": root.type,
            "location": list(root.location),
            "selected": root.select_get(),
            "all_new_selected": all(obj.select_get() for obj in new),
            "job_id": root.get(importer.JOB_PROPERTY),
            "meta_path": str(meta_path),
            "meta": json.loads(meta_path.read_text()) if meta_path.is_file() else None,
            "glb_exists": (meta_path.parent / "model.glb").is_file(),
            "faces": len(root.data.polygons) if root.type == "MESH" else 0,
            "dimensions": list(root.dimensions),
            "material": material_links(root),
        }
    return report


def main() -> None:
    config = json.loads(Path(sys.argv[-1]).read_text())
    report: dict[str, Any] = {"blender": bpy.app.version_string, "online_access": bpy.app.online_access, "runs": []}
    module = install(config["zip"])
    runner = importlib.import_module(module + ".runner")
    try:
        for run in config["runs"]:
            report["runs"].append(do_run(module, run, config["picture"]))
    finally:
        addon_utils.disable(module, default_set=True)
        report["unregistered"] = {
            "job_in_flight": runner.is_running(),
            "addon_enabled": module in bpy.context.preferences.addons,
            "timer_registered": bpy.app.timers.is_registered(runner.pump),
            "scene_property": hasattr(bpy.types.Scene, "image_to_3d"),
            "panel_class": hasattr(bpy.types, "IMAGE3D_PT_panel"),
        }
        Path(config["out"]).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    code = 0
    try:
        main()
    except BaseException:  # noqa: BLE001  (report it, then exit without Blender's module-mode teardown)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
