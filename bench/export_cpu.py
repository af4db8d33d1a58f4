"""Benchmark: the export stage (PNG encoding + GLB) on a real job's texture maps.

    .venv/bin/python bench/export_cpu.py [--texture-size 2048] [--views 7] [--repeat 3] [--cache maps.npz]

The maps come from the CPU job (silhouette + projection) on examples/extinguisher.png: albedo, baked normal
map and AO, uniform roughness/metallic, ORM (about a minute at 2048; --cache keeps them in an .npz for the next
run). The views are the prepared front view and --views - 1 flipped/rotated copies of it, standing in for a
paint job's generated views (a paint job at 2048 writes 14 files: 6 maps, the GLB and 7 views).

Prints, best of --repeat:
- the export as it was (Pillow's PNG writer at level 6, one image after another, then the GLB) and as it is
  (export_bundle: pipeline.png's encoder on a thread pool), at one thread and at ENCODE_THREADS;
- seconds and bytes of every zlib level, each image encoded alone in one stream, and Pillow's level 6.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import export, png  # noqa: E402
from pipeline.context import Deadline, StageContext  # noqa: E402
from pipeline.types import PreparedView, TexturedMesh, ViewSet  # noqa: E402

PICTURE = "extinguisher.png"


def _job_maps(texture_size: int) -> tuple[TexturedMesh, np.ndarray]:  # (textured mesh, front view RGBA)
    from handler import build_services
    from pipeline.mesh import run_mesh_stage
    from pipeline.multiview import gather_inputs, prepare_views
    from pipeline.request import parse_request
    from pipeline.texture import run_texture_stage
    from utils.settings import Settings

    with tempfile.TemporaryDirectory() as out:
        services = build_services(
            Settings.from_env({"STORAGE": "local", "LOCAL_OUTPUT_DIR": out, "PRELOAD_MODELS": "", "MAX_SECONDS": "900"})
        )
        data = base64.b64encode((REPO / "examples" / PICTURE).read_bytes()).decode()
        request = parse_request({"image_base64": data, "shape_model": "silhouette", "texture_size": texture_size})
        ctx = StageContext("bench", Deadline(900))
        views = prepare_views(request, gather_inputs(request, services.fetcher), ctx,
                              max_pixels=services.settings.max_image_pixels, models=services.models)
        mesh = run_mesh_stage(request, views, ctx, services.models)
        textured = run_texture_stage(request, views, mesh, ctx, device="cpu", models=services.models)
    textured.info.pop("generated_views", None)
    return textured, views.views["front"].rgba


def _load(args: argparse.Namespace) -> tuple[TexturedMesh, np.ndarray]:
    fields = ("vertices", "faces", "uvs", "normals", "tangents")
    if args.cache is not None and args.cache.exists():
        saved = np.load(args.cache)
        maps = {key.removeprefix("map_"): saved[key] for key in saved.files if key.startswith("map_")}
        textured = TexturedMesh(*(saved[f] for f in fields), maps, float(saved["roughness"]), float(saved["metallic"]))
        return textured, saved["front"]
    textured, front = _job_maps(args.texture_size)
    if args.cache is not None:
        np.savez_compressed(args.cache, front=front, roughness=textured.roughness, metallic=textured.metallic,
                            **{f: getattr(textured, f) for f in fields},
                            **{f"map_{name}": image for name, image in textured.maps.items()})
    return textured, front


def _views(front: np.ndarray, count: int) -> ViewSet:
    views = {"front": PreparedView(name="front", rgba=front, source="input", azimuth=0.0)}
    for k in range(1, count):
        rgba = np.ascontiguousarray(np.rot90(front, k) if k < 4 else np.flip(np.rot90(front, k), 1))
        name = f"stand_in_{k}"
        views[name] = PreparedView(name=name, rgba=rgba, source="generated", azimuth=0.0)
    return ViewSet(views=views, sources=[])


def _pillow(image: np.ndarray, level: int) -> bytes:  # the export's encoder before pipeline.png
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False, compress_level=level)
    return buf.getvalue()


def _best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texture-size", type=int, default=2048)
    parser.add_argument("--views", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None, help="an .npz of the maps: read if there, else written")
    args = parser.parse_args()

    textured, front = _load(args)
    views = _views(front, args.views)
    maps = {name: export.bundle_map(name, textured.maps[name]) for name in export.MAP_NAMES if name in textured.maps}
    images = [*maps.values(), *(view.rgba for view in views.views.values())]
    ctx = StageContext("export", Deadline(900))
    print(f"{PICTURE}, texture {args.texture_size}: {len(maps)} maps, the GLB, {len(views.views)} views of "
          f"{front.shape[0]}^2; {os.cpu_count()} CPUs; best of {args.repeat}")

    with tempfile.TemporaryDirectory() as tmp:
        def before() -> None:  # export_bundle as it was: one Pillow encode after another, the GLB embedding them
            encoded = {name: _pillow(image, 6) for name, image in maps.items()}
            for name, data in encoded.items():
                (Path(tmp) / f"{name}.png").write_bytes(data)
            export.write_glb(textured, Path(tmp) / "model.glb", encoded=encoded)
            for name, view in views.views.items():
                (Path(tmp) / f"{name}.png").write_bytes(_pillow(view.rgba, 6))

        def after(threads: int, level: int) -> Callable[[], object]:
            def run() -> object:
                export.ENCODE_THREADS, export.PNG_COMPRESS_LEVEL = threads, level
                return export.export_bundle(textured, views, Path(tmp) / "bundle", ctx=ctx)
            return run

        threads, level = export.ENCODE_THREADS, export.PNG_COMPRESS_LEVEL
        rows = [("before: Pillow level 6, sequential", _best(args.repeat, before))]
        for t, lv in ((1, 6), (threads, 6), (1, level), (threads, level)):
            rows.append((f"export_bundle: level {lv}, {t} thread(s)", _best(args.repeat, after(t, lv))))
        export.ENCODE_THREADS, export.PNG_COMPRESS_LEVEL = threads, level
        total = sum(f.bytes for f in export.export_bundle(textured, views, Path(tmp) / "bundle", ctx=ctx))
    print(f"\n{'export (maps + GLB + views)':<42}{'seconds':>9}")
    for label, seconds in rows:
        print(f"{label:<42}{seconds:>9.3f}")
    print(f"bundle at level {level}: {total / 1e6:.2f} MB")

    print(f"\n{'encoder, every image alone, one stream':<42}{'seconds':>9}{'MB':>8}{'albedo s':>10}{'albedo MB':>11}")
    for lv in range(1, 10):
        seconds = [_best(args.repeat, lambda im=image: png.encode_png(im, level=lv)) for image in images]
        sizes = [len(png.encode_png(image, level=lv)) for image in images]
        print(f"{'pipeline.png level ' + str(lv):<42}{sum(seconds):>9.3f}{sum(sizes) / 1e6:>8.2f}"
              f"{seconds[0]:>10.3f}{sizes[0] / 1e6:>11.2f}")
    seconds = [_best(args.repeat, lambda im=image: _pillow(im, 6)) for image in images]
    sizes = [len(_pillow(image, 6)) for image in images]
    print(f"{'Pillow level 6 (before)':<42}{sum(seconds):>9.3f}{sum(sizes) / 1e6:>8.2f}"
          f"{seconds[0]:>10.3f}{sizes[0] / 1e6:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
