"""Randomly initialised Hunyuan3D-Paint 2.0 and delight models in the real on-disk layout, for tests and
the GPU benchmark.

`install_paint_models(models_dir, name)` writes `<models_dir>/tencent/Hunyuan3D-2/hunyuan3d-delight-v2-0/`
and the paint folder (`hunyuan3d-paint-v2-0` or `-turbo`) with every folder the hub has (model_index.json,
scheduler/, text_encoder/, tokenizer/ with a tiny byte-level CLIP vocabulary, unet/, vae/,
feature_extractor/), saved with save_pretrained, the paint UNet as hy3dgen's UNet2p5DConditionModel state
dict in safetensors and the turbo VAE as a `.bin`, as the hub ships them. `size="tiny"` shrinks widths and
depths (the 2.5D UNet keeps the 1024-wide learned prompt and the 1280-wide camera embedding hy3dgen
hard-codes); `size="real"` has the real dimensions (`build_paint_models` builds those in memory).

Real dimensions (random weights, for timing): the paint and delight UNets are Stable Diffusion 2.x UNets
(stabilityai/stable-diffusion-2-1 unet/config.json: 320/640/1280/1280 channels, heads 5/10/20/20, 1024-wide
cross-attention; the paint UNet's 1024 x 77 learned prompt and 1280-wide class embedding in hy3dgen's
modules.py confirm the width), the delight UNet with InstructPix2Pix's 8 input channels; the VAE is SD's
(128/256/512/512); the delight text encoder is SD 2's OpenCLIP ViT-H text tower (1024 wide, 23 layers).
Not verified against Tencent's own config files (not reachable from here): sample_size and
upcast_attention of the UNets, and the schedulers' beta schedule / prediction type.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from models.paint_loader import DELIGHT_STEPS, PAINT_STEPS, TURBO_STEPS, VIEW_SIZE, PaintModels
from models.registry import get_spec, model_dir

TINY_VIEW_SIZE = 32

_SD_UNET_REAL: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": [5, 10, 20, 20],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 1024, "use_linear_projection": True, "norm_num_groups": 32, "upcast_attention": False,
}
_SD_UNET_TINY: dict[str, Any] = {
    **_SD_UNET_REAL, "sample_size": 16, "layers_per_block": 1, "block_out_channels": [32, 64],
    "attention_head_dim": [2, 4], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 8,
}
_VAE_REAL: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512, "scaling_factor": 0.18215,
}
_VAE_TINY: dict[str, Any] = {
    **_VAE_REAL, "layers_per_block": 1, "norm_num_groups": 8, "block_out_channels": [8, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 32,
}
_TEXT_REAL: dict[str, Any] = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
    "max_position_embeddings": 77, "projection_dim": 512, "hidden_act": "gelu",
}
_TEXT_TINY: dict[str, Any] = {**_TEXT_REAL, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                              "num_hidden_layers": 1, "projection_dim": 32}
_SCHEDULER: dict[str, Any] = {
    "_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
}
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def unet_config(size: str, *, delight: bool) -> dict[str, Any]:
    config = dict(_SD_UNET_REAL if size == "real" else _SD_UNET_TINY)
    if delight:
        config["in_channels"] = 8  # InstructPix2Pix: noisy latents + image latents
        if size != "real":
            config["cross_attention_dim"] = _TEXT_TINY["hidden_size"]
    else:
        config["time_embedding_dim"] = 1280  # hy3dgen's camera embedding is 1280 wide (SD's 320 * 4)
    return config


def vae_config(size: str) -> dict[str, Any]:
    return dict(_VAE_REAL if size == "real" else _VAE_TINY)


def _byte_char(byte: int) -> str:
    """GPT-2 / CLIP byte-level BPE alphabet: printable bytes stand for themselves, the others are shifted
    past 255 so that every byte has a visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))


def _byte_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary without merges: every byte, alone and word-final, plus the specials."""
    chars = [_byte_char(b) for b in range(256)]
    tokens = chars + [c + "</w>" for c in chars] + [_BOS, _EOS]
    return {token: i for i, token in enumerate(tokens)}


def _write_tokenizer(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    specials = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    config = {**specials, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


def _text_encoder(size: str, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = dict(_TEXT_REAL if size == "real" else _TEXT_TINY)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, **config))


def build_paint_unet(size: str) -> torch.nn.Module:
    """hy3dgen's UNet2p5DConditionModel with random weights (dual-stream, multiview and reference attention)."""
    from diffusers import UNet2DConditionModel
    from hy3dgen.texgen.hunyuanpaint.unet.modules import UNet2p5DConditionModel

    return UNet2p5DConditionModel(UNet2DConditionModel(**unet_config(size, delight=False))).eval()


