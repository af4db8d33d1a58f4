"""The export stage: write the bundle files (GLB, texture maps, prepared views) into a local folder.

The GLB is glTF 2.0 with one mesh, one primitive and one metal/rough PBR material whose images are the same
PNG bytes as the files under textures/. meta.json is not written here: run_pipeline writes it last, after
upload (CONTRACT.md section 3).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pygltflib

import pipeline.png as png_codec
from pipeline import __version__
from pipeline.context import StageContext
from pipeline.errors import StageError
from pipeline.types import TexturedMesh, ViewSet, is_view_name

STAGE = "export"
GENERATOR = f"image-to-3d worker {__version__} (pygltflib {pygltflib.__version__})"

MAP_NAMES = ("albedo", "normal", "roughness", "metallic", "ao", "orm")
"""Texture maps in bundle order; each is written to textures/<name>.png when the texture stage made it."""
_MAP_CHANNELS = {"albedo": (3, 4), "normal": (3,), "roughness": (1,), "metallic": (1,), "ao": (1,), "orm": (3,)}

UNTEXTURED_BASE_COLOR = (0.8, 0.8, 0.8, 1.0)
"""Neutral light grey for texture=false meshes (linear factor)."""

GLB_CONTENT_TYPE = "model/gltf-binary"
PNG_CONTENT_TYPE = "image/png"
# zlib level, by bench/export_cpu.py on a real job's 2048 maps + 7 views (BENCHMARKS.md): level 4 takes 0.37 s
# of CPU against level 6's 1.05 s (2.8x) for 8 % more bytes (4.87 MB against 4.50 MB), 4.5 % over the Pillow
# level-6 files of before (4.66 MB, 1.48 s). Level 5 is only 2x faster than 6; levels 1-3 are 19-33 % larger.
# A uniform 2048 map (roughness, metallic) takes 12 ms.
PNG_COMPRESS_LEVEL = 4
ENCODE_THREADS = min(32, os.cpu_count() or 1)  # the encoders' thread pool; zlib releases the GIL

# glTF enums
_FLOAT, _UINT16, _UINT32 = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _REPEAT = 9729, 9987, 10497
_COMPONENT = {np.dtype(np.float32): _FLOAT, np.dtype(np.uint16): _UINT16, np.dtype(np.uint32): _UINT32}


@dataclass
class BundleFile:
    """One file of the bundle, written locally and ready for upload."""

    key: str  # relative to the job folder: "model.glb", "textures/albedo.png", "views/front.png"
    path: Path  # local file
    content_type: str
    bytes: int
    sha256: str
    info: dict[str, Any]  # mesh: vertices, faces, bbox, material; images: width, height, channels, colorspace


# ---------------------------------------------------------------- images


def encode_png(image: np.ndarray) -> bytes:  # image: [H, W] | [H, W, 1|3|4] uint8
    """PNG bytes of a uint8 greyscale, RGB or RGBA array (in one stream; export_bundle encodes in parallel)."""
    try:
        return png_codec.encode_png(image, level=PNG_COMPRESS_LEVEL)
    except ValueError as err:
        raise StageError(str(err), stage=STAGE) from err


def bundle_map(name: str, image: np.ndarray) -> np.ndarray:  # image: [S, S(, C)] uint8
    """The map as it goes into the bundle: checked, greyscale maps 2-D, albedo without alpha (RGB)."""
    if name not in _MAP_CHANNELS:
        raise StageError(f"unknown texture map {name!r}; known maps: {', '.join(MAP_NAMES)}", stage=STAGE)
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else -1
    if image.dtype != np.uint8 or channels not in _MAP_CHANNELS[name] or image.shape[0] != image.shape[1]:
        raise StageError(
            f"texture map {name!r} must be a square uint8 image with {_MAP_CHANNELS[name]} channel(s), "
            f"got {image.dtype} {image.shape}",
            stage=STAGE,
        )
    if name == "albedo":
        return image[..., :3]
    return image.reshape(image.shape[:2]) if channels == 1 else image


def _image_info(image: np.ndarray, colorspace: str) -> dict[str, Any]:  # image: [H, W(, C)]
    return {
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "channels": 1 if image.ndim == 2 else int(image.shape[2]),
        "colorspace": colorspace,
    }


# ---------------------------------------------------------------- material


def material_summary(textured: TexturedMesh) -> dict[str, Any]:
    """The glTF material the GLB gets: factors and which maps it links.

    glTF's default metallicFactor is 1.0 (fully metallic), so both factors are always written. With an ORM
    map the factors are 1.0 so the map's values count; without one they carry the uniform values.
    """
    has_orm = "orm" in textured.maps
    has_albedo = "albedo" in textured.maps
    return {
        "base_color_factor": [1.0, 1.0, 1.0, 1.0] if has_albedo else list(UNTEXTURED_BASE_COLOR),
        "metallic_factor": 1.0 if has_orm else float(textured.metallic),
        "roughness_factor": 1.0 if has_orm else float(textured.roughness),
        "base_color_texture": "albedo" if has_albedo else None,
        "metallic_roughness_texture": "orm" if has_orm else None,
        # Occlusion is linked only when AO was computed: an all-white R channel would claim a bake that never ran.
        "occlusion_texture": "orm" if has_orm and "ao" in textured.maps else None,
        "normal_texture": "normal" if "normal" in textured.maps else None,
    }


# ---------------------------------------------------------------- GLB


class _BinaryBuilder:
    """Accumulates the GLB binary chunk; every buffer view starts on a 4-byte boundary."""

    def __init__(self, gltf: pygltflib.GLTF2) -> None:
        self.gltf = gltf
        self.chunks: list[bytes] = []
        self.length = 0

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.length) % 4
        if pad:
            self.chunks.append(b"\0" * pad)
            self.length += pad
        self.gltf.bufferViews.append(
            pygltflib.BufferView(buffer=0, byteOffset=self.length, byteLength=len(data), target=target)
        )
        self.chunks.append(data)
        self.length += len(data)
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, *, target: int, bounds: bool = False) -> int:
        component = _COMPONENT[array.dtype]
        view = self.view(np.ascontiguousarray(array).tobytes(), target)
        flat = array.reshape(len(array), -1)
        self.gltf.accessors.append(
            pygltflib.Accessor(
                bufferView=view,
                componentType=component,
                count=int(len(array)),
                type=kind,
                min=flat.min(0).tolist() if bounds else None,
                max=flat.max(0).tolist() if bounds else None,
            )
        )
        return len(self.gltf.accessors) - 1

    def blob(self) -> bytes:
        pad = (-self.length) % 4
        return b"".join(self.chunks) + b"\0" * pad


def _unit(vectors: np.ndarray, what: str) -> np.ndarray:  # vectors: [V, 3] -> [V, 3] float32
    """Re-normalise in float64 then cast, so glTF-Validator's unit-length check passes after float32 rounding."""
    v = vectors.astype(np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    bad = int((norm[:, 0] < 1e-8).sum()) + int((~np.isfinite(norm[:, 0])).sum())
    if bad:
        raise StageError(f"{bad} vertex {what} are zero or not finite; the mesh cannot be exported", stage=STAGE)
    return (v / norm).astype(np.float32)


def _check_geometry(textured: TexturedMesh) -> None:
    nv = len(textured.vertices)
    if textured.vertices.ndim != 2 or textured.vertices.shape[1] != 3 or nv == 0:
        raise StageError(f"mesh vertices must be [V, 3] with V > 0, got {textured.vertices.shape}", stage=STAGE)
    if textured.faces.ndim != 2 or textured.faces.shape[1] != 3 or len(textured.faces) == 0:
        raise StageError(f"mesh faces must be [F, 3] with F > 0, got {textured.faces.shape}", stage=STAGE)
    if textured.faces.min() < 0 or textured.faces.max() >= nv:
        raise StageError("mesh faces index vertices that do not exist", stage=STAGE)
    if not np.isfinite(textured.vertices).all():
        raise StageError("mesh vertices are not all finite", stage=STAGE)
    per_vertex = (("normals", textured.normals, 3), ("uvs", textured.uvs, 2), ("tangents", textured.tangents, 4))
    for name, array, width in per_vertex:
        if array is not None and array.shape != (nv, width):
            raise StageError(f"mesh {name} must be [{nv}, {width}], got {array.shape}", stage=STAGE)
    if textured.maps and textured.uvs is None:
        raise StageError(f"the mesh has texture maps ({', '.join(sorted(textured.maps))}) but no UVs", stage=STAGE)


def _add_primitive(builder: _BinaryBuilder, textured: TexturedMesh) -> pygltflib.Primitive:
    vertices = textured.vertices.astype(np.float32)
    # uint16 indices when they fit; 65535 is the primitive-restart value and may not be used.
    index_type = np.uint16 if len(vertices) < 65535 else np.uint32
    indices = builder.accessor(textured.faces.astype(index_type).reshape(-1), "SCALAR", target=_ELEMENT_ARRAY_BUFFER)
    attributes = pygltflib.Attributes(
        POSITION=builder.accessor(vertices, "VEC3", target=_ARRAY_BUFFER, bounds=True),
        NORMAL=builder.accessor(_unit(textured.normals, "normals"), "VEC3", target=_ARRAY_BUFFER),
    )
    if textured.uvs is not None:
        attributes.TEXCOORD_0 = builder.accessor(textured.uvs.astype(np.float32), "VEC2", target=_ARRAY_BUFFER)
    if textured.tangents is not None:
        xyz = _unit(textured.tangents[:, :3], "tangents")
        w = np.where(textured.tangents[:, 3:4] < 0, -1.0, 1.0).astype(np.float32)  # glTF: w is exactly +-1
        attributes.TANGENT = builder.accessor(np.concatenate([xyz, w], axis=1), "VEC4", target=_ARRAY_BUFFER)
    return pygltflib.Primitive(attributes=attributes, indices=indices, material=0, mode=pygltflib.TRIANGLES)


def _add_material(
    builder: _BinaryBuilder, textured: TexturedMesh, summary: dict[str, Any], encoded: Mapping[str, bytes]
) -> pygltflib.Material:
    gltf = builder.gltf
    texture_of: dict[str, int] = {}

    def texture(name: str) -> int:
        """One image + texture per map, shared when two slots use the same map (ORM)."""
        if name not in texture_of:
            png = encoded[name] if name in encoded else encode_png(bundle_map(name, textured.maps[name]))
            gltf.images.append(pygltflib.Image(name=name, mimeType=PNG_CONTENT_TYPE, bufferView=builder.view(png)))
            gltf.textures.append(pygltflib.Texture(name=name, sampler=0, source=len(gltf.images) - 1))
            texture_of[name] = len(gltf.textures) - 1
        return texture_of[name]

    pbr = pygltflib.PbrMetallicRoughness(
        baseColorFactor=summary["base_color_factor"],
        metallicFactor=summary["metallic_factor"],
        roughnessFactor=summary["roughness_factor"],
    )
    material = pygltflib.Material(name="material", pbrMetallicRoughness=pbr, doubleSided=False, alphaMode="OPAQUE")
    if summary["base_color_texture"] or summary["metallic_roughness_texture"] or summary["normal_texture"]:
        gltf.samplers.append(
            pygltflib.Sampler(magFilter=_LINEAR, minFilter=_LINEAR_MIPMAP_LINEAR, wrapS=_REPEAT, wrapT=_REPEAT)
        )
    if summary["base_color_texture"]:
        pbr.baseColorTexture = pygltflib.TextureInfo(index=texture(summary["base_color_texture"]))
    if summary["metallic_roughness_texture"]:
        pbr.metallicRoughnessTexture = pygltflib.TextureInfo(index=texture(summary["metallic_roughness_texture"]))
    if summary["occlusion_texture"]:
        material.occlusionTexture = pygltflib.OcclusionTextureInfo(index=texture(summary["occlusion_texture"]))
    if summary["normal_texture"]:
        material.normalTexture = pygltflib.NormalMaterialTexture(index=texture(summary["normal_texture"]))
    return material


def write_glb(textured: TexturedMesh, path: Path, *, encoded: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """Write `textured` as a GLB 2.0 file; return the mesh info (vertices, faces, bbox, material).

    encoded: PNG bytes per map name already made for textures/ (re-used so every map is encoded once).
    """
    _check_geometry(textured)
    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator=GENERATOR))
    builder = _BinaryBuilder(gltf)
    primitive = _add_primitive(builder, textured)
    summary = material_summary(textured)
    gltf.materials.append(_add_material(builder, textured, summary, encoded or {}))
    gltf.meshes.append(pygltflib.Mesh(name="object", primitives=[primitive]))
    gltf.nodes.append(pygltflib.Node(name="object", mesh=0))
    gltf.scenes.append(pygltflib.Scene(name="scene", nodes=[0]))
    gltf.scene = 0
    blob = builder.blob()
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(blob)))
    gltf.set_binary_blob(blob)
    gltf.save_binary(str(path))
    bounds = np.stack([textured.vertices.min(0), textured.vertices.max(0)]).astype(np.float64)
    return {
        "vertices": int(len(textured.vertices)),
        "faces": int(len(textured.faces)),
        "bbox": bounds.round(6).tolist(),
        "material": summary,
    }


