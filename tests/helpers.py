"""Small shared helpers for tests: example pictures, requests, reading bundles."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example_bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def example_b64(name: str) -> str:
    return base64.b64encode(example_bytes(name)).decode()


def png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def fast_request(**overrides: object) -> dict:
    """A silhouette job small enough for CPU tests (a few seconds)."""
    request: dict = {
        "image_base64": example_b64("extinguisher.png"),
        "shape_model": "silhouette",
        "target_faces": 3000,
        "texture_size": 512,
    }
    request.update(overrides)
    return request


def file_url_path(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(unquote(parsed.path))


def read_local_json(url: str) -> dict:
    return json.loads(file_url_path(url).read_text())
