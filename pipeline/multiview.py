"""The multiview stage: the pictures the user sent -> square, centred object views (PreparedView).

Which pixels are the object, per picture (`remove_background` is the request field):
- a mask (mask_url / mask_base64, front picture only) always wins;
- "auto" (default): the picture's alpha channel when it has real transparency, else background removal;
- true: background removal always runs; where the picture has alpha, its transparent pixels are fixed as
  background and the result keeps the alpha's soft edges;
- false: nothing is removed: the alpha channel when present, else the whole picture is the object.
Background removal is the segmentation model (models/segmentation.py) when its weights are installed, else
GrabCut; PreparedView.mask_method and info["background_removal"] name the one that ran.
The object is then cropped to its bounding box and recentred on a square canvas so that its larger side spans
(1 - 2 * margin) of the view, with background alpha 0 and the RGB under it set to the nearest object colour
(so bilinear sampling later does not bleed the old backdrop into the object's edge).

With `multiview: zero123plus-v1.2`, six views are generated from the prepared front view
(pipeline/view_synthesis.py), cut out and recentred the same way, and kept with their cameras; the ones that fit
the multi-view shape model's left/right/back slots take those names (see `view_names`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage

from models.segmentation import SEGMENTATION_MODEL
from models.segmentation import describe as describe_segmentation
from models.zero123plus import ZERO123PLUS, get_zero123plus
from models.zero123plus import describe as describe_zero123plus
from pipeline.background import BackgroundRemover, CheckFn, no_check
from pipeline.context import StageContext
from pipeline.errors import InputError, ModelUnavailableError
from pipeline.images import decode_image, decode_mask, sniff_format
from pipeline.request import JobRequest
from pipeline.types import VIEW_AZIMUTH, PreparedView, SourceImage, ViewSet
from pipeline.view_synthesis import (DEFAULT_GUIDANCE, DEFAULT_STEPS, SLOT_AZIMUTH_TOLERANCE, SLOT_ELEVATION_TOLERANCE,
                                     SLOTS, ZERO123PLUS_CAMERAS, sample_views, view_names)
from utils.fetch import Fetcher

if TYPE_CHECKING:
    from models.manager import ModelManager

EXTRA_VIEWS = ("left", "back", "right")
INPUTS_SHARE = 0.1  # of the stage's progress, for the input pictures when views are also generated
SYNTHESIS_SHARE = 0.9  # progress reached when the sampler is done; the generated views' cut-outs follow
MIN_OBJECT_PIXELS = 16  # fewer object pixels than this is no object at all
STRIP_PIXELS = 1 << 20  # source pixels premultiplied at a time when recentring


@dataclass
class RawInputs:
    """Bytes as received, gathered by run_pipeline through the Fetcher."""

    image: tuple[str, bytes]  # (field name, bytes)
    mask: tuple[str, bytes] | None
    views: dict[str, tuple[str, bytes]]  # "left"/"back"/"right" -> (field name e.g. "views.left.url", bytes)


def _get(fetcher: Fetcher, url: str | None, inline: str | None, url_field: str, inline_field: str) -> tuple[str, bytes]:
    if url is not None:
        return url_field, fetcher.fetch(url, field=url_field)
    assert inline is not None  # the request validator guarantees one of the two
    return inline_field, fetcher.decode_inline(inline, field=inline_field)


def gather_inputs(request: JobRequest, fetcher: Fetcher) -> RawInputs:
    """Fetch or decode every picture of the request; errors name the field they came from."""
    image = _get(fetcher, request.image_url, request.image_base64, "image_url", "image_base64")
    mask = None
    if request.mask_url is not None or request.mask_base64 is not None:
        mask = _get(fetcher, request.mask_url, request.mask_base64, "mask_url", "mask_base64")
    views: dict[str, tuple[str, bytes]] = {}
    for name in EXTRA_VIEWS:
        ref = getattr(request.views, name) if request.views is not None else None
        if ref is not None:
            views[name] = _get(fetcher, ref.url, ref.base64, f"views.{name}.url", f"views.{name}.base64")
    return RawInputs(image=image, mask=mask, views=views)


def prepare_views(
    request: JobRequest,
    raw: RawInputs,
    ctx: StageContext,
    *,
    view_size: int = 512,
    margin: float = 0.1,
    max_pixels: int,
    models: "ModelManager | None" = None,
) -> ViewSet:
    """Decode, cut out and recentre the front picture and any extra views (see the module docstring); then,
    when the request names a view-synthesis model, generate views from the front (needs `models`)."""
    remover = BackgroundRemover(models.models_dir if models is not None else None,
                                models.device if models is not None else "cpu")
    generating = request.multiview != "none"
    inputs_share = INPUTS_SHARE if generating else 1.0
    pictures = [("front", raw.image)] + [(name, raw.views[name]) for name in EXTRA_VIEWS if name in raw.views]
    views: dict[str, PreparedView] = {}
    sources: list[SourceImage] = []
    methods: dict[str, str] = {}
    info: dict[str, Any] = {"view_size": view_size, "margin": margin}
    for index, (name, (field, data)) in enumerate(pictures):
        ctx.report(inputs_share * index / len(pictures), f"preparing the {name} view")
        with ctx.timed("decode"):
            source = decode_image(data, field=field, name=name, max_pixels=max_pixels)
        ctx.check()
        user_mask = None
        if name == "front" and raw.mask is not None:
            mask_field, mask_bytes = raw.mask
            user_mask = decode_mask(mask_bytes, field=mask_field, size=(source.width, source.height),
                                    max_pixels=max_pixels)
            source = replace(source, mask_source="mask")
            info["mask"] = {"sha256": hashlib.sha256(mask_bytes).hexdigest(), "bytes": len(mask_bytes),
                            "width": source.width, "height": source.height,
                            "format": sniff_format(mask_bytes) or "unknown"}
        with ctx.timed("background"):
            alpha, method = object_alpha(source, user_mask, request.remove_background, ctx, remover)
        _require_object(alpha, method, raw.mask[0] if method == "mask" and raw.mask else field)
        ctx.check()
        with ctx.timed("recentre"):
            rgba = recentre(source.rgba[..., :3], alpha, view_size=view_size, margin=margin, check=ctx.check)
        views[name] = PreparedView(
            name=name,
            rgba=rgba,
            source="input",
            azimuth=VIEW_AZIMUTH[name],
            mask_method=method,
        )
        sources.append(source)
        methods[name] = method
    if generating:
        with ctx.timed("view_synthesis"):
            generated, info["view_synthesis"] = generate_views(
                request, views["front"], ctx, models, remover, view_size=view_size, margin=margin, taken=set(views))
        views.update(generated)
        methods.update({name: view.mask_method for name, view in generated.items()})
    ctx.report(1.0, f"prepared {len(views)} view(s)")
    info["background_removal"] = {"setting": request.remove_background, "per_view": methods}
    if remover.used:  # (asking for .method otherwise would load the model for nothing)
        info["background_removal"].update(remover.describe())
        if remover.method == SEGMENTATION_MODEL:
            provider = info["background_removal"]["provider"]
            info.setdefault("models", {})["segmentation"] = describe_segmentation(provider)
    if generating and models is not None:
        info.setdefault("models", {})["view_synthesis"] = describe_zero123plus(models)
    return ViewSet(views=views, sources=sources, info=info)


def generate_views(
    request: JobRequest,
    front: PreparedView,
    ctx: StageContext,
    models: "ModelManager | None",
    remover: BackgroundRemover,
    *,
    view_size: int,
    margin: float,
    taken: set[str],
    steps: int = DEFAULT_STEPS,
) -> tuple[dict[str, PreparedView], dict[str, Any]]:
    """Views generated by `request.multiview` from the prepared front view, each cut out and recentred like an
    input view and named by `view_names` (the shape-model slots they fit, else by their camera)."""
    if request.multiview != ZERO123PLUS or models is None:
        raise ModelUnavailableError(f"view synthesis with {request.multiview!r} is not available in this worker",
                                    stage="multiview")
    ctx.report(INPUTS_SHARE, f"loading {request.multiview}")
    model = get_zero123plus(models)
    span = SYNTHESIS_SHARE - INPUTS_SHARE
    with models.lock:  # one sampler at a time: the attention state is shared by the model's layers
        tiles = sample_views(model, front.rgba, seed=request.seed, steps=steps, check=ctx.check,
                             progress=lambda f, msg: ctx.report(INPUTS_SHARE + span * f, msg))
    cameras = ZERO123PLUS_CAMERAS
    names = view_names(cameras, taken)
    generated: dict[str, PreparedView] = {}
    records: list[dict[str, Any]] = []
    for index, (name, camera, tile) in enumerate(zip(names, cameras, tiles)):
        ctx.report(SYNTHESIS_SHARE + (1.0 - SYNTHESIS_SHARE) * index / len(tiles), f"cutting out generated {name}")
        alpha = np.where(remover(tile, check=ctx.check), np.uint8(255), np.uint8(0))
        record = {"name": name, "azimuth": camera.azimuth, "elevation": camera.elevation, "fov": camera.fov}
        if int(np.count_nonzero(alpha)) < MIN_OBJECT_PIXELS:
            records.append({**record, "dropped": "background removal found no object in this generated view"})
            continue
        generated[name] = PreparedView(
            name=name,
            rgba=recentre(tile, alpha, view_size=view_size, margin=margin, check=ctx.check),
            source="generated",
            azimuth=camera.azimuth,
            elevation=camera.elevation,
            fov=camera.fov,
            mask_method=remover.method,
        )
        records.append(record)
    filled = {name: generated[name].azimuth for name in SLOTS if name in generated and name not in taken}
    info = {
        "model": request.multiview,
        "seed": request.seed,
        "steps": steps,
        "guidance_scale": DEFAULT_GUIDANCE,
        "views": records,
        "slots_filled": filled,
        "slot_rule": (f"a generated view fills a free shape-model slot (left 270, back 180, right 90) when within "
                      f"{SLOT_AZIMUTH_TOLERANCE:g} deg of its azimuth and {SLOT_ELEVATION_TOLERANCE:g} deg of level; "
                      "the user's own views always win"),
    }
    return generated, info


def object_alpha(
    source: SourceImage,
    user_mask: np.ndarray | None,  # [H, W] bool
    setting: str | bool,  # the request's remove_background: "auto", True or False
    ctx: StageContext,
    remover: BackgroundRemover,
) -> tuple[np.ndarray, str]:  # ([H, W] uint8 alpha, method name)
    """The object's alpha and how it was found, by the rules in the module docstring."""
    has_alpha = source.mask_source == "alpha"
    alpha = source.rgba[..., 3]
    if user_mask is not None:
        return np.where(user_mask, np.uint8(255), np.uint8(0)), "mask"
    if setting is True or (setting == "auto" and not has_alpha):
        known = alpha < 128 if has_alpha else None
        cut = remover(source.rgba[..., :3], check=ctx.check, known_background=known)
        cut_alpha = np.where(cut, np.uint8(255), np.uint8(0))
        return (np.minimum(alpha, cut_alpha) if has_alpha else cut_alpha), remover.method
    if has_alpha:
        return alpha, "alpha"
    return np.full(alpha.shape, 255, np.uint8), "none"


