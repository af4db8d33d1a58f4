"""View synthesis: extra views of the object generated from the prepared front view (`multiview: <model>`).

Zero123++ v1.2 paints one 3 x 2 grid of six views (row-major) at fixed cameras: azimuths 30, 90, 150, 210,
270, 330 degrees relative to the input, elevations alternating 20 and -10 degrees, a 30 degree field of view.
Its azimuth turns the same way as VIEW_AZIMUTH (90 = the object's right side, as seen in the front picture),
so azimuths are recorded unchanged.

The sampler here is our own loop over diffusers/transformers parts (models/zero123plus.py): classifier-free
guidance where the unconditional branch sees the empty prompt and the latent of a blank picture, reference
attention on the equally noised condition latent at every step, an Euler-ancestral scheduler with "trailing"
timesteps, and v1.2's latent/image rescaling around the VAE.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from models.zero123plus import Zero123PlusModel
from pipeline.types import VIEW_AZIMUTH, angled_view_name

LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75  # v1.2 trained on (latent - 0.22) * 0.75
IMAGE_SCALE = 0.8 / 0.5  # and on images scaled by 0.5 / 0.8
GRID_ROWS, GRID_COLS = 3, 2
BACKDROP = 127  # grey the input's transparent pixels are put on (what the model was trained with)
DEFAULT_STEPS = 28
DEFAULT_GUIDANCE = 4.0

SLOT_AZIMUTH_TOLERANCE = 10.0  # degrees a generated view may be off a shape-model slot's azimuth and fill it
SLOT_ELEVATION_TOLERANCE = 20.0  # and off the horizon (the multi-view shape model was trained on level views)
SLOTS = ("left", "back", "right")

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class ViewCamera:
    azimuth: float  # degrees, VIEW_AZIMUTH convention, relative to the input view
    elevation: float  # degrees
    fov: float  # degrees, vertical


ZERO123PLUS_CAMERAS = tuple(
    ViewCamera(azimuth=float(azimuth), elevation=20.0 if index % 2 == 0 else -10.0, fov=30.0)
    for index, azimuth in enumerate((30, 90, 150, 210, 270, 330))
)
"""The six output views, in the grid's row-major order."""


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def view_names(cameras: tuple[ViewCamera, ...], taken: set[str]) -> list[str]:
    """A name per generated view: the shape-model slot (left 270, right 90, back 180) it fits, when that slot
    is free (`taken`: the user's own views win), within SLOT_AZIMUTH_TOLERANCE of the slot's azimuth and
    SLOT_ELEVATION_TOLERANCE of level; else `generated_az030_elp20` (types.angled_view_name). For Zero123++ v1.2 the
    90 and 270 views fill right and left; back stays empty (its nearest views, 150 and 210, are 30 degrees off)."""
    names: list[str] = []
    used = set(taken)
    for camera in cameras:
        fits = [slot for slot in SLOTS if slot not in used
                and _angle_between(camera.azimuth, VIEW_AZIMUTH[slot]) <= SLOT_AZIMUTH_TOLERANCE
                and abs(camera.elevation) <= SLOT_ELEVATION_TOLERANCE]
        if fits:
            used.add(fits[0])
            names.append(fits[0])
        else:
            names.append(angled_view_name("generated", camera.azimuth, camera.elevation))
    return names


def _no_progress(fraction: float, message: str) -> None:
    """Default progress sink."""


def condition_rgb(rgba: np.ndarray) -> Image.Image:  # rgba: [N, N, 4] uint8
    """The picture the model conditions on: the object over a flat grey backdrop."""
    weight = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * weight + BACKDROP * (1.0 - weight)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def split_grid(grid: np.ndarray) -> list[np.ndarray]:  # grid: [3 * T, 2 * T, 3] uint8 -> 6 x [T, T, 3]
    tile_h, tile_w = grid.shape[0] // GRID_ROWS, grid.shape[1] // GRID_COLS
    return [grid[r * tile_h:(r + 1) * tile_h, c * tile_w:(c + 1) * tile_w]
            for r in range(GRID_ROWS) for c in range(GRID_COLS)]


