"""Bytes -> pictures: the input image and its optional mask, decoded defensively.

Only PNG, JPEG and WebP are opened (sniffed from the magic bytes, never from a name or a content type), the
pixel count is checked from the header before any pixel is decoded, and every decoder failure becomes an
InputError that names the request field.
"""
from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import InputError
from pipeline.types import SourceImage

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


def sniff_format(data: bytes) -> str | None:
    """PNG / JPEG / WEBP from the magic bytes, or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _not_an_image(data: bytes) -> str:
    hint = ""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg", b"{")):
        hint = " (it looks like text: does the URL point at a web page or an API response instead of the file?)"
    elif head.startswith(b"gif8"):
        hint = " (it is a GIF)"
    return f"not a PNG, JPEG or WebP image{hint}"


def _open(data: bytes, *, field: str, max_pixels: int) -> tuple[Image.Image, str]:
    """Open, check the declared size, decode and apply EXIF orientation. Returns (image, format)."""
    if not data:
        raise InputError(field, "is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(field, _not_an_image(data))
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's warning; PIL's hard cap (2x its limit) still
            # raises DecompressionBombError, caught below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width * height > max_pixels:
            raise InputError(
                field,
                f"image is {width}x{height} ({width * height / 1e6:.1f} megapixels); the limit is "
                f"{max_pixels / 1e6:g} megapixels: send a smaller picture",
            )
        if width < 1 or height < 1:
            raise InputError(field, f"image has no pixels ({width}x{height})")
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise InputError(
            field, f"image declares far more pixels than the limit of {max_pixels / 1e6:g} megapixels "
            "(a decompression bomb?)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(field, f"the {fmt} file is truncated or corrupt ({exc})") from None
    return image, fmt


def _to_rgba8(image: Image.Image) -> np.ndarray:  # -> [H, W, 4] uint8
    """Any PNG/JPEG/WebP mode as 8-bit RGBA: 16-bit grey is scaled (PIL would clip it), palette and
    transparency keys become alpha, CMYK and LA go through PIL's converters."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(image).astype(np.float64)
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        alpha = np.full_like(grey8, 255)
        if "transparency" in image.info:  # a tRNS grey key on a 16-bit PNG
            alpha[np.asarray(image) == image.info["transparency"]] = 0
        return np.dstack([grey8, grey8, grey8, alpha])
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image.convert("RGBA"), dtype=np.uint8))


def decode_image(data: bytes, *, field: str, name: str, max_pixels: int) -> SourceImage:
    """Decode one input picture (PNG/JPEG/WebP) into upright 8-bit RGBA.

    mask_source is "alpha" when the alpha channel has real transparency (some pixel below half), else "none".
    """
    image, fmt = _open(data, field=field, max_pixels=max_pixels)
    rgba = _to_rgba8(image)
    height, width = rgba.shape[:2]
    return SourceImage(
        name=name,
        rgba=rgba,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        width=width,
        height=height,
        format=fmt,
        mask_source="alpha" if int(rgba[..., 3].min()) < 128 else "none",
    )


def _mask_values(image: Image.Image) -> np.ndarray:  # -> [H, W] float64 in [0, 1]
    """The mask's signal: alpha when it varies, else the brightest colour channel, scaled to [0, 1]."""
    if image.mode == "1":
        return np.asarray(image, dtype=np.float64)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
    else:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3]
        values = alpha if alpha.min() != alpha.max() else rgba[..., :3].max(axis=2)
        top = 255.0
    if values.max() <= 1.0:  # a 0/1 mask
        top = 1.0
    return values / top


def decode_mask(data: bytes, *, field: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Decode a mask into [H, W] bool (True = object). `size` is the image's (width, height) after EXIF
    orientation. Accepts 0/1, 0/255, 1-bit, greyscale, RGB (any channel lit counts) or an alpha channel;
    thresholds at half the range. Refuses a size mismatch, an empty and a full mask."""
    image, _ = _open(data, field=field, max_pixels=max_pixels)
    if image.size != tuple(size):
        raise InputError(
            field,
            f"mask is {image.size[0]}x{image.size[1]} but the image is {size[0]}x{size[1]}; they must match "
            "(after EXIF rotation)",
        )
    mask = _mask_values(image) >= 0.5
    if not mask.any():
        raise InputError(field, "mask marks no object pixel (it is all background)")
    if mask.all():
        raise InputError(field, "mask marks every pixel as object, so it separates nothing; leave it out instead")
    return mask
