"""PNG encoding: the banded, thread-pool encoder against the single-stream reference and Pillow's decoder."""
from __future__ import annotations

import io
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pipeline import png
from pipeline.png import adler32_combine, encode_png, encode_pngs


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 256 * 256 * 3).reshape(256, 256, 3).astype(np.uint8)
    return [
        smooth,  # RGB, many bands
        rng.integers(0, 256, (64, 48, 4), dtype=np.uint8),  # RGBA
        rng.integers(0, 4, (128, 128), dtype=np.uint8),  # greyscale
        np.full((96, 96, 1), 204, np.uint8),  # a uniform one-channel map, as roughness
        np.zeros((1, 1, 3), np.uint8),
    ]


def _as_decoded(image: np.ndarray) -> np.ndarray:  # Pillow decodes a one-channel PNG as [H, W]
    return image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image


def _stream(data: bytes) -> bytes:  # the decompressed filtered stream of all IDAT chunks
    idat, at = b"", 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        if data[at + 4 : at + 8] == b"IDAT":
            idat += data[at + 8 : at + 8 + length]
        at += 12 + length
    return zlib.decompress(idat)


@pytest.mark.parametrize("band_bytes", [1000, 50_000, png.BAND_BYTES])
def test_bands_decode_to_the_image_and_the_reference_stream(
    monkeypatch: pytest.MonkeyPatch, band_bytes: int
) -> None:
    """Small bands make many per image (the 256 x 256 RGB one: band primers cut to the 32 KiB window)."""
    monkeypatch.setattr(png, "BAND_BYTES", band_bytes)
    images = _images()
    with ThreadPoolExecutor(4) as pool:
        encoded = list(encode_pngs(images, pool, level=4))
    for image, data in zip(images, encoded):
        reference = encode_png(image, level=4)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), _as_decoded(image))
        assert _stream(data) == _stream(reference)
        # priming keeps banding's cost to each band's chunk header, sync marker and Huffman tables
        bands = data.count(b"IDAT") - 1
        assert len(data) <= len(reference) * 1.01 + 64 * bands


def test_bytes_do_not_depend_on_the_pool_size() -> None:
    images = _images()
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(8) as eight:
        assert list(encode_pngs(images, one, level=6)) == list(encode_pngs(images, eight, level=6))


def test_reference_decodes_with_pillow() -> None:
    for image in _images():
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(image, level=9))))
        assert np.array_equal(decoded, _as_decoded(image))


def test_adler32_combine_is_zlibs() -> None:
    first, second = b"texture " * 1000, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_bad_images_are_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        encode_png(image, level=4)
