"""Checks every test runs on the GLBs it makes: Khronos glTF-Validator and a headless Blender import.

Both run in subprocesses (node; the Blender venv's Python) so each test process stays clean. A missing tool
FAILS the test with the command that installs it: these checks are never skipped silently.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent / "tools"
VALIDATOR_SCRIPT = TOOLS / "validate_gltf.mjs"
BLENDER_SCRIPT = TOOLS / "blender_import.py"

NPM_INSTALL = "npm ci --prefix tests/tools --no-audit --no-fund"
BLENDER_SETUP = "python3.11 -m venv .venv-blender && .venv-blender/bin/pip install bpy==5.0.1"

SEVERITY_ERROR, SEVERITY_WARNING = 0, 1


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node (Node.js >= 18) is not on PATH; install it, then run `{NPM_INSTALL}` in the repo root")
    if not (TOOLS / "node_modules" / "gltf-validator").is_dir():
        pytest.fail(f"the npm package gltf-validator is not installed; run `{NPM_INSTALL}` in the repo root")
    return node


def validate_gltf(path: Path | str, *, timeout: float = 120.0) -> dict[str, Any]:
    """Run glTF-Validator on `path`, assert it reports 0 errors, and return its full JSON report.

    report["issues"]["numWarnings"] and gltf_issues(report, SEVERITY_WARNING) let tests assert on warnings.
    """
    proc = subprocess.run(
        [_node(), str(VALIDATOR_SCRIPT), str(path)], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"glTF-Validator could not run on {path}: {proc.stderr.strip() or proc.stdout.strip()}")
    report: dict[str, Any] = json.loads(proc.stdout)
    errors = gltf_issues(report, SEVERITY_ERROR)
    assert report["issues"]["numErrors"] == 0, f"glTF-Validator errors in {path}: {json.dumps(errors, indent=1)}"
    return report


def gltf_issues(report: dict[str, Any], severity: int) -> list[dict[str, Any]]:
    """Messages of one severity (0 error, 1 warning, 2 info, 3 hint) from a validator report."""
    return [m for m in report["issues"]["messages"] if m["severity"] == severity]


def blender_python() -> Path:
    """The Python of the Blender venv: $BLENDER_PYTHON, else <repo>/.venv-blender/bin/python."""
    path = Path(os.environ.get("BLENDER_PYTHON") or REPO / ".venv-blender" / "bin" / "python")
    if not path.exists():
        pytest.fail(
            f"no Blender Python at {path} (set BLENDER_PYTHON); set it up with `{BLENDER_SETUP}` in the repo root"
        )
    return path


def check_blender_import(path: Path | str, *, timeout: float = 180.0) -> dict[str, Any]:
    """Import `path` in headless Blender (bpy, subprocess) and describe the first mesh object's material.

    Returns {"vertices", "faces", "objects", "material", "base_color", "roughness", "metallic", "normal"} where
    each of the last four is the Principled BSDF input: {"linked": bool, "chain": [upstream nodes] or "value"},
    plus booleans saying whether each is linked the way a glTF metal/rough material should be:
      base_color_linked  Base Color <- Image Texture
      roughness_linked   Roughness  <- Separate Color (Green) <- Image Texture (the ORM)
      metallic_linked    Metallic   <- Separate Color (Blue)  <- Image Texture (the ORM)
      normal_linked      Normal     <- Normal Map <- Image Texture
    """
    python = blender_python()
    with tempfile.TemporaryDirectory(prefix="blender-import-") as tmp:
        out = Path(tmp) / "report.json"
        proc = subprocess.run(
            [str(python), str(BLENDER_SCRIPT), str(path), str(out)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            pytest.fail(f"Blender could not import {path} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        raw = json.loads(out.read_text(encoding="utf-8"))
    assert raw["import_result"] == ["FINISHED"], f"Blender's glTF import did not finish: {raw['import_result']}"
    meshes = raw["objects"]
    assert meshes, f"Blender imported no mesh object from {path}"
    first = meshes[0]
    assert first["materials"] and first["materials"][0]["principled"], f"{path}: no Principled BSDF material"
    inputs = first["materials"][0]["inputs"]
    return {
        "objects": len(meshes),
        "vertices": first["vertices"],
        "faces": first["faces"],
        "material": first["materials"][0]["name"],
        "base_color": inputs["Base Color"],
        "roughness": inputs["Roughness"],
        "metallic": inputs["Metallic"],
        "normal": inputs["Normal"],
        "base_color_linked": _wired(inputs["Base Color"], [("TEX_IMAGE", "Color")]),
        "roughness_linked": _wired(inputs["Roughness"], [("SEPARATE_COLOR", "Green"), ("TEX_IMAGE", "Color")]),
        "metallic_linked": _wired(inputs["Metallic"], [("SEPARATE_COLOR", "Blue"), ("TEX_IMAGE", "Color")]),
        "normal_linked": _wired(inputs["Normal"], [("NORMAL_MAP", "Normal"), ("TEX_IMAGE", "Color")]),
        "blender": raw["blender"],
    }


def _wired(described: dict[str, Any], expected: list[tuple[str, str]]) -> bool:
    """True when the input's upstream chain starts with `expected` (node type, output socket) pairs."""
    if not described["linked"]:
        return False
    chain = [(n["type"], n["output"]) for n in described["chain"]]
    return chain[: len(expected)] == expected
