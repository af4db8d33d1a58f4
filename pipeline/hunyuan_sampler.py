"""Hunyuan3D-2 shape sampling, step by step: encode the picture(s), sample latents, decode a volume,
extract the surface.

These steps do what `Hunyuan3DDiTFlowMatchingPipeline.__call__` (hy3dgen 2.0.2) does, with the same
arguments and random numbers, so with `decoder="vanilla"` the result equals the stock call's (a test
checks it). The DiT step itself is models/dit_forward.py's: hy3dgen's forward with the unconditional half
on its one repeated token (the same velocity up to float rounding) and, where the worker enables it,
replayed from a CUDA graph. What they add: the deadline is checked at every sampling step and every
decoding chunk, each step can be timed on its own (bench/shape_gpu.py), the picture's pixels are scaled
on the model's device (`prepare_inputs`), and the speed levers are explicit settings:
`decoder="hierarchical"` decodes a coarse grid and then only near the surface, with exact attention
(pipeline/coarse_to_fine.py; same mesh as "vanilla"), `decoder="flashvdm"` does so with hy3dgen's lossy
top-k attention, `num_chunks` sets the decoding batch. Marching cubes
runs on the grid cropped around the object (less to scan and copy): on CPU grids scikit-image's, as the
stock call (same mesh); on CUDA grids our own on the GPU (pipeline/marching_cubes.py: the same vertices,
triangles that may differ on ambiguous cell faces; only the mesh is copied to the CPU). FlashVDM's undecoded
cells are filled first (stock hands their NaNs to marching cubes, which makes NaN vertices). `run_stock`
calls the stock pipeline itself; it is the reference the fast path is compared with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage import measure

from models.dit_forward import repeated_token, step_function, time_vector
from pipeline.coarse_to_fine import decode_coarse_to_fine
from pipeline.context import Deadline, StageContext
from pipeline.errors import StageError
from pipeline.marching_cubes import marching_cubes
from pipeline.types import VIEW_NAMES, MeshData

ConditionImage = Image.Image | dict[str, Image.Image]
"""One RGBA picture, or for multi-view models {"front"|"left"|"back"|"right": RGBA picture}."""

DECODERS = ("vanilla", "hierarchical", "flashvdm")


@dataclass(frozen=True)
class ShapeSettings:
    """Every knob of one shape-sampling run (recorded in meta.json)."""

    steps: int
    guidance_scale: float
    octree_resolution: int
    num_chunks: int
    seed: int
    # "vanilla": every grid point; "hierarchical": coarse grid, then near the surface (same mesh);
    # "flashvdm": the same with hy3dgen's top-k latent selection (lossy, for the FlashVDM VAEs)
    decoder: str = "vanilla"
    box_v: float = 1.01  # the decoded cube is [-box_v, box_v]^3
    mc_level: float = 0.0  # iso-level of the occupancy logits

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Condition:
    """Encoded conditioning: what the DiT attends to, plus how guidance is applied."""

    cond: dict[str, torch.Tensor]  # {"main": [B or 2B, tokens, C]} (2B: conditional then unconditional)
    batch_size: int
    classifier_free: bool  # False for guidance-distilled models (guidance is an input instead)
    # The token every unconditional context token repeats (hy3dgen's are all zeros), [B, 1, C]: the
    # unconditional half then runs on it alone (models/dit_forward.py); None: run the batch of 2B as is.
    uncond_token: torch.Tensor | None = None

    @property
    def context_tokens(self) -> int:
        return self.cond["main"].shape[1]


def _generator(seed: int) -> torch.Generator:
    # A CPU generator gives the same starting noise on every device.
    return torch.Generator(device="cpu").manual_seed(seed)


def _guidance_embedded(pipe: Any) -> bool:
    return getattr(pipe.model, "guidance_embed", False) is True


def _unit_range(array: np.ndarray, device: torch.device | str) -> torch.Tensor:  # [H, W, C] uint8
    """hy3dgen's `array_to_tensor` ([1, C, H, W] float32 in [-1, 1]: the same float32 operations) on `device`."""
    values = torch.from_numpy(np.ascontiguousarray(array)).to(device).float()
    return (values / 255 * 2 - 1).permute(2, 0, 1)[None]