@torch.inference_mode()
def sample_views(
    model: Zero123PlusModel,
    rgba: np.ndarray,  # [N, N, 4] uint8, the prepared front view
    *,
    seed: int,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    check: Callable[[], None],
    progress: ProgressFn = _no_progress,
) -> list[np.ndarray]:  # 6 x [T, T, 3] uint8 (T = model.tile), in ZERO123PLUS_CAMERAS order
    """Run the sampler: `steps` Euler-ancestral steps, each a reference pass and a denoising pass; `check`
    (the deadline) runs before each step. The same seed gives the same views on the same device."""
    from diffusers import EulerAncestralDiscreteScheduler

    device, dtype = model.device, model.dtype
    generator = torch.Generator("cpu").manual_seed(seed)  # CPU noise: same seed, same start on any device
    picture = condition_rgb(rgba)
    vae_in = model.vae_processor(images=picture, return_tensors="pt").pixel_values.to(device, dtype)
    clip_in = model.clip_processor(images=picture, return_tensors="pt").pixel_values.to(device, dtype)
    guided = guidance_scale > 1.0

    cond_lat = _encode(model, vae_in, generator)  # [1, 4, h, w]
    image_embeds = model.vision_encoder(clip_in).image_embeds[:, None, :]  # [1, 1, C]
    embeds = model.prompt_embeds + image_embeds * model.ramp[None, :, None]  # [1, L, C]
    if guided:  # unconditional branch: empty prompt alone, blank condition picture
        cond_lat = torch.cat([_encode(model, torch.zeros_like(vae_in), generator), cond_lat])
        embeds = torch.cat([model.prompt_embeds, embeds])
    check()

    scheduler = EulerAncestralDiscreteScheduler.from_config(model.scheduler_config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps, device=device)
    factor = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, model.unet.config.in_channels, GRID_ROWS * model.tile // factor, GRID_COLS * model.tile // factor)
    latents = (torch.randn(shape, generator=generator) * scheduler.init_noise_sigma).to(device, dtype)
    for index, timestep in enumerate(scheduler.timesteps):
        check()
        batch = torch.cat([latents] * 2) if guided else latents
        batch = scheduler.scale_model_input(batch, timestep)
        sigma = scheduler.sigmas[scheduler.step_index].to(device=device, dtype=torch.float32)
        noise = torch.randn(cond_lat.shape, generator=generator).to(device, dtype)
        # The condition latent noised to this step's level and scaled as the scheduler scales the input.
        reference = ((cond_lat + noise * sigma) / torch.sqrt(sigma ** 2 + 1)).to(dtype)
        prediction = _unet_with_reference(model, batch, reference, timestep, embeds)
        if guided:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(prediction, timestep, latents, generator=generator).prev_sample
        progress((index + 1) / steps, f"view synthesis step {index + 1}/{steps}")
    check()
    latents = latents / LATENT_SCALE + LATENT_SHIFT
    image = model.vae.decode(latents / model.vae.config.scaling_factor).sample * IMAGE_SCALE  # [1, 3, H, W] in ~[-1, 1]
    grid = ((image[0].float().permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return split_grid(grid)


def _encode(model: Zero123PlusModel, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A latent sample of the VAE posterior: [1, 3, H, W] -> [1, 4, H / f, W / f]."""
    posterior = model.vae.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device, posterior.mean.dtype)
    return posterior.mean + posterior.std * noise


def _unet_with_reference(
    model: Zero123PlusModel,
    batch: torch.Tensor,  # [B, 4, h, w] scaled noisy latents
    reference: torch.Tensor,  # [B, 4, h_ref, w_ref] scaled noisy condition latents
    timestep: torch.Tensor,
    embeds: torch.Tensor,  # [B, L, C]
) -> torch.Tensor:  # [B, 4, h, w] the UNet's prediction for `batch`
    state = model.attention
    try:
        state.mode = "write"
        model.unet(reference, timestep, encoder_hidden_states=embeds)
        state.mode = "read"
        return model.unet(batch, timestep, encoder_hidden_states=embeds).sample
    finally:
        state.mode = "off"
        state.bank.clear()
