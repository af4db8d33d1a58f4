"""Shared output of the bench scripts: the markdown row for BENCHMARKS.md, the full JSON, optionally saved."""
from __future__ import annotations

import argparse
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


def run_cli(
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    benchmark: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """The bench scripts' main: parse, run, print (and save with --json) the result."""
    args = parse_args(argv)
    result = benchmark(args)
    publish(result, markdown, args.json)
    return result
