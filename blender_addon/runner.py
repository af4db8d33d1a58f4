"""One generation at a time: a worker thread runs jobflow.generate, and `pump`, a bpy.app.timers timer,
drains its events on Blender's main thread (the only place bpy may be touched)."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy

from . import importer
from .client import EndpointClient
from .jobflow import Event, generate

PUMP_SECONDS = 0.25


@dataclass
class _Active:
    thread: threading.Thread
    events: queue.Queue[Event]
    cancel: threading.Event
    name: str  # the imported object's name (the picture's)
    location: tuple[float, float, float]  # where the asset goes: the 3D cursor when Generate was pressed


_active: _Active | None = None


def is_running() -> bool:
    return _active is not None


def start(
    client: EndpointClient,
    job_input: dict[str, Any],
    dest_dir: Path,
    *,
    name: str,
    location: tuple[float, float, float],
    online_access: bool,
) -> None:
    global _active
    if _active is not None:
        raise RuntimeError("a generation is already running")
    events: queue.Queue[Event] = queue.Queue()
    cancel = threading.Event()
    thread = threading.Thread(
        target=generate, args=(client, job_input, dest_dir, events, cancel),
        kwargs={"online_access": online_access}, name="image-to-3d", daemon=True,
    )
    _active = _Active(thread, events, cancel, name, location)
    status = _status()
    status.running, status.progress, status.stage, status.message, status.error, status.job_id = (
        True, 0.0, "upload", "Starting", "", "")
    thread.start()
    if not bpy.app.timers.is_registered(pump):  # registering twice would run it twice per tick
        bpy.app.timers.register(pump, first_interval=PUMP_SECONDS)


def cancel() -> None:
    if _active is not None:
        _active.cancel.set()
        _status().message = "Cancelling"


def pump() -> float | None:
    """Timer callback: apply the worker's events; returns None (timer ends) once the job is over."""
    global _active
    if _active is None:
        return None
    status = _status()
    while True:
        try:
            event = _active.events.get_nowait()
        except queue.Empty:
            break
        if _apply(event, status, _active):
            _active = None
            status.running = False
            _redraw()
            return None
    _redraw()
    return PUMP_SECONDS


def shutdown() -> None:
    """On unregister: stop the worker and the timer (a left-over timer keeps a headless Blender alive)."""
    global _active
    if _active is not None:
        _active.cancel.set()
        _active.thread.join(timeout=5.0)
        _active = None
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)


def _apply(event: Event, status: Any, active: _Active) -> bool:
    """Show one event; True when it ends the job."""
    if event.kind == "progress":
        status.stage, status.message = event.stage, event.message
        status.progress = max(0.0, min(1.0, event.fraction))
        return False
    if event.kind == "job":
        status.job_id = event.job_id
        return False
    if event.kind == "done":
        try:
            obj = importer.import_result(bpy.context, event.paths["glb"], event.paths["meta"],
                                         name=active.name, location=active.location, job_id=event.job_id)
        except (RuntimeError, OSError, ValueError) as err:
            status.error = f"The model was downloaded to {event.paths['glb']} but could not be imported: {err}"
            return True
        status.progress, status.stage, status.message = 1.0, "done", f"Imported {obj.name}"
        return True
    if event.kind == "cancelled":
        status.stage, status.message = "cancelled", "Cancelled"
        return True
    status.error = event.message
    status.stage, status.message = "failed", ""
    return True


def _status() -> Any:
    return bpy.context.window_manager.image_to_3d_status


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