def prepare_inputs(pipe: Any, image: ConditionImage) -> dict[str, Any]:
    """`pipe.prepare_image(image)`, with the uint8 -> [-1, 1] conversion of a single picture done on the
    model's device: the same values, without 40-70 ms of CPU tensor arithmetic (bench/shape_gpu.py's
    encode column). Multi-view pictures go through hy3dgen's own call."""
    processor = pipe.image_processor
    if isinstance(image, dict) or type(processor) is not _shapegen().preprocessors.ImageProcessorV2:
        return pipe.prepare_image(image)
    border = processor.border_ratio if processor.border_ratio is not None else 0.15  # as its __call__
    pixels, mask = processor.load_image(image, border_ratio=border, to_tensor=False)
    return {"image": _unit_range(pixels, pipe.device), "mask": _unit_range(mask, pipe.device)}


@torch.inference_mode()
def encode_condition(pipe: Any, image: ConditionImage, guidance_scale: float) -> Condition:
    """Preprocess (recentre on white, resize) and encode the picture(s) with the image encoder."""
    try:
        inputs = prepare_inputs(pipe, image)
    except ValueError as exc:  # hy3dgen's recentring raises this for an all-transparent picture
        raise StageError(f"the prepared picture has no visible object ({exc})", stage="mesh") from None
    pixels = inputs.pop("image")
    classifier_free = guidance_scale >= 0 and not _guidance_embedded(pipe)
    cond = pipe.encode_cond(
        image=pixels, additional_cond_inputs=inputs, do_classifier_free_guidance=classifier_free, dual_guidance=False
    )
    batch = pixels.shape[0]
    uncond_token = repeated_token(cond["main"][batch:]) if classifier_free and list(cond) == ["main"] else None
    return Condition(cond=cond, batch_size=batch, classifier_free=classifier_free, uncond_token=uncond_token)


