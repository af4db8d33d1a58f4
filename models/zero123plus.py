"""Zero123++ v1.2 (sudo-ai/zero123plus-v1.2) loaded from diffusers/transformers components.

The hub repo is a diffusers folder: unet (UNet2DConditionModel), vae (AutoencoderKL), text_encoder +
tokenizer (CLIP, only used once here to embed the empty prompt), vision_encoder (CLIPVisionModelWithProjection),
feature_extractor_clip / feature_extractor_vae (CLIPImageProcessor), scheduler (Euler ancestral), and
model_index.json, whose `ramping_coefficients` (one per prompt token) weight how much of the global CLIP image
embedding is added to each token of the prompt embedding.

Conditioning on the input picture is "reference attention": before every denoising pass the UNet also runs on
the (equally noised) latent of the input picture, and each self-attention layer (`attn1`) remembers its input
there; in the real pass, that layer attends over its own tokens and the remembered ones. `ReferenceAttention`
does that with one shared `AttentionState` the sampler switches between "write" and "read".

Licence: the weights are CC-BY-NC-4.0 (non-commercial), per the SUDO-AI-3D/zero123plus README; its code is
Apache-2.0. No upstream code is used here.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from models.registry import get_spec, model_dir
from pipeline.errors import ModelUnavailableError

if TYPE_CHECKING:
    from models.manager import ModelManager

log = logging.getLogger(__name__)

ZERO123PLUS = "zero123plus-v1.2"
_CACHE: dict[tuple[str, str, str], "Zero123PlusModel"] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class AttentionState:
    """Shared by every ReferenceAttention of one UNet: the mode of the current pass and the remembered tokens."""

    mode: str = "off"  # "write": remember inputs; "read": attend over them too; "off": plain self-attention
    bank: dict[str, torch.Tensor] = field(default_factory=dict)


class ReferenceAttention:
    """Attention processor for a self-attention layer with reference tokens (see the module docstring)."""

    def __init__(self, name: str, state: AttentionState) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name = name
        self.state = state
        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,  # diffusers Attention
        hidden_states: torch.Tensor,  # [B, T, C]
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:  # [B, T, C]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if self.state.mode == "write":
            self.state.bank[self.name] = context
        elif self.state.mode == "read":
            context = torch.cat([context, self.state.bank.pop(self.name)], dim=1)  # [B, T + T_ref, C]
        return self.inner(attn, hidden_states, context, attention_mask, temb)


@dataclass
class Zero123PlusModel:
    """Everything the sampler needs, on one device and dtype."""

    unet: Any  # diffusers UNet2DConditionModel with ReferenceAttention on its attn1 layers
    vae: Any  # diffusers AutoencoderKL
    vision_encoder: Any  # transformers CLIPVisionModelWithProjection
    clip_processor: Any  # CLIPImageProcessor for the vision encoder
    vae_processor: Any  # CLIPImageProcessor for the VAE's condition image
    scheduler_config: dict[str, Any]
    prompt_embeds: torch.Tensor  # [1, L, C] the empty prompt, encoded once at load
    ramp: torch.Tensor  # [L] ramping coefficients
    attention: AttentionState
    tile: int  # pixels per output view: the VAE condition picture's size (320 for v1.2)
    device: str
    dtype: torch.dtype


def install_reference_attention(unet: Any) -> AttentionState:
    """Put ReferenceAttention on every self-attention layer of `unet`; cross-attention stays standard."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    state = AttentionState()
    processors = {
        name: ReferenceAttention(name, state) if name.endswith("attn1.processor") else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return state


def load_zero123plus(folder: Path, device: str, dtype: torch.dtype) -> Zero123PlusModel:
    """Build the model from a diffusers folder laid out like the hub repo (files checked by the caller)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    index = json.loads((folder / "model_index.json").read_text())
    ramp = index.get("ramping_coefficients")
    if not isinstance(ramp, list) or not ramp:
        raise ModelUnavailableError(f"{folder / 'model_index.json'} has no ramping_coefficients list: "
                                    "not a Zero123++ v1.2 folder", stage="multiview")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype, use_safetensors=True)
    vision = CLIPVisionModelWithProjection.from_pretrained(folder / "vision_encoder", dtype=dtype, use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, use_safetensors=True)
    text_encoder.to(device).eval()
    with torch.inference_mode():
        tokens = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        prompt_embeds = text_encoder(tokens.input_ids.to(device))[0]  # [1, L, C]
    del text_encoder  # only the empty prompt is ever encoded: no need to keep 340M parameters around
    if prompt_embeds.shape[1] != len(ramp):
        raise ModelUnavailableError(f"{folder}: {len(ramp)} ramping coefficients for a {prompt_embeds.shape[1]}-token "
                                    "prompt embedding", stage="multiview")
    state = install_reference_attention(unet)
    for module in (unet, vae, vision):
        module.to(device).eval()
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    vae_processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor_vae")
    return Zero123PlusModel(
        unet=unet,
        vae=vae,
        vision_encoder=vision,
        clip_processor=CLIPImageProcessor.from_pretrained(folder / "feature_extractor_clip"),
        vae_processor=vae_processor,
        scheduler_config=scheduler_config,
        prompt_embeds=prompt_embeds,
        ramp=torch.tensor(ramp, dtype=dtype, device=device),
        attention=state,
        tile=int(vae_processor.crop_size["height"]),
        device=device,
        dtype=dtype,
    )


def get_zero123plus(models: "ModelManager") -> Zero123PlusModel:
    """The process-wide Zero123++ model for a ModelManager (loaded on first use); ModelUnavailableError naming
    the missing files when it is not installed."""
    try:
        spec = models.require(ZERO123PLUS)[-1]
    except ModelUnavailableError as exc:
        exc.stage = "multiview"
        raise
    key = (str(model_dir(spec, models.models_dir)), models.device, str(models.dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.monotonic()
            _CACHE[key] = load_zero123plus(Path(key[0]), models.device, models.dtype)
            log.info("loaded view-synthesis model %s (%s@%s) on %s in %.1f s", ZERO123PLUS, spec.repo_id,
                     spec.revision, models.device, time.monotonic() - started)
        return _CACHE[key]


def describe(models: "ModelManager") -> dict[str, Any]:
    """What meta.json records about the model."""
    spec = get_spec(ZERO123PLUS)
    return {"name": spec.name, "repo_id": spec.repo_id, "revision": spec.revision,
            "dtype": str(models.dtype).removeprefix("torch."), "device": models.device, "licence": spec.licence}
