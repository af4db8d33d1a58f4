"""Serving a local-storage bundle over HTTP, and pointing result URLs at it.

Local storage returns `file://` URLs, which only work on the worker's machine. The server answers with
`<base>/files/<key>` instead, so a client elsewhere (an artist's Blender) can fetch the bundle. meta.json on
disk keeps its `file://` URLs: it describes the bundle where it lies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse
from urllib.request import url2pathname

FILES_ROUTE = "/files"


def file_url_to_key(url: str, root: Path) -> str | None:
    """The storage key (path under `root`, '/'-separated) of a file:// URL, or None if it lies elsewhere."""
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(url2pathname(unquote(parsed.path))).resolve()
    root = root.resolve()
    if not path.is_relative_to(root):
        return None
    return path.relative_to(root).as_posix()


def rewrite_file_urls(value: Any, root: Path, base_url: str) -> Any:
    """Copy of a JSON value with every file:// URL under `root` replaced by its HTTP URL under `base_url`."""
    if isinstance(value, dict):
        return {k: rewrite_file_urls(v, root, base_url) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_file_urls(v, root, base_url) for v in value]
    if isinstance(value, str) and value.startswith("file:"):
        key = file_url_to_key(value, root)
        if key is not None:
            return f"{base_url.rstrip('/')}{FILES_ROUTE}/{quote(key)}"
    return value


def resolve_file(root: Path, key: str) -> Path | None:
    """The file a /files/<key> request names, or None when it is missing or outside `root`."""
    if any(ord(c) < 32 for c in key):  # NUL and other control characters name no file (and NUL would raise)
        return None
    root = root.resolve()
    try:
        path = (root / key).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
    except (OSError, ValueError):  # a name too long for the file system, ...
        return None
    # Partial writes (".<name>.*.part") are not part of a bundle yet.
    if path.name.startswith("."):
        return None
    return path
