"""Render a GLB to a PNG, to look at a result without a 3D tool: a strip of views around the object.

Runs in Blender's Python (the `bpy` module), headless, on the CPU (Cycles); not in the worker's venv:

    .venv-blender/bin/python scripts/render_preview.py outputs/local_test/model.glb -o preview.png
    .venv-blender/bin/python scripts/render_preview.py model.glb -o preview.png --views front,back --size 512

`.venv-blender` is made by `bash scripts/setup.sh --dev` (or: python3.11 -m venv .venv-blender &&
.venv-blender/bin/pip install -r requirements-blender.txt). Any Blender 4.2+ works too:
`blender -b --python scripts/render_preview.py -- model.glb -o preview.png`.

Views (comma separated, in order): front (the side the picture showed), left, right, back, three-quarter
(front-left, a little above), top. The model's own material is used as imported by Blender's glTF importer
(base colour, normal, ORM), lit by a soft sky and one sun; the background is transparent unless --background.
"""
from __future__ import annotations

import argparse
import math
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

# Blender's axes after the glTF import: +Z up, the glTF front (+Z) faces Blender's -Y.
VIEWS = {  # name -> (azimuth in degrees around +Z from the front, elevation in degrees)
    "front": (0.0, 8.0),
    "left": (-90.0, 8.0),
    "right": (90.0, 8.0),
    "back": (180.0, 8.0),
    "three-quarter": (-40.0, 25.0),
    "top": (0.0, 85.0),
}
DEFAULT_VIEWS = "front,three-quarter,left,back"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("glb", help="the model (a bundle's model.glb)")
    parser.add_argument("-o", "--output", default="preview.png", help="PNG to write (default preview.png)")
    parser.add_argument("--views", default=DEFAULT_VIEWS, help=f"comma separated, of {', '.join(VIEWS)} "
                        f"(default {DEFAULT_VIEWS})")
    parser.add_argument("--size", type=int, default=384, help="pixels per view, square (default 384)")
    parser.add_argument("--samples", type=int, default=24, help="Cycles samples per pixel (default 24)")
    parser.add_argument("--background", default=None, metavar="R,G,B",
                        help="opaque background colour, 0-1 each (default: transparent)")
    args = parser.parse_args(argv)
    args.views = [v.strip() for v in args.views.split(",") if v.strip()]
    unknown = [v for v in args.views if v not in VIEWS]
    if unknown or not args.views:
        parser.error(f"unknown view(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VIEWS)}")
    if not 16 <= args.size <= 4096:
        parser.error("--size must be 16-4096")
    return args


def _scene(samples: int, size: int, transparent: bool) -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = True
    scene.cycles.max_bounces = 4
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = transparent
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"  # the textures' colours as they are, not a filmic curve
    world = bpy.data.worlds.new("preview sky")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.8, 0.82, 0.86, 1.0)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    return scene


def _import(glb: Path) -> tuple[Vector, float]:
    """Import the GLB; return the centre and radius of its meshes' bounding sphere."""
    bpy.ops.import_scene.gltf(filepath=str(glb))
    corners = [obj.matrix_world @ Vector(c) for obj in bpy.context.scene.objects if obj.type == "MESH"
               for c in obj.bound_box]
    if not corners:
        raise SystemExit(f"{glb}: no mesh in it")
    lo = Vector(tuple(min(c[i] for c in corners) for i in range(3)))
    hi = Vector(tuple(max(c[i] for c in corners) for i in range(3)))
    return (lo + hi) / 2, max((hi - lo).length / 2, 1e-6)


def _direction(azimuth: float, elevation: float) -> Vector:
    """Unit vector from the object towards the camera; azimuth 0 = the front (-Y), positive to the right."""
    az, el = math.radians(azimuth), math.radians(elevation)
    return Vector((math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)))


def _camera(scene: bpy.types.Scene, centre: Vector, radius: float) -> bpy.types.Object:
    data = bpy.data.cameras.new("preview camera")
    data.lens_unit = "FOV"
    data.angle = math.radians(30.0)
    camera = bpy.data.objects.new("preview camera", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    data.clip_start, data.clip_end = radius * 0.05, radius * 20.0
    return camera


def _sun(scene: bpy.types.Scene) -> bpy.types.Object:
    data = bpy.data.lights.new("preview sun", type="SUN")
    data.energy = 2.5
    data.angle = math.radians(10.0)
    sun = bpy.data.objects.new("preview sun", data)
    scene.collection.objects.link(sun)
    return sun


def _aim(obj: bpy.types.Object, position: Vector, target: Vector) -> None:
    obj.location = position
    obj.rotation_euler = (target - position).to_track_quat("-Z", "Y").to_euler()


def render(glb: Path, output: Path, views: list[str], size: int = 384, samples: int = 24,
           background: tuple[float, float, float] | None = None) -> Path:
    scene = _scene(samples, size, transparent=True)  # a background colour is laid under afterwards
    centre, radius = _import(glb)
    camera, sun = _camera(scene, centre, radius), _sun(scene)
    distance = radius / math.sin(math.radians(15.0)) * 1.05  # the bounding sphere fills the 30 degree view
    tiles = []
    with tempfile.TemporaryDirectory(prefix="render-preview-") as tmp:
        for index, name in enumerate(views):
            azimuth, elevation = VIEWS[name]
            toward = _direction(azimuth, elevation)
            _aim(camera, centre + toward * distance, centre)
            # The sun from above, over the camera's left shoulder: the lit side faces the viewer.
            _aim(sun, centre + _direction(azimuth - 35.0, 50.0) * distance, centre)
            scene.render.filepath = os.path.join(tmp, f"{index}.png")
            bpy.ops.render.render(write_still=True)
            image = bpy.data.images.load(scene.render.filepath)
            pixels = np.empty(size * size * 4, dtype=np.float32)
            image.pixels.foreach_get(pixels)
            tiles.append(pixels.reshape(size, size, 4))
            bpy.data.images.remove(image)
            print(f"rendered {name} ({index + 1}/{len(views)})", flush=True)
    strip = np.concatenate(tiles, axis=1)[::-1]  # Blender's pixel rows run bottom-up
    if background is not None:
        alpha = strip[..., 3:4]
        strip = np.concatenate([strip[..., :3] * alpha + np.array(background) * (1 - alpha),
                                np.ones_like(alpha)], axis=-1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(_png(np.round(np.clip(strip, 0.0, 1.0) * 255).astype(np.uint8)))
    return output


def _png(rgba: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG, compressed as far as zlib goes (the previews live in git)."""
    height, width = rgba.shape[:2]
    raw = b"".join(b"\x00" + rgba[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # `blender -b --python render_preview.py -- args` passes its own arguments first
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    args = _parse(argv)
    glb = Path(args.glb)
    if not glb.is_file():
        raise SystemExit(f"{glb}: no such file")
    background = None
    if args.background:
        background = tuple(float(v) for v in args.background.split(","))
        if len(background) != 3:
            raise SystemExit("--background needs R,G,B")
    path = render(glb, Path(args.output), args.views, args.size, args.samples, background)
    print(f"wrote {path} ({len(args.views)} view(s), {args.size * len(args.views)}x{args.size} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
