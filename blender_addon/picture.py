"""The picture to send: bytes of a PNG / JPEG / WebP file, from disk or from an image open in Blender."""
from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import bpy

from .client import EndpointError

MAX_BYTES = 7 * 1024 * 1024  # base64 grows it by 4/3; RunPod's /run takes 10 MB bodies


def sniff_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def from_file(filepath: str) -> tuple[bytes, str]:
    """(bytes, name) of a picture file; `filepath` may be Blender-relative (//...)."""
    if not filepath:
        raise EndpointError("Pick a picture file first")
    path = Path(bpy.path.abspath(filepath))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EndpointError(f"Cannot read the picture {path}: {err.strerror or err}") from None
    if sniff_format(data) is None:
        raise EndpointError(f"{path.name} is not a PNG, JPEG or WebP picture")
    return _checked(data, path.name), path.stem


def from_image(image: bpy.types.Image | None) -> tuple[bytes, str]:
    """(bytes, name) of an image open in Blender: its packed or on-disk file when that is PNG / JPEG / WebP,
    else a PNG copy of its pixels (rendered, generated or painted images, EXR, ...)."""
    if image is None:
        raise EndpointError("Pick an image first")
    name = Path(image.name).stem if Path(image.name).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else image.name
    data = _original_bytes(image)
    if data is None or sniff_format(data) is None or image.is_dirty:
        data = _png_copy(image)
    return _checked(data, image.name), name


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _original_bytes(image: bpy.types.Image) -> bytes | None:
    if image.packed_file is not None:
        return bytes(image.packed_file.data)
    if image.source == "FILE" and image.filepath:
        try:
            return Path(bpy.path.abspath(image.filepath, library=image.library)).read_bytes()
        except OSError:
            return None
    return None


def _png_copy(image: bpy.types.Image) -> bytes:
    if not image.has_data and image.size[0] == 0:
        raise EndpointError(f"The image {image.name!r} has no pixels to send")
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    copy = image.copy()
    try:
        copy.file_format = "PNG"
        copy.save(filepath=tmp)
        return Path(tmp).read_bytes()
    except RuntimeError as err:
        raise EndpointError(f"Cannot save the image {image.name!r} as PNG: {err}") from None
    finally:
        bpy.data.images.remove(copy)
        Path(tmp).unlink(missing_ok=True)


def _checked(data: bytes, label: str) -> bytes:
    if len(data) > MAX_BYTES:
        raise EndpointError(f"{label} is {len(data) / 2**20:.1f} MB; RunPod accepts about "
                            f"{MAX_BYTES / 2**20:.0f} MB: send a smaller picture")
    return data
