"""Randomly initialised Hunyuan3D-2 shape models in the real on-disk layout, for tests and benchmarks.

`install_shape_model(models_dir, name)` writes `<models_dir>/<org>/<repo>/<subfolder>/{config.yaml,
model.fp16.safetensors}` for a REGISTRY shape model (and the VAE folders it requires), with the same
config structure and checkpoint key layout as Tencent's files, so the worker loads them through hy3dgen's
real `from_pretrained` path. `size="tiny"` shrinks every width and depth; `size="real"` keeps the real
v2-0 dimensions (the benchmark uses them with `build_pipeline`, which skips the disk). The stand-alone
FlashVDM VAE (`hunyuan3d-2-vae-turbo`, which the turbo and fast models decode with) has its own, lighter
geometry decoder (`vae_params(size, vae=...)`).

Random weights make the VAE's geometry decoder output noise. `rewire_geo_decoder` sets its input and
output layers so the field it returns is the smooth closed function

    gain * (cos x + cos y + cos z - level  (+ tilt * sin y))

with or without the decoder's final LayerNorm, while the attention and MLP branches still add a small
latent-dependent term: data flows through every layer, marching cubes finds one closed surface (the same
one for both VAEs), and different seeds give slightly different meshes.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from models.registry import ModelSpec, model_dir, with_requirements
from models.torchvision_compat import import_shapegen

FIELD_LEVEL = 2.7  # surface where cos x + cos y + cos z = 2.7: a rounded box reaching +-0.8 on the axes
DEFAULT_GAIN = 3.0  # logits per unit of the field: gentle, so every decoder sees a wide band near the surface
_BIG = 20.0  # constant channels that pin the LayerNorm scale, so the field survives ln_post

_DINO_GIANT = {
    "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0, "hidden_size": 1536, "image_size": 518, "initializer_range": 0.02,
    "layer_norm_eps": 1.0e-6, "layerscale_value": 1.0, "mlp_ratio": 4, "model_type": "dinov2",
    "num_attention_heads": 24, "num_channels": 3, "num_hidden_layers": 40, "patch_size": 14,
    "qkv_bias": True, "torch_dtype": "float32", "use_swiglu_ffn": True,
}
_DINO_TINY = {**_DINO_GIANT, "hidden_size": 32, "image_size": 28, "num_attention_heads": 2,
              "num_hidden_layers": 1, "mlp_ratio": 2}

_VAE_REAL = {"num_latents": 3072, "embed_dim": 64, "num_freqs": 8, "include_pi": False, "heads": 16,
             "width": 1024, "num_decoder_layers": 16, "qkv_bias": False, "qk_norm": True,
             "scale_factor": 0.9990943042622529}
# 4 heads of 16: the turbo geometry decoder (heads // 2, width // 2) keeps 2 heads of 16, as the real one keeps
# head width 64 (hy3dgen's FlashVDM attention squeezes away a lone head and then fails).
_VAE_TINY = {**_VAE_REAL, "num_latents": 24, "embed_dim": 8, "num_freqs": 4, "heads": 4, "width": 64,
             "num_decoder_layers": 1, "scale_factor": 1.0}

# What each stand-alone REGISTRY VAE changes in the ShapeVAE params. The FlashVDM ("turbo") VAE's geometry
# decoder is lighter: width and heads halved (a latents_proj Linear 1024 -> 512 feeds it), MLP expand 1, no
# ln_post (which also turns qk_norm off in that block). Not copied from Tencent's config.yaml (not at hand):
# it is what ComfyUI (inferring from the weights) and kijai's ComfyUI-Hunyuan3DWrapper ("Turbo VAE detected")
# build for Tencent's turbo VAE weights.
_VAE_GEO_DECODER = {
    "hunyuan3d-2-vae-turbo": {"geo_decoder_downsample_ratio": 2, "geo_decoder_mlp_expand_ratio": 1,
                              "geo_decoder_ln_post": False},
}

_DIT_REAL = {"in_channels": 64, "context_in_dim": 1536, "hidden_size": 1024, "mlp_ratio": 4.0, "num_heads": 16,
             "depth": 16, "depth_single_blocks": 32, "axes_dim": [64], "theta": 10000, "qkv_bias": True}
_DIT_TINY = {**_DIT_REAL, "in_channels": 8, "context_in_dim": 32, "hidden_size": 32, "mlp_ratio": 2.0,
             "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16]}

# Which config variant each REGISTRY shape model uses.
FAMILY = {
    "hunyuan3d-2": "standard",
    "hunyuan3d-2-fast": "fast",
    "hunyuan3d-2-turbo": "turbo",
    "hunyuan3d-2mini": "standard",
    "hunyuan3d-2mv": "multiview",
}


def vae_params(size: str, vae: str | None = None) -> dict[str, Any]:
    """ShapeVAE params: the VAE inside the DiT files (`vae` None) or stand-alone REGISTRY VAE `vae` (a KeyError
    for one whose decoder is not described in _VAE_GEO_DECODER, rather than a silently wrong config)."""
    params = copy.deepcopy(_VAE_REAL if size == "real" else _VAE_TINY)
    if vae is not None:
        params.update(_VAE_GEO_DECODER[vae])
    return params


def vae_config(vae: str, size: str = "tiny") -> dict[str, Any]:
    """The config.yaml content of stand-alone REGISTRY VAE `vae` (`target`/`params`, as Tencent's)."""
    return {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": vae_params(size, vae)}


def dit_config(name: str, size: str = "tiny") -> dict[str, Any]:
    """The config.yaml content of shape model `name` (structure as Tencent's; dimensions by `size`)."""
    family = FAMILY[name]
    real = size == "real"
    model = copy.deepcopy(_DIT_REAL if real else _DIT_TINY)
    model["guidance_embed"] = family in ("fast", "turbo")
    dino = copy.deepcopy(_DINO_GIANT if real else _DINO_TINY)
    encoder: dict[str, Any] = {"type": "DinoImageEncoder", "kwargs": {"config": dino, "image_size": dino["image_size"]}}
    processor = {"target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
                 "params": {"size": 512 if real else 64, "border_ratio": 0.15}}
    if family == "multiview":
        encoder["type"] = "DinoImageEncoderMV"
        encoder["kwargs"].update(use_cls_token=True, view_num=4)
        processor["target"] = "hy3dgen.shapegen.preprocessors.MVImageProcessorV2"
    scheduler: dict[str, Any] = {"target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
                                 "params": {"num_train_timesteps": 1000}}
    if family == "turbo":
        scheduler = {"target": "hy3dgen.shapegen.schedulers.ConsistencyFlowMatchEulerDiscreteScheduler",
                     "params": {"num_train_timesteps": 1000, "pcm_timesteps": 100}}
    return {
        "model": {"target": "hy3dgen.shapegen.models.Hunyuan3DDiT", "params": model},
        "vae": {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": vae_params(size)},
        "conditioner": {"target": "hy3dgen.shapegen.models.SingleImageEncoder",
                        "params": {"main_image_encoder": encoder}},
        "scheduler": scheduler,
        "image_processor": processor,
    }


@torch.no_grad()
def rewire_geo_decoder(vae: torch.nn.Module, level: float = FIELD_LEVEL, tilt: float = 0.0,
                       wobble: float = 0.1, gain: float = DEFAULT_GAIN) -> None:
    """Make `vae.geo_decoder` return gain * (cos x + cos y + cos z - level + tilt * sin y) (+ a small term,
    scaled by `wobble`, that depends on the latents through the attention and MLP branches). With the
    default gain the field leaves FlashVDM's |logit| < 0.95 band about 0.43 away from the surface, so
    coarse-to-fine decoding skips cells only far from it; a trained decoder's logits are much steeper
    (bench/shape_gpu.py's --field-gain). `gain` scales the whole output, so the surface (the zero set) is
    the same at every gain. Works for the standard decoder (ln_post, width 1024) and the turbo one (no
    ln_post, width 512): output_proj undoes ln_post's scale where there is one, so both return the same
    field up to their own wobble."""
    decoder = vae.geo_decoder
    embedder = decoder.fourier_embedder
    if embedder.num_freqs < 1 or not torch.allclose(embedder.frequencies[:1], torch.ones(1)):
        raise ValueError("rewiring needs a Fourier embedder whose first frequency is 1 (include_pi: false)")
    freqs = embedder.num_freqs
    cos_at = [3 + 3 * freqs + axis * freqs for axis in range(3)]  # cos(1 * x_axis) in the embedding
    sin_y = 3 + 1 * freqs  # sin(1 * y)
    proj = decoder.query_proj
    width = proj.out_features
    row = torch.zeros(proj.in_features)
    row[cos_at] = 1.0
    row[sin_y] = tilt
    proj.weight.zero_()
    proj.bias.zero_()
    # channels 0/1 carry +field/-field, 2/3 carry +big/-big; the block's residual stream passes them on with
    # only the wobble added. They sum to zero and big >> field, so ln_post (standard decoder) divides them by
    # a nearly constant big * sqrt(2 / width).
    proj.weight[0], proj.bias[0] = row, -level
    proj.weight[1], proj.bias[1] = -row, level
    proj.bias[2], proj.bias[3] = _BIG, -_BIG
    block = decoder.cross_attn_decoder
    for layer in (block.attn.c_proj, block.mlp.c_proj):
        layer.weight.mul_(wobble)
        layer.bias.zero_()
    if decoder.enable_ln_post:
        decoder.ln_post.weight.fill_(1.0)
        decoder.ln_post.bias.zero_()
    decoder.output_proj.weight.zero_()
    decoder.output_proj.bias.zero_()
    # With ln_post, channel 0 arrives divided by ln_post's scale: undo it. Without, it arrives as it is.
    decoder.output_proj.weight[0, 0] = gain * _BIG * math.sqrt(2.0 / width) if decoder.enable_ln_post else gain


def _instantiate(section: dict[str, Any]) -> Any:
    pipelines = import_shapegen().pipelines
    return pipelines.instantiate_from_config(section)


def build_parts(config: dict[str, Any], seed: int = 0, tilt: float = 0.0,
                gain: float = DEFAULT_GAIN) -> dict[str, Any]:
    """Instantiate model/vae/conditioner/scheduler/image_processor from a config (random weights)."""
    torch.manual_seed(seed)
    parts = {key: _instantiate(config[key]) for key in ("model", "vae", "conditioner", "scheduler", "image_processor")}
    rewire_geo_decoder(parts["vae"], tilt=tilt, gain=gain)
    return parts


def build_vae(config: dict[str, Any], seed: int = 0, tilt: float = 0.0, gain: float = DEFAULT_GAIN) -> Any:
    """A stand-alone ShapeVAE from `vae_config(...)` with random weights, rewired (write_vae saves one)."""
    torch.manual_seed(seed + 1)
    vae = _instantiate(config)
    rewire_geo_decoder(vae, tilt=tilt, gain=gain)
    return vae


def build_pipeline(config: dict[str, Any], device: str, dtype: torch.dtype, seed: int = 0,
                   gain: float = DEFAULT_GAIN, vae: dict[str, Any] | None = None) -> Any:
    """A Hunyuan3DDiTFlowMatchingPipeline built in memory (no files), on `device` in `dtype`; `gain` as in
    `rewire_geo_decoder`. `vae`: a stand-alone VAE's config (`vae_config(spec.vae, size)`) whose VAE
    replaces the one in `config`, as models/manager.py swaps in a shape spec's `vae`."""
    shapegen = import_shapegen()
    with torch.device(device):
        parts = build_parts(config, seed=seed, gain=gain)
        if vae is not None:
            parts["vae"] = build_vae(vae, seed=seed, gain=gain)
    return shapegen.Hunyuan3DDiTFlowMatchingPipeline(**parts, device=device, dtype=dtype)


def _save(folder: Path, config: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tensors = {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}
    save_file(tensors, str(folder / "model.fp16.safetensors"))


def write_dit(spec: ModelSpec, models_dir: Path, seed: int = 0, tilt: float = 0.0, size: str = "tiny",
              gain: float = DEFAULT_GAIN) -> Path:
    """Write a DiT folder (tiny, or `size` "real": Tencent's dimensions, random weights): one safetensors file
    with model./vae./conditioner. prefixed keys."""
    config = dit_config(spec.name, size)
    parts = build_parts(config, seed=seed, tilt=tilt, gain=gain)
    state = {}
    for prefix in ("model", "vae", "conditioner"):
        state.update({f"{prefix}.{key}": value for key, value in parts[prefix].state_dict().items()})
    folder = model_dir(spec, models_dir)
    _save(folder, config, state)
    return folder


def write_vae(spec: ModelSpec, models_dir: Path, seed: int = 0, tilt: float = 0.0, size: str = "tiny",
              gain: float = DEFAULT_GAIN) -> Path:
    """Write a stand-alone ShapeVAE folder for VAE spec `spec` (config `target`/`params`, unprefixed keys)."""
    config = vae_config(spec.name, size)
    vae = build_vae(config, seed=seed, tilt=tilt, gain=gain)
    folder = model_dir(spec, models_dir)
    _save(folder, config, vae.state_dict())
    return folder


def install_shape_model(models_dir: Path, name: str, seed: int = 0, tilt: float = 0.0, size: str = "tiny",
                        gain: float = DEFAULT_GAIN) -> list[Path]:
    """Write shape model `name` and every model it requires under `models_dir`; return the folders."""
    folders = []
    for spec in with_requirements(name):
        writer = write_vae if spec.kind == "vae" else write_dit
        folders.append(writer(spec, models_dir, seed=seed, tilt=tilt, size=size, gain=gain))
    return folders
