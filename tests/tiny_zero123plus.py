"""A randomly initialised Zero123++ v1.2 written in the hub repo's layout under a MODELS_DIR.

Same folders, file names and config keys as sudo-ai/zero123plus-v1.2 (diffusers `save_pretrained` of each
part, a CLIP BPE tokenizer folder, model_index.json with 77 ramping coefficients). size="tiny" (tests) is far
smaller, so the real loader and sampler run on CPU in a second or two; size="real" has the real architecture
(Stable Diffusion 2 UNet and VAE, OpenCLIP ViT-H text and vision towers: 1.9B parameters) for benchmarks. The
tokenizer is a few-token BPE either way: only the empty prompt is ever encoded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from models.registry import get_spec, model_dir
from models.zero123plus import ZERO123PLUS

PROMPT_TOKENS = 77
WIDTH = 32  # tiny text/vision hidden size = UNet cross-attention size

# Real-size architecture (sizes from the public SD2 / OpenCLIP ViT-H configs), random weights.
REAL_UNET = dict(
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
REAL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=768,
)
REAL_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                 num_attention_heads=16, hidden_act="gelu", projection_dim=1024)
REAL_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")


def _tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer with a handful of tokens (the empty prompt only needs the special ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": PROMPT_TOKENS, "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))


def install_tiny_zero123plus(models_dir: Path, *, seed: int = 0, size: str = "tiny",
                             dtype: torch.dtype = torch.float32) -> Path:
    """Write the model; return its folder. size: "tiny" (tests) or "real" (real architecture, benchmarks)."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    real = size == "real"
    torch.manual_seed(seed)
    folder = model_dir(get_spec(ZERO123PLUS), models_dir)
    unet = UNet2DConditionModel(**REAL_UNET) if real else UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(**REAL_VAE) if real else AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
        norm_num_groups=8,
    )
    ids = dict(max_position_embeddings=PROMPT_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text = CLIPTextModel(CLIPTextConfig(**REAL_TEXT, **ids) if real else CLIPTextConfig(
        vocab_size=6, hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **ids))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**REAL_VISION) if real else CLIPVisionConfig(
        hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=WIDTH))
    for module, name in ((unet, "unet"), (vae, "vae"), (text, "text_encoder"), (vision, "vision_encoder")):
        (module if dtype == torch.float32 else module.to(dtype)).save_pretrained(folder / name)
    _tokenizer(folder / "tokenizer")
    vae_side = 320 if real else 16  # the condition picture's edge = the output views' edge
    clip_side = 224 if real else 32
    EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction",
    ).save_pretrained(folder / "scheduler")
    CLIPImageProcessor(size={"shortest_edge": clip_side},
                       crop_size={"height": clip_side, "width": clip_side}).save_pretrained(folder / "feature_extractor_clip")
    CLIPImageProcessor(size={"shortest_edge": vae_side}, crop_size={"height": vae_side, "width": vae_side},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.8, 0.8, 0.8]).save_pretrained(
        folder / "feature_extractor_vae")
    ramp = torch.linspace(0.0, 1.0, PROMPT_TOKENS).tolist()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero123PlusPipeline",
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": ramp,
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    }, indent=2))
    return folder