# ---------------------------------------------------------------- bundle


def _record(key: str, path: Path, content_type: str, data: bytes, info: dict[str, Any]) -> BundleFile:
    digest = hashlib.sha256(data).hexdigest()
    return BundleFile(key=key, path=path, content_type=content_type, bytes=len(data), sha256=digest, info=info)


def _write_png(out_dir: Path, key: str, png: bytes, info: dict[str, Any]) -> BundleFile:
    path = out_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return _record(key, path, PNG_CONTENT_TYPE, png, info)


def export_bundle(textured: TexturedMesh, views: ViewSet, out_dir: Path, *, ctx: StageContext) -> list[BundleFile]:
    """Write model.glb, textures/<map>.png for every map the texture stage made, and views/<name>.png.

    Returns the files in upload order (model.glb first). meta.json is left to the caller.
    """
    ctx.check()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in MAP_NAMES if n in textured.maps]
    unknown = sorted(set(textured.maps) - set(MAP_NAMES))
    if unknown:
        raise StageError(f"unknown texture maps {unknown}; known maps: {', '.join(MAP_NAMES)}", stage=STAGE)
    for name, view in views.views.items():
        if not is_view_name(name):
            raise StageError(f"view name {name!r} is not a safe file name", stage=STAGE)
        if view.rgba.dtype != np.uint8 or view.rgba.ndim != 3 or view.rgba.shape[2] != 4:
            raise StageError(
                f"prepared view {name!r} must be uint8 RGBA [N, N, 4], got {view.rgba.dtype} {view.rgba.shape}",
                stage=STAGE,
            )
    maps = {name: bundle_map(name, textured.maps[name]) for name in names}
    steps = len(names) + 1 + len(views.views)
    done = 0

    # Every image is encoded once, all at the same time on the pool, maps first: the GLB embeds the maps'
    # bytes while the views are still being encoded. Files are written and reported in bundle order; a
    # report's deadline check that raises cancels the encodes not started.
    images = [*maps.values(), *(view.rgba for view in views.views.values())]
    with ThreadPoolExecutor(max_workers=ENCODE_THREADS, thread_name_prefix="png") as pool:
        pngs = png_codec.encode_pngs(images, pool, level=PNG_COMPRESS_LEVEL)
        try:
            textures: list[BundleFile] = []
            encoded: dict[str, bytes] = {}
            with ctx.timed("maps_png"):  # waiting for the maps' encodes, and writing them
                for name, image in maps.items():
                    encoded[name] = next(pngs)
                    info = _image_info(image, "sRGB" if name == "albedo" else "linear")
                    textures.append(_write_png(out_dir, f"textures/{name}.png", encoded[name], info))
                    done += 1
                    ctx.report(done / steps, f"wrote textures/{name}.png")

            with ctx.timed("glb"):
                glb_path = out_dir / "model.glb"
                mesh_info = write_glb(textured, glb_path, encoded=encoded)
                glb = _record("model.glb", glb_path, GLB_CONTENT_TYPE, glb_path.read_bytes(), mesh_info)
            done += 1
            ctx.report(done / steps, "wrote model.glb")

            view_files: list[BundleFile] = []
            with ctx.timed("views_png"):
                for name, view in views.views.items():
                    info = _image_info(view.rgba, "sRGB")
                    view_files.append(_write_png(out_dir, f"views/{name}.png", next(pngs), info))
                    done += 1
                    ctx.report(done / steps, f"wrote views/{name}.png")
        finally:
            pngs.close()
    return [glb, *textures, *view_files]
