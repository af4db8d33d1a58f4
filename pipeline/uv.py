"""UV unwrapping with xatlas (in a child process the deadline can kill; the mesh in parts whose charts xatlas
computes in parallel) and the unwrap's quality figures for meta.json."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix, csgraph

from pipeline.context import StageContext
from pipeline.errors import StageError
from pipeline.types import MeshData

_POLL_SECONDS = 0.05
MIN_PART_FACES = 2_500  # 40k-face game mesh: up to 16 parts


def chart_padding(texture_size: int) -> int:
    """Texels between charts: enough that bilinear filtering and the first mip levels stay inside a chart."""
    return max(2, texture_size // 256)


def split_faces(vertices: np.ndarray, faces: np.ndarray, parts: int) -> list[np.ndarray]:
    """Face indices of `parts` spatially coherent groups of equal size (within one face): face centroids
    cut at the quantile along the longest axis of their box, recursively (a k-d split).

    Equal sizes because xatlas computes the charts of each mesh on its own thread, so the largest part
    sets the time; compact parts because every part boundary becomes a seam."""
    centroids = vertices[faces].mean(axis=1)

    def cut(ids: np.ndarray, count: int) -> list[np.ndarray]:
        if count == 1 or len(ids) <= 1:
            return [ids]
        points = centroids[ids]
        axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
        left_count = count // 2
        split = len(ids) * left_count // count
        order = np.argpartition(points[:, axis], split) if 0 < split < len(ids) else np.arange(len(ids))
        return cut(ids[order[:split]], left_count) + cut(ids[order[split:]], count - left_count)

    return [ids for ids in cut(np.arange(len(faces)), max(1, parts)) if len(ids)]


def atlas_uvs(
    vertices: np.ndarray,  # [V, 3] float32
    faces: np.ndarray,  # [F, 3] uint32
    texture_size: int,
    *,
    parts: int,
    chart_options: dict[str, float | int | bool] | None = None,
    pack_options: dict[str, float | int | bool] | None = None,
) -> dict[str, np.ndarray]:
    """The one uninterruptible xatlas call (runs in the child process): split the mesh into `parts`
    (`split_faces`), add each part as its own mesh of ONE atlas and generate it, then join the parts again.

    xatlas grows the charts of a connected mesh on one thread, at a cost that grows faster than the mesh
    (each face added re-fits and re-checks its whole chart; each step scans every chart's candidates), so
    the parts are computed in parallel and cost less in total; packing them into one atlas keeps one
    texture. parts=1 is the plain one-mesh call. The *_options dicts override xatlas.ChartOptions /
    PackOptions attributes (bench/unwrap_cpu.py sweeps them).

    Returns vmapping [V'] (original vertex), faces [F, 3] in the input's face order and uvs [V', 2]."""
    import xatlas

    groups = split_faces(vertices, faces, parts) if parts > 1 else [np.arange(len(faces))]
    atlas = xatlas.Atlas()
    used_vertices = []
    for ids in groups:
        used, local = np.unique(faces[ids], return_inverse=True)
        used_vertices.append(used)
        atlas.add_mesh(vertices[used], local.reshape(-1, 3).astype(np.uint32))
    chart = xatlas.ChartOptions()
    for name, value in (chart_options or {}).items():
        setattr(chart, name, value)
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = chart_padding(texture_size)
    pack.bilinear = True
    for name, value in (pack_options or {}).items():
        setattr(pack, name, value)
    atlas.generate(chart, pack)
    vmappings, uvs = [], []
    out_faces = np.empty((len(faces), 3), np.int64)
    offset = 0
    for index, (ids, used) in enumerate(zip(groups, used_vertices)):
        vmapping, part_faces, part_uvs = atlas[index]
        out_faces[ids] = part_faces.astype(np.int64) + offset
        vmappings.append(used[vmapping])
        uvs.append(part_uvs)
        offset += len(vmapping)
    return {
        "vmapping": np.concatenate(vmappings),
        "faces": out_faces,
        "uvs": np.concatenate(uvs),
    }


def _child_main(folder: Path) -> None:
    """Entry point of `python -m pipeline.uv FOLDER`: input.npz in, output.npz out."""
    with np.load(folder / "input.npz") as data:
        result = atlas_uvs(data["vertices"], data["faces"], int(data["texture_size"]), parts=int(data["parts"]))
    result["finished_at"] = np.array(time.time())  # wall clock: the parent times the unwrap from its start
    np.savez(folder / "partial.npz", **result)
    os.replace(folder / "partial.npz", folder / "output.npz")  # complete or absent, never half-written


class PendingUnwrap:
    """An unwrap running in a child process: started by `start_unwrap`, collected by `wait`, or stopped by
    `cancel`. The child works while the caller does other things (the texture stage paints meanwhile).

    A plain subprocess rather than multiprocessing: spawn/forkserver children re-import the parent's
    __main__ (the worker loads its models at import), and fork is unsafe with CUDA and torch threads."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, texture_size: int, parts: int) -> None:
        self.vertices = vertices
        self._tmp = tempfile.TemporaryDirectory(prefix="unwrap-")
        self._folder = Path(self._tmp.name)
        np.savez(self._folder / "input.npz", vertices=vertices, faces=faces, texture_size=np.array(texture_size),
                 parts=np.array(parts))
        package_root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._stderr = open(self._folder / "stderr.txt", "wb")  # a file, not a pipe: a chatty child never blocks
        self._started_at = time.time()
        self.seconds = 0.0  # the unwrap's own wall time, child start to result written (set by `wait`)
        self.parts = parts
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


def default_parts(face_count: int, cores: int | None = None) -> int:
    """One part per core (xatlas runs a thread per core, `atlas_uvs` one mesh per thread), but no part
    smaller than MIN_PART_FACES: below that the extra seams cost more than the time saved."""
    return max(1, min(cores or os.cpu_count() or 1, face_count // MIN_PART_FACES))


def start_unwrap(mesh: MeshData, *, texture_size: int, stage: str, parts: int | None = None) -> PendingUnwrap:
    """Start cutting the mesh into charts and packing them into a texture_size atlas, in a child process.

    parts: how many pieces xatlas computes charts for in parallel (`atlas_uvs`); None = `default_parts`,
    1 = the whole mesh in one piece (the reference)."""
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
    if len(faces) == 0:
        raise StageError("the mesh has no faces to unwrap", stage=stage)
    if faces.max() >= len(vertices):  # caught here: the parts would index past the vertex array
        raise StageError(
            f"UV unwrapping failed: Index out of range (vertex {faces.max()} of {len(vertices)})", stage=stage
        )
    return PendingUnwrap(vertices, faces, texture_size, default_parts(len(faces)) if parts is None else parts)


def unwrap(
    mesh: MeshData, *, ctx: StageContext, texture_size: int, parts: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut the mesh into charts and pack them into a texture_size atlas (`start_unwrap`, then wait).

    Returns (vertices [V', 3] float32, faces [F, 3] int32, uvs [V', 2] float32 in glTF convention,
    vmapping [V'] int64: the original vertex of each new vertex). Vertices are split along seams.
    """
    return start_unwrap(mesh, texture_size=texture_size, stage=ctx.stage, parts=parts).wait(ctx)


def face_charts(faces: np.ndarray) -> tuple[int, np.ndarray]:
    """(chart count, chart id [F] of each face) of an unwrapped mesh: faces joined through shared split
    vertices, since xatlas gives every chart its own copies of the vertices on its boundary."""
    faces = np.asarray(faces, dtype=np.int64)
    face_count, vertex_count = len(faces), int(faces.max()) + 1 if len(faces) else 0
    rows = np.repeat(np.arange(face_count), 3)
    graph = coo_matrix(
        (np.ones(rows.size, np.int8), (rows, face_count + faces.reshape(-1))),
        shape=(face_count + vertex_count,) * 2,
    )
    _, labels = csgraph.connected_components(graph, directed=False)
    ids, charts = np.unique(labels[:face_count], return_inverse=True)
    return len(ids), charts.reshape(-1)


def seam_edges(faces: np.ndarray, vmapping: np.ndarray) -> int:
    """Edges of the original mesh that the unwrap cut: those seen with more than one pair of split vertices."""
    faces = np.asarray(faces, dtype=np.int64)
    vmapping = np.asarray(vmapping, dtype=np.int64)
    split = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    split = np.unique(split[:, 0] * len(vmapping) + split[:, 1])
    original = np.sort(vmapping[np.stack([split // len(vmapping), split % len(vmapping)], axis=1)], axis=1)
    original = original[original[:, 0] != original[:, 1]]  # a degenerate face's collapsed edge is no seam
    _, counts = np.unique(original[:, 0] * (int(vmapping.max()) + 1) + original[:, 1], return_counts=True)
    return int((counts > 1).sum())


def uv_quality(
    faces: np.ndarray,
    uvs: np.ndarray,
    vmapping: np.ndarray,
    texture_size: int,
    *,
    covered: np.ndarray | None = None,
) -> dict[str, float | int]:
    """What meta.json reports about an unwrap (`unwrap`'s faces, uvs, vmapping):
    - charts: connected UV islands (`face_charts`);
    - coverage: fraction of the texture_size x texture_size texels whose centre lies inside a chart
      (the texels the painter fills; the rest is padding and dilation);
    - seam_edges: edges of the original mesh cut apart by the unwrap (`seam_edges`); each one is a place where
      texture filtering can show a crack.
    covered: the [S, S] bool mask of a UV raster the caller already made (the texture stage's texel_surface),
    which saves rasterising again here on the CPU (about 6 s for 40k faces at 2048² on 2 cores)."""
    if covered is None:
        # Imported here: the xatlas child process imports this module and should not pay torch's start-up.
        import torch

        from pipeline.render.raster import rasterize_uv

        covered = rasterize_uv(
            torch.as_tensor(np.asarray(uvs, dtype=np.float32)),
            torch.as_tensor(np.asarray(faces, dtype=np.int64)),
            texture_size,
        ).mask.numpy()
    if covered.shape != (texture_size, texture_size):
        raise ValueError(f"covered is {covered.shape}, not the {texture_size}² texture")
    return {
        "charts": face_charts(faces)[0],
        "coverage": round(float(np.mean(covered)), 4),
        "seam_edges": seam_edges(faces, vmapping),
    }


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
