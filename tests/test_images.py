"""pipeline/images.py: decoding hostile and unusual pictures and masks."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InputError
from pipeline.images import decode_image, decode_mask, sniff_format
from tests.helpers import example_bytes

MAX = 40_000_000


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header declares width x height (its pixel data is far too short)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _decode(data: bytes, field: str = "image_base64", max_pixels: int = MAX):
    return decode_image(data, field=field, name="front", max_pixels=max_pixels)


def _refused(data: bytes, field: str = "image_base64", max_pixels: int = MAX) -> InputError:
    with pytest.raises(InputError) as info:
        _decode(data, field, max_pixels)
    assert info.value.field == field
    return info.value


# --- refused -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "web page"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "GIF"),
        (b"%PDF-1.7 not a picture at all", ""),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", ""),
    ],
)
def test_not_an_image(data: bytes, hint: str) -> None:
    err = _refused(data, "views.left.url")
    assert "not a PNG, JPEG or WebP image" in err.reason and hint in err.reason


def test_empty_bytes() -> None:
    assert "is empty" in _refused(b"").reason


@pytest.mark.parametrize("name", ["lantern.png", "chair_wood.jpg"])
def test_truncated_file(name: str) -> None:
    data = example_bytes(name)
    err = _refused(data[: len(data) // 2], "image_url")
    assert "truncated or corrupt" in err.reason


def test_corrupt_png_chunk() -> None:
    data = bytearray(example_bytes("extinguisher.png"))
    data[200:260] = b"\xff" * 60  # inside the compressed pixel data
    assert "truncated or corrupt" in _refused(bytes(data)).reason


def test_decompression_bomb_header() -> None:
    err = _refused(_png_claiming(50_000, 50_000), "image_url")
    assert "decompression bomb" in err.reason or "megapixels" in err.reason


def test_real_image_over_max_pixels() -> None:
    big = _encode(Image.new("1", (7000, 7000)), "PNG")  # 49 megapixels in a few kilobytes
    assert len(big) < 100_000
    err = _refused(big)
    assert "7000x7000" in err.reason and "limit is 40 megapixels" in err.reason


def test_max_pixels_is_checked_before_decoding() -> None:
    """The header alone decides: a PNG that claims too many pixels is refused even though its data is bogus."""
    err = _refused(_png_claiming(3000, 2000), max_pixels=5_000_000)
    assert "3000x2000" in err.reason


# --- decoded ---------------------------------------------------------------------------------------------


def test_png_with_alpha() -> None:
    data = example_bytes("lantern.png")
    source = _decode(data)
    assert source.format == "PNG" and source.mask_source == "alpha"
    assert source.rgba.shape == (719, 719, 4) and source.rgba.dtype == np.uint8
    assert source.sha256 == hashlib.sha256(data).hexdigest() and source.bytes == len(data)


def test_photo_has_no_mask() -> None:
    source = _decode(example_bytes("earphone.jpg"))
    assert source.format == "JPEG" and source.mask_source == "none"
    assert (source.width, source.height) == (370, 500) and (source.rgba[..., 3] == 255).all()


def test_opaque_rgba_has_no_mask() -> None:
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 200  # faint, not real transparency
    assert _decode(_encode(Image.fromarray(rgba), "PNG")).mask_source == "none"


def test_webp_lossless_round_trip() -> None:
    rgba = np.asarray(Image.open(io.BytesIO(example_bytes("extinguisher.png"))).convert("RGBA"))
    source = _decode(_encode(Image.fromarray(rgba), "WEBP", lossless=True, exact=True))
    assert source.format == "WEBP" and source.mask_source == "alpha"
    np.testing.assert_array_equal(source.rgba, rgba)


def test_palette_png_with_transparency() -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 5, 10))
    source = _decode(_encode(image, "PNG", transparency=0))
    assert source.mask_source == "alpha"
    assert (source.rgba[:, :5, 3] == 0).all() and (source.rgba[:, 5:] == [255, 0, 0, 255]).all()


def test_grey_alpha_png() -> None:
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0] = 90
    la[2:4, 2:4, 1] = 255
    source = _decode(_encode(Image.fromarray(la, "LA"), "PNG"))
    assert source.mask_source == "alpha"
    assert (source.rgba[2:4, 2:4] == [90, 90, 90, 255]).all() and source.rgba[0, 0, 3] == 0


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    grey16 = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)
    source = _decode(_encode(Image.fromarray(grey16), "PNG"))
    np.testing.assert_array_equal(source.rgba[0, :, 0], [0, 64, 128, 255])
    assert source.mask_source == "none"


def test_16_bit_rgba_png() -> None:
    """PIL reads 16-bit colour PNGs as 8-bit; the alpha must survive."""
    header = struct.pack(">IIBBBBB", 2, 1, 16, 6, 0, 0, 0)  # 2x1, 16-bit RGBA
    pixels = b"\0" + struct.pack(">8H", 65535, 0, 0, 65535, 0, 0, 65535, 0)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")
    source = _decode(data)
    np.testing.assert_array_equal(source.rgba[0], [[255, 0, 0, 255], [0, 0, 255, 0]])
    assert source.mask_source == "alpha"


def test_cmyk_jpeg() -> None:
    source = _decode(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b, a = source.rgba[8, 8].astype(int)
    assert r > 230 and g < 25 and b < 25 and a == 255


def test_exif_rotated_jpeg_comes_out_upright() -> None:
    upright = np.zeros((40, 80, 3), np.uint8)  # wide: red top half, blue bottom half
    upright[:20] = [255, 0, 0]
    upright[20:] = [0, 0, 255]
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # camera held sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    source = _decode(_encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert source.rgba.shape == (40, 80, 4)
    assert source.rgba[5, 40, 0] > 200 and source.rgba[5, 40, 2] < 50  # red on top
    assert source.rgba[35, 40, 2] > 200 and source.rgba[35, 40, 0] < 50  # blue below


def test_sniff_format() -> None:
    assert sniff_format(example_bytes("crate.png")) == "PNG"
    assert sniff_format(example_bytes("chair_wood.jpg")) == "JPEG"
    assert sniff_format(b"RIFF\0\0\0\0WEBPVP8L") == "WEBP"
    assert sniff_format(b"BM\0\0") is None


# --- masks -----------------------------------------------------------------------------------------------


def _disc(height: int = 48, width: int = 64) -> np.ndarray:  # [H, W] bool
    yy, xx = np.mgrid[:height, :width]
    return (yy - 20) ** 2 + (xx - 30) ** 2 < 15**2


def _mask_encodings(mask: np.ndarray) -> dict[str, bytes]:
    u8 = mask.astype(np.uint8)
    rgb_green = np.zeros(mask.shape + (3,), np.uint8)
    rgb_green[..., 1] = u8 * 255
    rgba_alpha = np.zeros(mask.shape + (4,), np.uint8)
    rgba_alpha[..., 3] = u8 * 255  # colour is black everywhere: only the alpha says where the object is
    palette = Image.fromarray(u8, "L").convert("P")
    return {
        "L 0/1": _encode(Image.fromarray(u8, "L"), "PNG"),
        "L 0/255": _encode(Image.fromarray(u8 * 255, "L"), "PNG"),
        "1-bit": _encode(Image.fromarray(mask), "PNG"),
        "RGB one channel": _encode(Image.fromarray(rgb_green), "PNG"),
        "RGB white": _encode(Image.fromarray(np.dstack([u8 * 255] * 3)), "PNG"),
        "RGBA alpha": _encode(Image.fromarray(rgba_alpha), "PNG"),
        "LA alpha": _encode(Image.fromarray(np.dstack([u8 * 0, u8 * 255]), "LA"), "PNG"),
        "16-bit": _encode(Image.fromarray(u8.astype(np.uint16) * 65535), "PNG"),
        "palette": _encode(palette, "PNG"),
        "WebP lossless": _encode(Image.fromarray(u8 * 255, "L"), "WEBP", lossless=True),
    }


@pytest.mark.parametrize("kind", list(_mask_encodings(_disc())))
def test_every_mask_format_gives_the_same_mask(kind: str) -> None:
    expected = _disc()
    data = _mask_encodings(expected)[kind]
    mask = decode_mask(data, field="mask_base64", size=(64, 48), max_pixels=MAX)
    assert mask.dtype == bool and mask.shape == (48, 64)
    np.testing.assert_array_equal(mask, expected)


def test_jpeg_mask_thresholds_at_half() -> None:
    expected = _disc()
    data = _encode(Image.fromarray(expected.astype(np.uint8) * 255, "L"), "JPEG", quality=90)
    mask = decode_mask(data, field="mask_url", size=(64, 48), max_pixels=MAX)
    assert np.mean(mask != expected) < 0.01


def test_mask_size_mismatch() -> None:
    data = _encode(Image.fromarray(np.pad(np.ones((10, 10), np.uint8) * 255, 5)), "PNG")
    with pytest.raises(InputError) as info:
        decode_mask(data, field="mask_url", size=(640, 480), max_pixels=MAX)
    assert info.value.field == "mask_url"
    assert "mask is 20x20 but the image is 640x480" in info.value.reason


@pytest.mark.parametrize(("value", "words"), [(0, "no object pixel"), (255, "every pixel")])
def test_empty_and_full_masks(value: int, words: str) -> None:
    data = _encode(Image.new("L", (64, 48), value), "PNG")
    with pytest.raises(InputError) as info:
        decode_mask(data, field="mask_base64", size=(64, 48), max_pixels=MAX)
    assert info.value.field == "mask_base64" and words in info.value.reason


def test_mask_that_is_not_an_image() -> None:
    with pytest.raises(InputError) as info:
        decode_mask(b"0101", field="mask_base64", size=(4, 1), max_pixels=MAX)
    assert info.value.field == "mask_base64" and "not a PNG" in info.value.reason
