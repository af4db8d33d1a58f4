"""Generate and Cancel."""
from __future__ import annotations

import bpy

from . import picture, preferences, runner
from .client import EndpointError


class IMAGE3D_OT_generate(bpy.types.Operator):
    """Send the picture to the endpoint and import the 3D asset it makes"""

    bl_idname = "image_to_3d.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not runner.is_running()

    def execute(self, context: bpy.types.Context) -> set[str]:
        options = context.scene.image_to_3d
        status = context.window_manager.image_to_3d_status
        prefs = preferences.get(context)
        try:
            client = prefs.client()
            if options.source == "FILE":
                data, name = picture.from_file(options.filepath)
            else:
                data, name = picture.from_image(options.image)
            job_input = {"image_base64": picture.to_base64(data), **options.job_input()}
            runner.start(client, job_input, prefs.download_folder(), name=name,
                         location=tuple(context.scene.cursor.location), online_access=bpy.app.online_access)
        except EndpointError as err:
            status.error = str(err)
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return {"FINISHED"}


class IMAGE3D_OT_cancel(bpy.types.Operator):
    """Stop the running job (the endpoint is asked to cancel it too)"""

    bl_idname = "image_to_3d.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return runner.is_running()

    def execute(self, context: bpy.types.Context) -> set[str]:
        runner.cancel()
        return {"FINISHED"}


CLASSES = (IMAGE3D_OT_generate, IMAGE3D_OT_cancel)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