@torch.inference_mode()
def sample_latents(pipe: Any, condition: Condition, settings: ShapeSettings, ctx: StageContext,
                   progress_span: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:  # [B, L, C]
    """Flow-matching sampling from noise to shape latents; checks the deadline at every step."""
    device, dtype = pipe.device, pipe.dtype
    sigmas = np.linspace(0, 1, settings.steps)
    timesteps, _ = _shapegen().pipelines.retrieve_timesteps(pipe.scheduler, settings.steps, device, sigmas=sigmas)
    latents = pipe.prepare_latents(condition.batch_size, dtype, device, _generator(settings.seed))
    guidance = None
    if _guidance_embedded(pipe):
        guidance = torch.tensor([settings.guidance_scale] * condition.batch_size, device=device, dtype=dtype)
    step = step_function(pipe.model)  # plain, or replayed from a CUDA graph (models/dit_forward.py)
    context, guide = condition.cond["main"][: condition.batch_size], {}
    if condition.classifier_free:
        # The scale as a tensor: a graph recorded for one scale then serves every scale.
        guide = {"uncond": condition.cond["main"][condition.batch_size :], "count": 1,
                 "guidance_scale": torch.tensor(settings.guidance_scale, device=device, dtype=torch.float32)}
        if condition.uncond_token is not None:
            guide.update(uncond=condition.uncond_token, count=condition.context_tokens)
    lo, hi = progress_span
    for index, t in enumerate(timesteps):
        # The first, the last and ~every 10 % / 1 s in between (StageContext throttles a loop's ticks).
        ctx.report(lo + (hi - lo) * index / len(timesteps), "sampling step", step=(index + 1, len(timesteps)))
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / pipe.scheduler.config.num_train_timesteps
        vec = time_vector(pipe.model, timestep, guidance)
        velocity = step(pipe.model, latents, vec, context, **guide)
        latents = pipe.scheduler.step(velocity, t, latents).prev_sample
    ctx.check()
    return latents


def _dense_grid(box_v: float, resolution: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (resolution + 1)^3 query points of hy3dgen's dense grid, x-major ("ij"), as [N, 3]."""
    axis = np.linspace(-box_v, box_v, resolution + 1, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return torch.from_numpy(grid).to(device, dtype=dtype)


@torch.inference_mode()
def decode_volume(pipe: Any, latents: torch.Tensor, settings: ShapeSettings,
                  ctx: StageContext) -> torch.Tensor:  # [B, R+1, R+1, R+1] float32 logits (NaN: not decoded)
    """Run the VAE on the latents and query its geometry decoder on the octree grid."""
    vae = pipe.vae
    features = vae(1.0 / vae.scale_factor * latents)  # [B, L, width]; written as hy3dgen does, for equal bits
    ctx.check()
    if settings.decoder == "flashvdm":
        decoder = _shapegen().models.autoencoders.FlashVDMVolumeDecoding(topk_mode="mean")
        return decoder(features, vae.geo_decoder, bounds=settings.box_v, num_chunks=settings.num_chunks,
                       mc_level=settings.mc_level, octree_resolution=settings.octree_resolution, enable_pbar=False)
    batch = features.shape[0]

    def query(points: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [B, N], in chunks as hy3dgen's loop
        logits = []
        for start in range(0, points.shape[0], settings.num_chunks):
            ctx.check()
            chunk = points[start : start + settings.num_chunks].unsqueeze(0).expand(batch, -1, -1)
            logits.append(vae.geo_decoder(queries=chunk, latents=features))
        return torch.cat(logits, dim=1)[..., 0]

    if settings.decoder == "hierarchical":
        grid, _ = decode_coarse_to_fine(query, batch, settings.octree_resolution, settings.box_v,
                                        settings.mc_level, features.dtype, features.device)
        return grid
    side = settings.octree_resolution + 1
    points = _dense_grid(settings.box_v, settings.octree_resolution, features.device, features.dtype)
    return query(points).view(batch, side, side, side).float()


def fill_undecoded(grid: torch.Tensor,  # [B, R, R, R] float, NaN where not decoded
                   outside: float = -1.0) -> torch.Tensor:  # [B, R, R, R], no NaN
    """Give FlashVDM's undecoded cells (NaN, far from the surface) a value on the right side of it.

    scikit-image's marching cubes turns NaN corners into faces with NaN vertices. A run of undecoded cells
    along a grid line never crosses the surface (the decoded band around the surface separates the two
    sides), so each takes the value of the nearest decoded cell on its line along x; a line with no
    decoded cell at all lies outside the object.
    """
    valid = ~torch.isnan(grid)
    if bool(valid.all()):
        return grid
    size = grid.shape[1]
    # int32 indices: at octree 384 each index grid is 0.23 GB instead of 0.45
    index = torch.arange(size, device=grid.device, dtype=torch.int32).view(1, size, 1, 1).expand_as(grid)
    missing = torch.full_like(index, -1)
    before = torch.where(valid, index, missing).cummax(dim=1).values  # last decoded index at or before
    after = torch.where(valid, size - 1 - index, missing).flip(1).cummax(dim=1).values.flip(1)
    after = torch.where(after >= 0, size - 1 - after, missing)  # first decoded index at or after
    source = torch.where(before >= 0, before, after)
    filled = torch.gather(torch.nan_to_num(grid), 1, source.clamp(min=0).long())
    return torch.where(source >= 0, filled, torch.full_like(grid, outside))


def _inside_box(inside: torch.Tensor) -> tuple[list[int], list[int]]:  # inside [R, R, R] bool, not empty
    """Index range [lo, hi) per axis of the inside cells, grown by one cell (where the crossings are)."""
    lo, hi = [], []
    for axis in range(3):
        others = tuple(other for other in range(3) if other != axis)
        occupied = torch.nonzero(inside.any(dim=others)).flatten()
        lo.append(max(int(occupied[0]) - 1, 0))
        hi.append(min(int(occupied[-1]) + 2, inside.shape[axis]))
    return lo, hi


def extract_surface(grid: torch.Tensor, settings: ShapeSettings, method: str | None = None,
                    stride: int = 1) -> MeshData | None:
    """Marching cubes on the first grid of the batch; None when the field never crosses the level.

    `stride` > 1 extracts from every `stride`-th grid point only (a coarser surface of the same field, in
    the same frame): the shape stage reduces that one to the target face count, which costs a fraction of
    reducing the full-resolution mesh.

    `method`: "skimage" is the same scikit-image call as hy3dgen's "mc" extractor, with its vertex mapping,
    so the mesh equals the stock one; "torch" is pipeline/marching_cubes.py, run on the grid's device (the
    same vertices, triangles that differ only on ambiguous cell faces), so only the mesh is copied to the
    CPU. Default: "torch" for CUDA grids, "skimage" otherwise. Either way the grid is first cropped, on its
    own device, to the box around the inside cells, so less of it is scanned (and copied).
    """
    if method is None:
        method = "torch" if grid.is_cuda else "skimage"
    if method not in ("torch", "skimage"):
        raise ValueError(f"method must be 'torch' or 'skimage', got {method!r}")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    field = fill_undecoded(grid[:1])[0][::stride, ::stride, ::stride]  # [R', R', R']
    inside = field > settings.mc_level
    if not bool(inside.any()) or bool(inside.all()):
        return None
    lo, hi = _inside_box(inside)
    crop = field[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if method == "torch":
        found_vertices, found_faces = marching_cubes(crop, settings.mc_level)
        if len(found_faces) == 0:
            return None
        # already wound as the reversed scikit-image faces below (outward, positive volume)
        vertices, faces = found_vertices.cpu().numpy(), found_faces.cpu().numpy()
    else:
        try:
            vertices, faces, _, _ = measure.marching_cubes(crop.cpu().numpy(), settings.mc_level, method="lewiner")
        except ValueError:  # scikit-image: no crossing inside the crop
            return None
        # hy3dgen reverses marching cubes' winding when it exports (export_to_trimesh); do the same.
        faces = faces[:, ::-1]
    # hy3dgen's mapping: full-grid index / (octree + 1) * box size + box min
    index = (vertices + np.asarray(lo)) * stride
    vertices = index / (settings.octree_resolution + 1) * (2 * settings.box_v) - settings.box_v
    return MeshData(vertices=vertices.astype(np.float32), faces=np.ascontiguousarray(faces, dtype=np.int32))


def _to_mesh(output: Any) -> MeshData | None:  # hy3dgen's Latent2MeshOutput
    if output is None or len(output.mesh_f) == 0:
        return None
    # reversed as hy3dgen's export_to_trimesh does
    faces = np.ascontiguousarray(np.asarray(output.mesh_f)[:, ::-1], dtype=np.int32)
    return MeshData(vertices=np.asarray(output.mesh_v, dtype=np.float32), faces=faces)


@dataclass
class Surfaces:
    """The surfaces the shape stage needs from one decoded grid, both in hy3dgen's frame."""

    dense: MeshData  # every grid point: the detail the normal map is baked from
    coarse: MeshData | None  # every `stride`-th point, to be reduced to the target (None: reduce `dense`)
    stride: int


def reduction_stride(dense_faces: int, target_faces: int, min_ratio: float = 4.0, max_stride: int = 2) -> int:
    """The coarsest power-of-two stride (up to `max_stride`) whose extraction still has `min_ratio` x the
    target faces (a marching-cubes mesh's faces scale with 1 / stride^2): quadric decimation then still
    has room to place its vertices, at a fraction of the cost of reducing the dense mesh (BENCHMARKS.md,
    "Reduction source", measures the error on real shapes)."""
    stride = 1
    while stride * 2 <= max_stride and dense_faces / (stride * 2) ** 2 >= min_ratio * target_faces:
        stride *= 2
    return stride


def extract_surfaces(grid: torch.Tensor, settings: ShapeSettings, target_faces: int,
                     max_stride: int = 2) -> Surfaces | None:
    """The dense surface, plus a coarser extraction of the same grid when the target allows one
    (`max_stride` 1: never)."""
    grid = fill_undecoded(grid[:1])  # once for both extractions
    dense = extract_surface(grid, settings)
    if dense is None:
        return None
    stride = reduction_stride(len(dense.faces), target_faces, max_stride=max_stride)
    coarse = extract_surface(grid, settings, stride=stride) if stride > 1 else None
    if coarse is None:  # a surface too small for the coarser grid: reduce the dense one
        stride = 1
    return Surfaces(dense=dense, coarse=coarse, stride=stride)


def sample_grid(pipe: Any, image: ConditionImage, settings: ShapeSettings,
                ctx: StageContext) -> torch.Tensor:  # [B, R+1, R+1, R+1] float32 logits
    """Picture(s) -> decoded occupancy grid: encode, sample, decode."""
    ctx.report(0.0, "encoding the picture")
    with ctx.timed("encode"):
        condition = encode_condition(pipe, image, settings.guidance_scale)
    with ctx.timed("sample"):
        latents = sample_latents(pipe, condition, settings, ctx, progress_span=(0.05, 0.85))
    ctx.report(0.85, "decoding the volume")
    with ctx.timed("decode"):
        return decode_volume(pipe, latents, settings, ctx)


def run_shape(pipe: Any, image: ConditionImage, settings: ShapeSettings, ctx: StageContext) -> MeshData | None:
    """Picture(s) -> raw surface in hy3dgen's frame, or None when marching cubes finds no surface (what the
    stock call returns)."""
    return extract_surface(sample_grid(pipe, image, settings, ctx), settings)


def warm_up(pipe: Any, settings: ShapeSettings, multiview: bool) -> None:
    """Two sampling steps on a synthetic picture (a grey square; all four views for multi-view models),
    so that work done on a model's first call (torch.compile building the DiT's kernels for the
    conditioning and guidance-batch shapes every job uses) happens before the first job."""
    picture = Image.new("RGBA", (256, 256))
    picture.paste((128, 128, 128, 255), (64, 64, 192, 192))
    image: ConditionImage = {name: picture for name in VIEW_NAMES} if multiview else picture
    condition = encode_condition(pipe, image, settings.guidance_scale)
    sample_latents(pipe, condition, replace(settings, steps=2), StageContext("mesh", Deadline(3600.0)))


def run_stock(pipe: Any, image: ConditionImage, settings: ShapeSettings, ctx: StageContext) -> MeshData | None:
    """The stock `pipe(...)` call at the same settings (reference path); the deadline is checked per step.

    The stock call decodes with whatever volume decoder the pipeline's VAE has; `settings.decoder` is
    not applied here, and FlashVDM's undecoded (NaN) cells go to marching cubes as they are.
    """

    def on_step(step: int, t: Any, outputs: Any) -> None:
        ctx.check()

    meshes = pipe(
        image=image, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
        generator=_generator(settings.seed), box_v=settings.box_v, octree_resolution=settings.octree_resolution,
        mc_level=settings.mc_level, num_chunks=settings.num_chunks, output_type="mesh", enable_pbar=False,
        callback=on_step, callback_steps=1,
    )
    return _to_mesh(meshes[0])


def _shapegen() -> Any:
    # Imported on first use: importing hy3dgen needs the torchvision stand-in on CPU-only machines.
    from models.torchvision_compat import import_shapegen

    return import_shapegen()
