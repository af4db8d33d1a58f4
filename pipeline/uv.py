"""UV unwrapping with xatlas (in a child process the deadline can kill) and texel dilation."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.context import StageContext
from pipeline.errors import StageError
from pipeline.types import MeshData

_POLL_SECONDS = 0.05


def chart_padding(texture_size: int) -> int:
    """Texels between charts: enough that bilinear filtering and the first mip levels stay inside a chart."""
    return max(2, texture_size // 256)


def _xatlas(vertices: np.ndarray, faces: np.ndarray, texture_size: int) -> dict[str, np.ndarray]:
    """The one uninterruptible xatlas call (runs in the child process)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices, faces)
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = chart_padding(texture_size)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    return {"vmapping": vmapping, "faces": indices, "uvs": uvs}


def _child_main(folder: Path) -> None:
    """Entry point of `python -m pipeline.uv FOLDER`: input.npz in, output.npz out."""
    with np.load(folder / "input.npz") as data:
        result = _xatlas(data["vertices"], data["faces"], int(data["texture_size"]))
    np.savez(folder / "partial.npz", **result)
    os.replace(folder / "partial.npz", folder / "output.npz")  # complete or absent, never half-written


def _run_child(vertices: np.ndarray, faces: np.ndarray, texture_size: int, ctx: StageContext) -> dict[str, np.ndarray]:
    """Run xatlas in a fresh interpreter and wait for it, killing it as soon as ctx.check() raises.

    A plain subprocess rather than multiprocessing: spawn/forkserver children re-import the parent's
    __main__ (the worker loads its models at import), and fork is unsafe with CUDA and torch threads."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="unwrap-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "input.npz", vertices=vertices, faces=faces, texture_size=np.array(texture_size))
        with open(folder / "stderr.txt", "wb") as stderr:  # a file, not a pipe: a chatty child never blocks
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.uv", str(folder)], env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
            try:
                while process.poll() is None:
                    ctx.check()
                    time.sleep(_POLL_SECONDS)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
        output = folder / "output.npz"
        if process.returncode != 0 or not output.exists():
            lines = (folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
            reason = lines[-1:] or [f"exit code {process.returncode}"]
            raise StageError(f"UV unwrapping failed: {reason[0]}", stage=ctx.stage)
        with np.load(output) as data:
            return {name: data[name] for name in data.files}


def unwrap(
    mesh: MeshData, *, ctx: StageContext, texture_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the mesh into charts and pack them into a texture_size atlas.

    Returns (vertices [V', 3] float32, faces [F, 3] int32, uvs [V', 2] float32 in glTF convention,
    vmapping [V'] int64: the original vertex of each new vertex). Vertices are split along seams.
    """
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    if len(faces) == 0:
        raise StageError("the mesh has no faces to unwrap", stage=ctx.stage)
    result = _run_child(vertices, faces, texture_size, ctx)
    vmapping = result["vmapping"].astype(np.int64)
    return (
        vertices[vmapping],
        result["faces"].astype(np.int32),
        result["uvs"].astype(np.float32),  # xatlas: (0, 0) is the first texel row, as glTF reads images
        vmapping,
    )


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
