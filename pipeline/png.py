"""PNG encoding of uint8 images: every row "Up"-filtered (PNG filter type 2), deflated with zlib.

Our own encoder rather than Pillow's: Pillow's PNG writer holds the GIL while it compresses (its ImageFile
encoder loop calls `encoder.encode`, which never releases it), so threads gain nothing. zlib releases the GIL,
so `encode_pngs` deflates horizontal bands of every image on a thread pool, pigz-style: each band is primed
with the 32 KiB before it and ends on a byte boundary (Z_SYNC_FLUSH), so the bands join into one zlib stream.
On the 2048^2 maps of a real job the fixed Up filter gives files 5 % smaller than Pillow's adaptive filters.
`encode_png` is the plain single-stream reference; both give the same filtered stream (tested).
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_BYTES = 1 << 21  # filtered bytes per band: a 2048^2 RGB map is 7 bands, so one map spreads over 7 cores
_WINDOW = 32 * 1024  # deflate's window: each band is primed with this much of the stream before it
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: greyscale, RGB, RGBA
_ADLER_BASE = 65521


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _rows(image: np.ndarray) -> np.ndarray:  # [H, W] | [H, W, 1|3|4] uint8 -> [H, W * C]
    if image.dtype != np.uint8:
        raise ValueError(f"cannot write a {image.dtype} image as PNG; images must be uint8")
    channels = 1 if image.ndim == 2 else image.shape[2] if image.ndim == 3 else 0
    if channels not in _COLOUR_TYPE or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"cannot write an image of shape {image.shape} as PNG")
    return np.ascontiguousarray(image).reshape(image.shape[0], -1)


def _header(image: np.ndarray) -> bytes:  # signature and IHDR: 8-bit, no interlace
    channels = 1 if image.ndim == 2 else image.shape[2]
    ihdr = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", ihdr)


def up_filtered(rows: np.ndarray, start: int, stop: int) -> bytes:  # rows: [H, B] -> rows start..stop filtered
    """Rows start..stop of the filtered stream: filter byte 2, then each byte minus the one above (mod 256)."""
    out = np.empty((stop - start, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    if start == 0:
        out[0, 1:] = rows[0]  # the row above the first is zeros
    first = max(start, 1)
    np.subtract(rows[first:stop], rows[first - 1 : stop - 1], out=out[first - start :, 1:])
    return out.tobytes()


def _zlib_header(level: int) -> bytes:  # CMF/FLG as zlib.compress writes them for this level
    return zlib.compress(b"", level)[:2]


def encode_png(image: np.ndarray, *, level: int) -> bytes:
    """PNG bytes of a uint8 greyscale, RGB or RGBA array: the whole filtered stream deflated at once."""
    rows = _rows(image)
    return _header(image) + _chunk(b"IDAT", zlib.compress(up_filtered(rows, 0, len(rows)), level)) + \
        _chunk(b"IEND", b"")


def _band(rows: np.ndarray, start: int, stop: int, level: int, last: bool) -> tuple[bytes, int, int]:
    """One band's IDAT chunk (raw deflate, primed with the stream before it), its Adler-32 and length."""
    data = up_filtered(rows, start, stop)
    if start:
        window_rows = -(-_WINDOW // (rows.shape[1] + 1))  # rows covering the window, rounded up
        primer = up_filtered(rows, max(0, start - window_rows), start)[-_WINDOW:]
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15, zdict=primer)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    deflated = compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
    return _chunk(b"IDAT", (b"" if start else _zlib_header(level)) + deflated), zlib.adler32(data), len(data)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """Adler-32 of a + b from adler32(a), adler32(b) and len(b), as zlib's adler32_combine."""
    low = ((first & 0xFFFF) + (second & 0xFFFF) - 1) % _ADLER_BASE
    high = ((first >> 16) + (second >> 16) + second_length * ((first & 0xFFFF) - 1)) % _ADLER_BASE
    return (high << 16) | low


def encode_pngs(images: Sequence[np.ndarray], pool: Executor, *, level: int) -> Iterator[bytes]:
    """PNG bytes of each image in order, each as soon as its bands are deflated. All bands of all images are
    queued on `pool` at once; the bands depend on the image size only, so the bytes do not depend on the
    pool's size. Closing the iterator early cancels the bands not started."""
    queued: list[tuple[bytes, list[Future[tuple[bytes, int, int]]]]] = []
    try:
        for image in images:
            rows = _rows(image)
            per_band = max(1, BAND_BYTES // (rows.shape[1] + 1))
            starts = range(0, len(rows), per_band)
            bands = [pool.submit(_band, rows, s, min(s + per_band, len(rows)), level, s + per_band >= len(rows))
                     for s in starts]
            queued.append((_header(image), bands))
        for header, bands in queued:
            parts, adler = [header], 1
            for band in bands:
                chunk, band_adler, length = band.result()
                parts.append(chunk)
                adler = adler32_combine(adler, band_adler, length)
            parts += [_chunk(b"IDAT", struct.pack(">I", adler)), _chunk(b"IEND", b"")]
            yield b"".join(parts)
    finally:
        for _, bands in queued:
            for band in bands:
                band.cancel()
