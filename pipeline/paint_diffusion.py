"""The two diffusion steps of Hunyuan3D-Paint: de-lighting the input view and generating the six views.

Settings follow hy3dgen texgen (pipelines.py recenter_image, utils/dehighlight_utils.py,
utils/multiview_utils.py, hunyuanpaint/pipeline.py), with the request's seed instead of upstream's fixed
0 / 42 and the job deadline checked after every denoising step.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from models.paint_loader import PaintModels
from pipeline.context import StageContext
from pipeline.errors import StageError

RECENTER_BORDER = 0.2  # Hunyuan3DPaintPipeline.recenter_image
DELIGHT_IMAGE_GUIDANCE = 1.5
DELIGHT_TEXT_GUIDANCE = 1.0  # <= 1: InstructPix2Pix runs without classifier-free guidance, as upstream
MULTIVIEW_GUIDANCE = 2.0  # HunyuanPaintPipeline.__call__ default
TURBO_GRID = 30  # the turbo model was distilled on a 30-step DDIM grid


def recenter(rgba: np.ndarray) -> np.ndarray:  # [N, N, 4] uint8 -> [M, M, 4] uint8
    """Crop to the alpha bounding box and pad by 20 % of its size on each side into a square, transparent
    white around it (upstream's recenter_image)."""
    rows, cols = np.nonzero(rgba[..., 3] > 0)
    if rows.size == 0:
        raise StageError("the front view is fully transparent: no object to paint", stage="texture")
    crop = rgba[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape[:2]
    border_h, border_w = int(height * RECENTER_BORDER), int(width * RECENTER_BORDER)
    side = max(width + 2 * border_w, height + 2 * border_h)
    out = np.zeros((side, side, 4), np.uint8)
    out[..., :3] = 255
    top = (side - height - 2 * border_h) // 2 + border_h
    left = (side - width - 2 * border_w) // 2 + border_w
    out[top : top + height, left : left + width] = crop
    return out


def _step_callback(ctx: StageContext, start: float, end: float, total: int, message: str) -> Any:
    """callback_on_step_end that reports progress and raises JobTimeout / JobCancelled past the deadline."""

    def callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        ctx.report(start + (end - start) * (step + 1) / max(total, 1), message)
        return tensors

    return callback


def _match_colours(
    generated: torch.Tensor,  # [H, W, 3] float64 in [0, 1]
    target: torch.Tensor,  # [H, W, 3]
    alpha: torch.Tensor,  # [H, W, 1] in [0, 1]
    scale: float = 0.95,
) -> torch.Tensor:  # [H, W, 3]
    """Upstream's recorrect_rgb: match each channel's mean and spread to the input over the object, and
    keep the result only if it is closer to the input than the raw output was."""
    inside = alpha[..., 0] > 0.5
    if int(inside.sum()) < 2:
        return generated
    corrected = torch.empty_like(generated)
    for c in range(3):
        src, tgt = generated[..., c][inside], target[..., c][inside]
        ratio = tgt.std() / src.std().clamp(min=1e-8)
        corrected[..., c] = ((generated[..., c] - scale * src.mean()) * ratio + scale * tgt.mean()).clamp(0, 1)
    if torch.mean((generated - target) ** 2) < torch.mean((corrected - target) ** 2):
        return generated
    return corrected


def delight(
    rgba: np.ndarray,  # [N, N, 4] uint8 front view, background alpha 0
    models: PaintModels,
    *,
    seed: int,
    ctx: StageContext,
    span: tuple[float, float] = (0.0, 0.1),
) -> Image.Image:  # RGB, view_size square, white background
    """Remove baked-in lighting from the front view (upstream Light_Shadow_Remover)."""
    size = models.view_size
    image = np.asarray(Image.fromarray(recenter(rgba), "RGBA").resize((size, size), Image.Resampling.BICUBIC)).copy()
    image[..., 3] = cv2.erode(image[..., 3], np.ones((3, 3), np.uint8), iterations=1)
    image[image[..., 3] == 0, :3] = 255
    alpha = torch.as_tensor(image[..., 3:] / 255.0)
    target = torch.as_tensor(image[..., :3] / 255.0)
    out = models.delight(
        prompt="",
        image=Image.fromarray(image[..., :3], "RGB"),
        generator=torch.Generator("cpu").manual_seed(seed),
        num_inference_steps=models.delight_steps,
        image_guidance_scale=DELIGHT_IMAGE_GUIDANCE,
        guidance_scale=DELIGHT_TEXT_GUIDANCE,
        output_type="np",
        callback_on_step_end=_step_callback(ctx, *span, models.delight_steps, "removing lighting from the input view"),
    ).images[0]
    generated = torch.as_tensor(np.asarray(out, np.float64))
    rgb = _match_colours(generated, target, alpha)
    composite = rgb * alpha + (1.0 - alpha)  # onto white, as upstream
    return Image.fromarray(np.round(composite.numpy() * 255.0).clip(0, 255).astype(np.uint8), "RGB")


def turbo_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """Upstream turbo samples the 30-step DDIM grid at indices 29, 26, ..., 2 (10 steps); other step counts
    take evenly strided indices from the top of the same grid."""
    steps = max(1, min(int(steps), TURBO_GRID))
    ratio = num_train_timesteps // TURBO_GRID
    grid = np.arange(1, TURBO_GRID + 1) * ratio - 1
    stride = max(1, TURBO_GRID // steps)
    return [int(grid[TURBO_GRID - 1 - i * stride]) for i in range(steps)]


def generate_views(
    reference: Image.Image,  # RGB, the de-lit front view
    normal_maps: torch.Tensor,  # [N, 3, S, S] in [0, 1]
    position_maps: torch.Tensor,  # [N, 3, S, S]
    camera_info: Sequence[int],  # [N] camera class ids (paint_views.camera_index)
    models: PaintModels,
    *,
    steps: int,
    seed: int,
    ctx: StageContext,
    span: tuple[float, float] = (0.1, 0.8),
) -> torch.Tensor:  # [N, 3, S, S] float in [0, 1] on models.device
    """Run the multiview diffusion: N views of the object in the given cameras, consistent with the
    reference and with the rendered geometry."""
    pipe = models.multiview
    size = models.view_size
    kwargs: dict[str, Any] = {
        "num_in_batch": len(camera_info),
        "camera_info_gen": [list(camera_info)],
        "camera_info_ref": [[0]],
        # Tensors, not PIL lists: the pipeline's PIL path hard-codes .half().to("cuda").
        "normal_imgs": normal_maps[None].to(models.device, models.dtype),
        "position_imgs": position_maps[None].to(models.device, models.dtype),
        "generator": torch.Generator("cpu").manual_seed(seed),
        "width": size,
        "height": size,
        "output_type": "pt",
        "callback_on_step_end": _step_callback(ctx, *span, steps, "generating views"),
    }
    if models.turbo:
        # Upstream turbo: no classifier-free guidance, LCM steps on the distillation grid.
        kwargs["timesteps"] = turbo_timesteps(steps, pipe.scheduler.config.num_train_timesteps)
        kwargs["guidance_scale"] = 1.0
    else:
        kwargs["num_inference_steps"] = steps
        kwargs["guidance_scale"] = MULTIVIEW_GUIDANCE
    devices = [torch.device(models.device).index or 0] if str(models.device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # the VAE samples its latents of the conditioning maps from the global RNG
        images = pipe(reference.resize((size, size), Image.Resampling.BICUBIC), **kwargs).images
    return images.float().clamp(0.0, 1.0)