def _shared_folders(folder: Path, size: str, pipeline_class: str, scheduler: dict[str, Any]) -> None:
    """Scheduler, text encoder, tokenizer, feature extractor and model_index.json, as every hub folder has."""
    from transformers import CLIPImageProcessor

    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler), encoding="utf-8")
    vocab_size = _write_tokenizer(folder / "tokenizer")
    _text_encoder(size, vocab_size).save_pretrained(folder / "text_encoder")
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(
        folder / "feature_extractor")
    index = {"_class_name": pipeline_class, "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "scheduler": ["diffusers", scheduler["_class_name"]], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DConditionModel"] if pipeline_class.startswith("StableDiffusion")
             else ["modules", "UNet2p5DConditionModel"]}
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")


def install_paint_models(models_dir: Path, name: str = "hunyuan3d-paint", *, size: str = "tiny", seed: int = 0) -> None:
    """Write paint model `name` and the delight model it requires under models_dir, in the hub layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    paint = get_spec(name)
    delight = get_spec(paint.requires[0])

    folder = model_dir(delight, Path(models_dir))
    _shared_folders(folder, size, "StableDiffusionInstructPix2PixPipeline", _SCHEDULER)
    UNet2DConditionModel(**unet_config(size, delight=True)).save_pretrained(folder / "unet")
    AutoencoderKL(**vae_config(size)).save_pretrained(folder / "vae")

    folder = model_dir(paint, Path(models_dir))
    _shared_folders(folder, size, "HunyuanPaintPipeline", _SCHEDULER)
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "UNet2DConditionModel", **unet_config(size, delight=False)}
    (folder / "unet" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = {key: value.contiguous() for key, value in build_paint_unet(size).state_dict().items()}
    save_file(state, folder / "unet" / "diffusion_pytorch_model.safetensors")
    turbo = name.endswith("-turbo")  # the hub's turbo folder has its VAE only as a pickle
    AutoencoderKL(**vae_config(size)).save_pretrained(folder / "vae", safe_serialization=not turbo)


def build_paint_models(size: str, *, device: str, dtype: torch.dtype, turbo: bool = False, seed: int = 0) -> PaintModels:
    """The same models built in memory (no disk), for the benchmark at real size."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        LCMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from hy3dgen.texgen.hunyuanpaint.pipeline import HunyuanPaintPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    with torch.device(device):  # random init on the GPU: seconds instead of minutes on the CPU
        delight_unet = UNet2DConditionModel(**unet_config(size, delight=True))
        delight_vae = AutoencoderKL(**vae_config(size))
        paint_unet = build_paint_unet(size)
        paint_vae = AutoencoderKL(**vae_config(size))
    scheduler_config = {k: v for k, v in _SCHEDULER.items() if not k.startswith("_")}
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = _write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    with torch.device(device):
        text_encoder = _text_encoder(size, vocab_size)
    delight = StableDiffusionInstructPix2PixPipeline(
        vae=delight_vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=delight_unet,
        scheduler=EulerAncestralDiscreteScheduler(**scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).to(device, dtype)
    scheduler_cls = LCMScheduler if turbo else EulerAncestralDiscreteScheduler
    multiview = HunyuanPaintPipeline(
        vae=paint_vae, text_encoder=None, tokenizer=None, unet=paint_unet,
        scheduler=scheduler_cls(**scheduler_config, timestep_spacing="trailing"), feature_extractor=None,
    )
    multiview.unet.to(device, dtype)
    multiview = multiview.to(device, dtype)
    for pipe in (delight, multiview):
        pipe.set_progress_bar_config(disable=True)
    real = size == "real"
    return PaintModels(
        name="hunyuan3d-paint-turbo" if turbo else "hunyuan3d-paint", delight=delight, multiview=multiview,
        turbo=turbo, steps=TURBO_STEPS if turbo else PAINT_STEPS, delight_steps=DELIGHT_STEPS,
        view_size=VIEW_SIZE if real else TINY_VIEW_SIZE, device=device, dtype=dtype,
    )
