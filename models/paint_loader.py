"""Load Hunyuan3D-Paint 2.0 (multiview albedo) and its delight model once per ModelManager.

Both are built from their components with hy3dgen's model classes and diffusers, straight from
`<MODELS_DIR>/<org>/<repo>/<subfolder>/` with `local_files_only=True`: nothing is fetched at run time and
no code from a weights folder is executed (DiffusionPipeline's `custom_pipeline` would import the hub's
unet/modules.py; we use hy3dgen's copy of that class instead). hy3dgen's own UNet loader reads a pickled
`.bin`; the hub ships the same weights as safetensors, which we load into the same class.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from models.cuda_graphs import graph_forward
from models.manager import ModelManager
from models.registry import ModelSpec, model_dir
from pipeline.errors import ModelUnavailableError

log = logging.getLogger(__name__)
STAGE = "texture"

# Upstream settings (hy3dgen texgen utils/multiview_utils.py, utils/dehighlight_utils.py, hunyuanpaint/pipeline.py).
VIEW_SIZE = 512  # what the released weights generate at; loading reads it from the configs (view_size_of)
PAINT_STEPS = 30
TURBO_STEPS = 10  # upstream turbo: DDIM-30 grid, every third step (29, 26, ..., 2), LCM scheduler, no CFG
DELIGHT_STEPS = 50

_CACHE: dict[tuple[int, str], "PaintModels"] = {}


@dataclass
class PaintModels:
    """Everything paint_albedo needs: the two pipelines (on `device` in `dtype`) and their settings."""

    name: str  # REGISTRY name of the paint model
    delight: Any  # diffusers StableDiffusionInstructPix2PixPipeline
    multiview: Any  # hy3dgen HunyuanPaintPipeline
    turbo: bool
    steps: int  # default multiview denoising steps
    delight_steps: int
    view_size: int  # generated / conditioning view edge in pixels
    device: str
    dtype: torch.dtype


def paint_models(manager: ModelManager, name: str) -> PaintModels:
    """The loaded paint model `name` with the delight model it requires (loaded on first use, then kept).

    Raises ModelUnavailableError naming the missing files and the download command when weights are absent.
    """
    key = (id(manager), name)
    with manager.lock:
        if key not in _CACHE:
            try:
                specs = manager.require(name)
            except ModelUnavailableError as exc:
                raise ModelUnavailableError(exc.message, stage=STAGE) from None
            paint = specs[-1]
            if paint.kind != "paint":
                raise ModelUnavailableError(f"{name!r} is a {paint.kind} model, not a paint model", stage=STAGE)
            delight = next((spec for spec in specs if spec.kind == "delight"), None)
            if delight is None:
                raise ModelUnavailableError(f"paint model {name!r} does not name a delight model", stage=STAGE)
            started = time.monotonic()
            _CACHE[key] = _load(manager, paint, delight)
            log.info("loaded paint model %s on %s %s in %.1f s", name, manager.device,
                     str(manager.dtype).removeprefix("torch."), time.monotonic() - started)
        return _CACHE[key]


def _load(manager: ModelManager, paint: ModelSpec, delight: ModelSpec) -> PaintModels:
    device, dtype = manager.device, manager.dtype
    turbo = paint.name.endswith("-turbo")
    try:
        delight_pipe = load_delight(model_dir(delight, manager.models_dir), device=device, dtype=dtype,
                                    cuda_graphs=manager.cuda_graphs)
        multiview_pipe = load_multiview(model_dir(paint, manager.models_dir), device=device, dtype=dtype, turbo=turbo)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # Files exist (checked above) but do not load: corrupt, truncated or from another model.
        raise ModelUnavailableError(
            f"paint model {paint.name!r} could not be loaded ({type(exc).__name__}: {exc}); "
            f"re-fetch it with `python -m models.download {paint.name}`",
            stage=STAGE,
        ) from exc
    return PaintModels(
        name=paint.name, delight=delight_pipe, multiview=multiview_pipe, turbo=turbo,
        steps=TURBO_STEPS if turbo else PAINT_STEPS, delight_steps=DELIGHT_STEPS,
        view_size=view_size_of(model_dir(paint, manager.models_dir)),
        device=device, dtype=dtype,
    )


def view_size_of(folder: Path) -> int:
    """The pixel edge the multiview model generates at: its UNet's latent size times the VAE's down-scaling
    (64 x 8 = 512 for the released weights). Read from the model's own configs, so any model runs at its size."""
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def _weights(folder: Path) -> Path:
    """The component's weights file: safetensors when present, else the `.bin` the hub ships instead."""
    safetensors = folder / "diffusion_pytorch_model.safetensors"
    return safetensors if safetensors.is_file() else folder / "diffusion_pytorch_model.bin"


def load_unet_2p5d(folder: Path, *, dtype: torch.dtype) -> torch.nn.Module:
    """hy3dgen's UNet2p5DConditionModel from `folder`/{config.json, weights}, built on the meta device
    (no random init of ~1.7B parameters) and filled from the file; every tensor must be in the file."""
    from diffusers import UNet2DConditionModel
    from hy3dgen.texgen.hunyuanpaint.unet.modules import UNet2p5DConditionModel

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    path = _weights(folder)
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        unet = UNet2p5DConditionModel(UNet2DConditionModel(**config))
    unet.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, tensor in [*unet.named_parameters(), *unet.named_buffers()] if tensor.is_meta]
    if leftover:
        raise ValueError(f"{path.name} lacks {len(leftover)} tensors, e.g. {leftover[0]}")
    return unet.to(dtype).eval()


def load_multiview(folder: Path, *, device: str, dtype: torch.dtype, turbo: bool) -> Any:
    """HunyuanPaintPipeline from a paint folder. Its text encoder, tokenizer and feature extractor are
    never run (prompt embeddings are learned tensors of the UNet), so they are not loaded."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, LCMScheduler
    from hy3dgen.texgen.hunyuanpaint.pipeline import HunyuanPaintPipeline

    vae_path = _weights(folder / "vae")
    vae = AutoencoderKL.from_pretrained(
        folder / "vae", torch_dtype=dtype, local_files_only=True, use_safetensors=vae_path.suffix == ".safetensors"
    )
    scheduler_cls = LCMScheduler if turbo else EulerAncestralDiscreteScheduler
    scheduler = scheduler_cls.from_pretrained(folder / "scheduler", timestep_spacing="trailing", local_files_only=True)
    pipe = HunyuanPaintPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=load_unet_2p5d(folder / "unet", dtype=dtype),
        scheduler=scheduler, feature_extractor=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_delight(folder: Path, *, device: str, dtype: torch.dtype, cuda_graphs: bool = False) -> Any:
    """The delight InstructPix2Pix pipeline with upstream's Euler-ancestral scheduler. `cuda_graphs`: its
    UNet (batch 1, launch-bound) replays CUDA graphs on a CUDA device (models/cuda_graphs.py)."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    common = {"local_files_only": True}
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, use_safetensors=True, **common),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, use_safetensors=True, **common),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", **common),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, use_safetensors=True, **common),
        scheduler=EulerAncestralDiscreteScheduler.from_pretrained(folder / "scheduler", **common),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if cuda_graphs and str(device).startswith("cuda"):
        graph_forward(pipe.unet)
    return pipe.to(device)


def forget(manager: ModelManager) -> None:
    """Drop every paint model cached for `manager` (tests; freeing GPU memory)."""
    with manager.lock:
        for key in [key for key in _CACHE if key[0] == id(manager)]:
            del _CACHE[key]
