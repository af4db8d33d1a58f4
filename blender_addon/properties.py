"""The panel's options (saved with the scene) and the running job's status (window manager: not saved)."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

SHAPE_MODELS = (
    ("hunyuan3d-2", "Hunyuan3D-2", "Best quality"),
    ("hunyuan3d-2-turbo", "Hunyuan3D-2 Turbo", "Fewer sampling steps"),
    ("hunyuan3d-2-fast", "Hunyuan3D-2 Fast", "Distilled, faster"),
    ("hunyuan3d-2mini", "Hunyuan3D-2 Mini", "Smaller model"),
    ("hunyuan3d-2mv", "Hunyuan3D-2 MV", "Multi-view conditioned"),
    ("silhouette", "Silhouette (preview)", "Quick CPU preview from the outline, no model weights"),
)
TEXTURE_SIZES = tuple((s, s, f"{s} x {s} texture maps") for s in ("512", "1024", "2048", "4096"))
BACKGROUND = (
    ("auto", "Auto", "Use the picture's alpha when it has one, else remove the background"),
    ("on", "Remove", "Always remove the background"),
    ("off", "Keep", "The picture is already cut out"),
)


class Image3DOptions(bpy.types.PropertyGroup):
    source: EnumProperty(name="Picture", items=(
        ("FILE", "File", "A picture file on disk"),
        ("IMAGE", "Image", "An image already open in Blender"),
    ), default="FILE")
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="PNG, JPEG or WebP picture of the object")
    image: PointerProperty(name="Image", type=bpy.types.Image)
    shape_model: EnumProperty(name="Shape model", items=SHAPE_MODELS, default="hunyuan3d-2")
    target_faces: IntProperty(name="Target faces", default=40_000, min=1_000, max=500_000, soft_max=200_000)
    texture: BoolProperty(name="Texture", default=True,
                          description="Paint and bake texture maps; off: a quick untextured mesh")
    texture_size: EnumProperty(name="Texture size", items=TEXTURE_SIZES, default="2048")
    seed: IntProperty(name="Seed", default=0, min=0)
    remove_background: EnumProperty(name="Background", items=BACKGROUND, default="auto")

    def job_input(self) -> dict:
        """The request fields these options set (CONTRACT.md section 1); the picture is added by the caller."""
        background = {"auto": "auto", "on": True, "off": False}[self.remove_background]
        return {
            "shape_model": self.shape_model,
            "target_faces": self.target_faces,
            "texture": self.texture,
            "texture_size": int(self.texture_size),
            "seed": self.seed,
            "remove_background": background,
        }


class Image3DStatus(bpy.types.PropertyGroup):
    running: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: StringProperty()
    message: StringProperty()
    error: StringProperty()
    job_id: StringProperty()


CLASSES = (Image3DOptions, Image3DStatus)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.image_to_3d = PointerProperty(type=Image3DOptions)
    bpy.types.WindowManager.image_to_3d_status = PointerProperty(type=Image3DStatus)


def unregister() -> None:
    del bpy.types.WindowManager.image_to_3d_status
    del bpy.types.Scene.image_to_3d
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
