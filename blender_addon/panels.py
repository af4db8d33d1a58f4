"""The 3D view sidebar panel (N panel, tab "Image to 3D")."""
from __future__ import annotations

import bpy

from . import preferences


class IMAGE3D_PT_panel(bpy.types.Panel):
    bl_label = "Image to 3D"
    bl_idname = "IMAGE3D_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Image to 3D"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        options = context.scene.image_to_3d
        status = context.window_manager.image_to_3d_status
        prefs = preferences.get(context)
        if prefs.mode == "REMOTE":
            layout.label(text=f"RunPod: {prefs.endpoint or 'no endpoint set'}", icon="URL")
        else:
            layout.label(text=f"Local: {prefs.server_url}", icon="URL")

        layout.prop(options, "source", expand=True)
        if options.source == "FILE":
            layout.prop(options, "filepath", text="")
        else:
            layout.template_ID(options, "image", open="image.open")

        col = layout.column(align=True)
        col.prop(options, "shape_model", text="")
        col.prop(options, "target_faces")
        col.prop(options, "texture")
        row = col.row()
        row.enabled = options.texture
        row.prop(options, "texture_size")
        col.prop(options, "seed")
        col.prop(options, "remove_background")

        if status.running:
            layout.progress(factor=status.progress, type="BAR",
                            text=f"{status.stage}: {status.message}" if status.message else status.stage)
            layout.operator("image_to_3d.cancel", icon="CANCEL")
        else:
            layout.operator("image_to_3d.generate", icon="MESH_MONKEY")
            if status.message and not status.error:
                layout.label(text=status.message, icon="CHECKMARK")
        if status.error:
            box = layout.box()
            box.alert = True
            for n, line in enumerate(_wrap(status.error, 40)):
                box.label(text=line, icon="ERROR" if n == 0 else "BLANK1")


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line] if line else lines


def register() -> None:
    bpy.utils.register_class(IMAGE3D_PT_panel)


def unregister() -> None:
    bpy.utils.unregister_class(IMAGE3D_PT_panel)
