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
    result["finished_at"] = np.array(time.time())  # wall clock: the parent times the unwrap from its start
    np.savez(folder / "partial.npz", **result)
    os.replace(folder / "partial.npz", folder / "output.npz")  # complete or absent, never half-written


class PendingUnwrap:
    """An unwrap running in a child process: started by `start_unwrap`, collected by `wait`, or stopped by
    `cancel`. The child works while the caller does other things (the texture stage paints meanwhile).

    A plain subprocess rather than multiprocessing: spawn/forkserver children re-import the parent's
    __main__ (the worker loads its models at import), and fork is unsafe with CUDA and torch threads."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, texture_size: int) -> None:
        self.vertices = vertices
        self._tmp = tempfile.TemporaryDirectory(prefix="unwrap-")
        self._folder = Path(self._tmp.name)
        np.savez(self._folder / "input.npz", vertices=vertices, faces=faces, texture_size=np.array(texture_size))
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._stderr = open(self._folder / "stderr.txt", "wb")  # a file, not a pipe: a chatty child never blocks
        self._started_at = time.time()
        self.seconds = 0.0  # the unwrap's own wall time, child start to result written (set by `wait`)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.uv", str(self._folder)], env=env, stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait(self, ctx: StageContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The unwrap's result (see `unwrap`); kills the child as soon as ctx.check() raises."""
        try:
            while self._process.poll() is None:
                ctx.check()
                time.sleep(_POLL_SECONDS)
            output = self._folder / "output.npz"
            if self._process.returncode != 0 or not output.exists():
                self._stderr.flush()
                lines = (self._folder / "stderr.txt").read_text(errors="replace").strip().splitlines()
                reason = lines[-1:] or [f"exit code {self._process.returncode}"]
                raise StageError(f"UV unwrapping failed: {reason[0]}", stage=ctx.stage)
            with np.load(output) as data:
                result = {name: data[name] for name in data.files}
            self.seconds = round(float(result["finished_at"]) - self._started_at, 3)
        finally:
            self.cancel()
        vmapping = result["vmapping"].astype(np.int64)
        return (
            self.vertices[vmapping],
            result["faces"].astype(np.int32),
            result["uvs"].astype(np.float32),  # xatlas: (0, 0) is the first texel row, as glTF reads images
            vmapping,
        )

    def cancel(self) -> None:
        """Kill the child if it still runs and remove its files (safe to call more than once)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._stderr.close()
        self._tmp.cleanup()


def start_unwrap(mesh: MeshData, *, texture_size: int, stage: str) -> PendingUnwrap:
    """Start cutting the mesh into charts and packing them into a texture_size atlas, in a child process."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    if len(faces) == 0:
        raise StageError("the mesh has no faces to unwrap", stage=stage)
    return PendingUnwrap(vertices, faces, texture_size)


def unwrap(
    mesh: MeshData, *, ctx: StageContext, texture_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the mesh into charts and pack them into a texture_size atlas.

    Returns (vertices [V', 3] float32, faces [F, 3] int32, uvs [V', 2] float32 in glTF convention,
    vmapping [V'] int64: the original vertex of each new vertex). Vertices are split along seams.
    """
    return start_unwrap(mesh, texture_size=texture_size, stage=ctx.stage).wait(ctx)


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
