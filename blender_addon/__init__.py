"""Image to 3D: turn a picture into a game-ready asset in the scene, on RunPod or on a local GPU server."""
from __future__ import annotations

from . import operators, panels, preferences, properties, runner

_MODULES = (preferences, properties, operators, panels)


def register() -> None:
    for module in _MODULES:
        module.register()


def unregister() -> None:
    runner.shutdown()
    for module in reversed(_MODULES):
        module.unregister()
