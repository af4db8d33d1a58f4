"""The mesh stage for the Hunyuan3D-2 shape models: prepared view(s) -> dense and reduced meshes.

Frames. hy3dgen decodes its occupancy field on a grid built with `meshgrid(x, y, z, indexing="ij")`
and marching cubes returns vertices in that (x, y, z) order, so the mesh comes out in the model's own
frame without any axis shuffling (tests/test_shape_hunyuan.py checks the plumbing with a field that is
lopsided along +y). The model's frame is glTF's: Hunyuan3D-Paint renders the front view of a generated
mesh from +Z with +Y up (hy3dgen/texgen/differentiable_renderer: `set_mesh` maps (x, y, z) to
(-x, z, -y) in its Z-up renderer, whose azimuth-0 camera sits on that frame's +Y, i.e. the mesh's +Z,
with image-right along the mesh's +X and image-up along its +Y after the rasteriser's row flip). That
is our world frame (pipeline/types.py), so the orientation transform is the identity;
`front_view_similarity` then scales and centres the mesh so its X/Y silhouette lines up with the front view's
mask, as the front view's pixel <-> world mapping promises.

Sampling details (steps, guidance, decoding) live in pipeline/hunyuan_sampler.py.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from models.registry import ModelSpec, get_spec
from pipeline import meshops
from pipeline.context import StageContext
from pipeline.errors import StageError
from pipeline.hunyuan_sampler import ConditionImage, ShapeSettings, Surfaces, extract_surfaces, sample_grid
from pipeline.request import JobRequest
from pipeline.types import VIEW_NAMES, MeshData, MeshResult, ViewSet

if TYPE_CHECKING:
    from models.manager import ModelManager

NO_SURFACE = "no surface found; try another seed or picture"


def resolve_settings(request: JobRequest, spec: ModelSpec) -> ShapeSettings:
    """The request's sampler overrides on top of the model's defaults."""
    defaults = spec.sampler
    if defaults is None:
        raise StageError(f"{spec.name!r} is not a shape model", stage="mesh")
    return ShapeSettings(
        steps=request.steps if request.steps is not None else defaults.steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else defaults.guidance_scale,
        octree_resolution=(
            request.octree_resolution if request.octree_resolution is not None else defaults.octree_resolution
        ),
        num_chunks=request.num_chunks if request.num_chunks is not None else defaults.num_chunks,
        seed=request.seed,
        decoder=defaults.decoder,
    )


def condition_images(views: ViewSet, multiview: bool) -> tuple[ConditionImage, dict[str, Any]]:
    """The picture(s) the model conditions on (RGBA: hy3dgen composites them on white itself), plus
    notes on which views were used."""
    if not multiview:
        ignored = sorted(name for name in views.views if name != "front")
        info: dict[str, Any] = {"views_used": ["front"]}
        if ignored:
            info["views_ignored"] = ignored
            info["views_note"] = "this shape model conditions on the front view only; use hunyuan3d-2mv for more"
        return Image.fromarray(views.front.rgba, "RGBA"), info
    present = [name for name in VIEW_NAMES if name in views.views]
    missing = [name for name in VIEW_NAMES if name not in views.views]
    info = {"views_used": present}
    if missing:
        info["views_missing"] = missing
        info["views_note"] = f"multi-view model ran with {len(present)} of 4 views ({', '.join(missing)} missing)"
    return {name: Image.fromarray(views.views[name].rgba, "RGBA") for name in present}, info


def front_view_similarity(vertices: np.ndarray,  # [V, 3]
                          mask: np.ndarray) -> tuple[meshops.Similarity | None, dict[str, Any]]:  # mask [N, N]
    """The scale and shift that make the X/Y bounding box of `vertices` match the front view mask's
    (uniformly, on the larger side, as hy3dgen's recentring did), keeping the mesh inside [-1, 1]^3;
    None (with the reason in the info) when there is nothing to fit."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None, {"front_fit": "skipped: empty front mask"}
    n_rows, n_cols = mask.shape
    x_lo, x_hi = cols.min() / n_cols * 2 - 1, (cols.max() + 1) / n_cols * 2 - 1
    y_lo, y_hi = 1 - (rows.max() + 1) / n_rows * 2, 1 - rows.min() / n_rows * 2
    vertices = np.asarray(vertices, dtype=np.float64)
    lo, hi = vertices.min(0), vertices.max(0)
    side = max(hi[0] - lo[0], hi[1] - lo[1])
    if side <= 0:
        return None, {"front_fit": "skipped: the mesh has no extent in X/Y"}
    scale = max(x_hi - x_lo, y_hi - y_lo) / side
    offset = np.array([(x_lo + x_hi) / 2, (y_lo + y_hi) / 2, 0.0]) - (lo + hi) / 2 * scale
    overflow = float(np.abs(np.stack([lo, hi]) * scale + offset).max())  # the box's corners bound the mesh
    info: dict[str, Any] = {"front_fit": {"scale": float(scale)}}
    if overflow > 1.0:  # deeper than the box allows: shrink about the origin, alignment is then approximate
        scale, offset = scale / overflow, offset / overflow
        info["front_fit"]["shrunk_to_fit"] = 1.0 / overflow
    return (scale, offset), info


def clean_and_reduce(surfaces: Surfaces, target_faces: int, mask: np.ndarray,  # mask: the front view's [N, N]
                     ctx: StageContext) -> tuple[MeshData, MeshData, dict[str, Any]]:
    """(reduced mesh, dense mesh, info): both in the unit box and fitted to the front view by the same
    similarity (the dense mesh's); the reduced one cleaned (meshops.clean_mesh) and decimated to
    `target_faces`, from the coarse extraction when there is one (pipeline/hunyuan_sampler.py); the dense
    one cleaned too when it is also the reduction's source, else only rid of floaters."""
    if surfaces.coarse is None:
        dense = source = meshops.clean_mesh(surfaces.dense, ctx=ctx)
        if len(dense.faces) == 0:
            raise StageError(NO_SURFACE, stage="mesh")
        reduced = _reduce(source, target_faces, ctx)
    else:
        # The dense mesh is only baked from: marching cubes already welded and wound it consistently, so
        # it only loses its floaters, in a thread beside the coarse mesh's clean-up and decimation (numpy,
        # scipy and the simplifier release the GIL: the 2-core dev box takes 0.30 s for both instead of
        # 0.37 s). Decimating before the similarity move is the same reduction: it is only a uniform scale
        # and a shift.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dense-floaters") as pool:
            floaters = pool.submit(meshops.remove_floaters, surfaces.dense)
            source = meshops.clean_mesh(surfaces.coarse, ctx=ctx)
            reduced = _reduce(source, target_faces, ctx) if len(source.faces) else source
            dense = floaters.result()
        if len(dense.faces) == 0 or len(source.faces) == 0:
            raise StageError(NO_SURFACE, stage="mesh")
    # hy3dgen's frame is already the world frame (module docstring): no axis change, only scale/offset.
    similarity = meshops.unit_box_similarity(dense.vertices)
    scale, offset = similarity
    # The front fit reads only the bounding box: fit the unit-box one, then move each mesh once.
    fit, info = front_view_similarity(dense.bounds * scale + offset, mask)
    if fit is not None:
        similarity = meshops.compose_similarities(similarity, fit)
    mesh, dense = meshops.apply_similarity(reduced, similarity), meshops.apply_similarity(dense, similarity)
    info["reduced_from"] = {"stride": surfaces.stride, "faces": int(len(source.faces))}
    return mesh, dense, info


def _reduce(source: MeshData, target_faces: int, ctx: StageContext) -> MeshData:
    ctx.report(0.9, f"reducing {len(source.faces)} faces to {target_faces}")
    return meshops.decimate(source, target_faces, ctx=ctx)


def generate_hunyuan_mesh(request: JobRequest, views: ViewSet, ctx: StageContext,
                          models: "ModelManager") -> MeshResult:
    """Run `request.shape_model` on the prepared views; clean, orient, fit and reduce the result."""
    spec = get_spec(request.shape_model)
    settings = resolve_settings(request, spec)
    ctx.report(0.0, f"loading {spec.name}")
    pipe = models.shape_pipeline(spec.name)
    image, info = condition_images(views, spec.multiview)
    sampling = ctx.span[0], ctx.span[0] + (ctx.span[1] - ctx.span[0]) * 0.8
    with models.lock:
        grid = sample_grid(pipe, image, settings, dataclasses.replace(ctx, span=sampling))
        ctx.report(0.8, "extracting the surface")
        with ctx.timed("extract"):
            surfaces = extract_surfaces(grid, settings, request.target_faces)
        del grid  # 0.2 GB of GPU memory at octree 384
    if surfaces is None:
        raise StageError(NO_SURFACE, stage="mesh")
    ctx.report(0.85, "cleaning the mesh")
    with ctx.timed("cleanup"):
        mesh, dense, fit = clean_and_reduce(surfaces, request.target_faces, views.front.mask, ctx)
    info.update(fit, faces_raw=int(len(surfaces.dense.faces)), faces_dense=int(len(dense.faces)),
                faces=int(len(mesh.faces)), watertight=meshops.is_watertight(mesh))
    model = {**models.describe(spec.name), "settings": settings.as_dict()}
    ctx.report(1.0, "mesh ready")
    return MeshResult(mesh=mesh, dense=dense, model=model, info=info)
