"""Shared output of the bench scripts: the markdown row for BENCHMARKS.md, the full JSON, optionally saved."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def publish(result: dict[str, Any], markdown: Callable[[dict[str, Any]], str], json_path: Path | None) -> None:
    print(markdown(result))
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if json_path is not None:
        json_path.write_text(text + "\n")