def _require_object(alpha: np.ndarray, method: str, field: str) -> None:  # alpha: [H, W] uint8
    if int(np.count_nonzero(alpha >= 128)) >= MIN_OBJECT_PIXELS:
        return
    if method == "alpha":
        raise InputError(field, "the picture's alpha channel is (almost) fully transparent: there is no object")
    if method == "mask":
        raise InputError(field, "the mask leaves (almost) no object pixel")
    raise InputError(
        field, "background removal found no object; send a picture with a transparent background, or a mask"
    )


def recentre(
    rgb: np.ndarray,  # [H, W, 3] uint8
    alpha: np.ndarray,  # [H, W] uint8
    *,
    view_size: int,
    margin: float,
    check: CheckFn = no_check,
) -> np.ndarray:  # [N, N, 4] uint8
    """Crop to the object's bounding box and place it centred on an N x N canvas, its larger side spanning
    (1 - 2 * margin) * N pixels. Resampling is done on premultiplied colour so the backdrop cannot bleed."""
    rows = np.flatnonzero((alpha >= 128).any(axis=1))
    cols = np.flatnonzero((alpha >= 128).any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1  # pixel-edge coordinates
    side = max(bottom - top, right - left) / (1.0 - 2.0 * margin)
    win_left = (left + right) / 2.0 - side / 2.0
    win_top = (top + bottom) / 2.0 - side / 2.0

    # Only the part of the picture under the window matters (plus a little for the filter's reach).
    height, width = alpha.shape
    x0, y0 = max(0, int(np.floor(win_left)) - 2), max(0, int(np.floor(win_top)) - 2)
    x1, y1 = min(width, int(np.ceil(win_left + side)) + 2), min(height, int(np.ceil(win_top + side)) + 2)
    factor = max(1, int(side // view_size))  # big photos: an exact integer box shrink, strip by strip
    patch = _premultiplied_box_shrink(rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1], factor, check)
    scale_x = scale_y = 1.0 / factor
    if view_size < side / factor:  # the rest of the shrink by area averaging: the affine warp would alias
        covered_w, covered_h = patch.shape[1] * factor, patch.shape[0] * factor  # source pixels, edge padding too
        new_w = max(1, round(covered_w * view_size / side))
        new_h = max(1, round(covered_h * view_size / side))
        scale_x, scale_y = new_w / covered_w, new_h / covered_h
        patch = cv2.resize(patch, (new_w, new_h), interpolation=cv2.INTER_AREA)

    # Inverse map: view pixel centre j + 0.5 -> patch edge coordinate, minus 0.5 for OpenCV's centred pixels.
    step_x, step_y = side * scale_x / view_size, side * scale_y / view_size
    inverse = np.array(
        [[step_x, 0.0, (win_left - x0) * scale_x + 0.5 * step_x - 0.5],
         [0.0, step_y, (win_top - y0) * scale_y + 0.5 * step_y - 0.5]],
        np.float64,
    )
    warped = cv2.warpAffine(
        patch, inverse, (view_size, view_size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0),
    )
    out_alpha = np.clip(np.rint(warped[..., 3]), 0, 255).astype(np.uint8)
    coverage = np.maximum(warped[..., 3:], 1e-3) / 255.0  # unclipped: cubic overshoot cancels in the ratio
    out_rgb = np.clip(np.rint(warped[..., :3] / coverage), 0, 255).astype(np.uint8)
    return np.dstack([fill_background(out_rgb, out_alpha), out_alpha])


def _premultiplied_box_shrink(
    rgb: np.ndarray,  # [h, w, 3] uint8
    alpha: np.ndarray,  # [h, w] uint8
    factor: int,
    check: CheckFn,
) -> np.ndarray:  # [ceil(h / factor), ceil(w / factor), 4] float32: colour * alpha / 255, alpha (0..255)
    """Premultiply and average factor x factor blocks, a strip of rows at a time (bounded memory, and the
    deadline is checked between strips). Blocks past the edge average in transparent pixels, as the world
    outside the picture is."""
    height, width = alpha.shape
    out_h, out_w = -(-height // factor), -(-width // factor)
    out = np.empty((out_h, out_w, 4), np.float32)
    rows_per_strip = factor * max(1, STRIP_PIXELS // (out_w * factor * factor))
    for top in range(0, height, rows_per_strip):
        check()
        weight = alpha[top:top + rows_per_strip, :, None].astype(np.float32) / 255.0
        strip = np.concatenate([rgb[top:top + rows_per_strip] * weight, weight * 255.0], axis=2)
        pad_rows = -strip.shape[0] % factor
        if pad_rows or out_w * factor != width:
            strip = np.pad(strip, ((0, pad_rows), (0, out_w * factor - width), (0, 0)))
        if factor > 1:
            strip = cv2.resize(strip, (out_w, strip.shape[0] // factor), interpolation=cv2.INTER_AREA)
        out[top // factor: top // factor + strip.shape[0]] = strip
    return out


def fill_background(
    rgb: np.ndarray,  # [N, N, 3] uint8
    alpha: np.ndarray,  # [N, N] uint8
) -> np.ndarray:  # [N, N, 3] uint8
    """RGB under alpha 0 set to the colour of the nearest solid object pixel (alpha >= 128)."""
    solid = alpha >= 128
    if not solid.any():
        return np.zeros_like(rgb)
    nearest = ndimage.distance_transform_edt(~solid, return_distances=False, return_indices=True)
    filled = rgb[nearest[0], nearest[1]]
    return np.where((alpha == 0)[..., None], filled, rgb)
