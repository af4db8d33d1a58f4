"""The models this worker knows: where each lives on the Hugging Face hub, which files it needs, and
how it is sampled by default.

Weights live at `<MODELS_DIR>/<org>/<repo>/<subfolder>/<file>` (the hub layout hy3dgen reads through
HY3DGEN_MODELS). Only safetensors and configs are listed: the hub repos also hold `.ckpt` copies of the
same weights, which are never fetched.

Adding a model is one `_register(ModelSpec(...))` call; `requires` names other entries a model needs
(the turbo/fast shape models decode with the FlashVDM-tuned VAE, which lives in its own subfolder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The one place each licence is written: README.md, DEPLOYMENT_CHECKLIST.md, `python -m models.download --list`
# and meta.json show these strings as they are (tests/test_readme.py checks the documents). Every Hunyuan3D-2
# entry, shape and paint alike, comes from the tencent/Hunyuan3D-2* hub repos, whose model cards name
# tencent-hunyuan-community and ship the Tencent Hunyuan 3D 2.0 Community License Agreement.
HUNYUAN_LICENCE = (
    "Tencent Hunyuan 3D 2.0 Community License (tencent-hunyuan-community): not for use in the EU, UK or South Korea"
)
DIT_FILES = ("config.yaml", "model.fp16.safetensors")

# The hub's branch; `python -m models.download` records the commit it resolved to next to the files.
MAIN = "main"
MANIFEST = ".download.json"  # written by models/download.py into each model folder


@dataclass(frozen=True)
class SamplerDefaults:
    """Per-model defaults for the shape sampler; requests may override steps, guidance and octree."""

    steps: int
    guidance_scale: float
    octree_resolution: int = 384
    # Query points per volume-decoding batch: memory vs. speed (8000, hy3dgen's, is 10-15 % slower on an
    # H100 at octree 384; 65536 adds under 0.1 GiB to the peak, BENCHMARKS.md).
    num_chunks: int = 65_536
    flashvdm: bool = False  # decode only near the surface (FlashVDM), with the model's turbo VAE

    @property
    def decoder(self) -> str:
        """pipeline.hunyuan_sampler's volume decoder: FlashVDM's where the VAE is tuned for it, else the
        exact coarse-to-fine one (same mesh as decoding every grid point, a small fraction of the queries)."""
        return "flashvdm" if self.flashvdm else "hierarchical"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "shape" | "vae" | "paint" | "delight" | "segmentation" | "multiview"
    repo_id: str  # "<org>/<repo>" on the Hugging Face hub
    revision: str  # branch, tag or commit of the hub repo
    subfolder: str  # folder inside the repo ("" for the repo root)
    files: tuple[str, ...]  # paths relative to the subfolder
    size_bytes: int  # download size; v2-0 family from its parameter count (x 2 bytes), mini/mv estimated
    licence: str
    description: str = ""
    requires: tuple[str, ...] = ()  # other REGISTRY entries this model needs at run time
    sampler: SamplerDefaults | None = None  # shape models only
    multiview: bool = False  # conditions on front/left/back/right views
    vae: str | None = None  # REGISTRY name of the VAE to decode with instead of the one in the DiT file

    @property
    def org(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def repo(self) -> str:
        return self.repo_id.split("/", 1)[1]


REGISTRY: dict[str, ModelSpec] = {}


def _register(spec: ModelSpec) -> None:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    for needed in spec.requires:
        if needed not in REGISTRY:
            raise ValueError(f"model {spec.name!r} requires {needed!r}, which is not registered (register it first)")
    REGISTRY[spec.name] = spec


def model_dir(spec: ModelSpec, models_dir: Path) -> Path:
    """<MODELS_DIR>/<org>/<repo>/<subfolder>."""
    base = Path(models_dir) / spec.org / spec.repo
    return base / spec.subfolder if spec.subfolder else base


def missing_files(spec: ModelSpec, models_dir: Path) -> list[str]:
    """Files of `spec` (paths relative to MODELS_DIR) that are absent or empty."""
    folder = model_dir(spec, models_dir)
    missing = []
    for name in spec.files:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            missing.append(str(path.relative_to(models_dir)))
    return missing


def installed_commit(spec: ModelSpec, models_dir: Path) -> str | None:
    """The hub commit the files on disk came from, when models/download.py fetched them."""
    path = model_dir(spec, models_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("commit")


def with_requirements(name: str) -> list[ModelSpec]:
    """The spec called `name` and everything it requires, requirements first, each once."""
    ordered: list[ModelSpec] = []

    def visit(current: str) -> None:
        spec = get_spec(current)
        for needed in spec.requires:
            visit(needed)
        if spec not in ordered:
            ordered.append(spec)

    visit(name)
    return ordered


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def download_command(names: list[str] | tuple[str, ...]) -> str:
    return "python -m models.download " + " ".join(names)


_GB = 1_000_000_000

# --- FlashVDM VAEs (decoders tuned for surface-only decoding; used by the turbo and fast DiTs) ---------
_register(ModelSpec(
    name="hunyuan3d-2-vae-turbo",
    kind="vae",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-vae-v2-0-turbo",
    files=DIT_FILES,
    size_bytes=int(0.43 * _GB),
    licence=HUNYUAN_LICENCE,
    description="ShapeVAE decoder fine-tuned for FlashVDM decoding (Hunyuan3D-2 latents)",
))

# --- shape generators ------------------------------------------------------------------------------------
# Each DiT file holds the denoiser, the ShapeVAE and the DINOv2 image encoder ("model.", "vae.",
# "conditioner." key prefixes); config.yaml says how to build them. Defaults follow Tencent's demos.
_register(ModelSpec(
    name="hunyuan3d-2",
    kind="shape",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-dit-v2-0",
    files=DIT_FILES,
    size_bytes=int(4.93 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-DiT v2.0 (1.1B), single image, 50 steps with classifier-free guidance",
    sampler=SamplerDefaults(steps=50, guidance_scale=5.0, octree_resolution=384),
))
_register(ModelSpec(
    name="hunyuan3d-2-fast",
    kind="shape",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-dit-v2-0-fast",
    files=DIT_FILES,
    size_bytes=int(4.93 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-DiT v2.0, guidance-distilled (one DiT pass per step), FlashVDM decoding",
    requires=("hunyuan3d-2-vae-turbo",),
    sampler=SamplerDefaults(steps=20, guidance_scale=5.0, octree_resolution=384, flashvdm=True),
    vae="hunyuan3d-2-vae-turbo",
))
_register(ModelSpec(
    name="hunyuan3d-2-turbo",
    kind="shape",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-dit-v2-0-turbo",
    files=DIT_FILES,
    size_bytes=int(4.93 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-DiT v2.0, step-distilled (consistency flow matching), 5 steps, FlashVDM decoding",
    requires=("hunyuan3d-2-vae-turbo",),
    sampler=SamplerDefaults(steps=5, guidance_scale=5.0, octree_resolution=384, flashvdm=True),
    vae="hunyuan3d-2-vae-turbo",
))
_register(ModelSpec(
    name="hunyuan3d-2mini",
    kind="shape",
    repo_id="tencent/Hunyuan3D-2mini",
    revision=MAIN,
    subfolder="hunyuan3d-dit-v2-mini",
    files=DIT_FILES,
    size_bytes=int(3.9 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-DiT v2 mini (0.6B), single image, 50 steps with classifier-free guidance",
    sampler=SamplerDefaults(steps=50, guidance_scale=5.0, octree_resolution=384),
))
_register(ModelSpec(
    name="hunyuan3d-2mv",
    kind="shape",
    repo_id="tencent/Hunyuan3D-2mv",
    revision=MAIN,
    subfolder="hunyuan3d-dit-v2-mv",
    files=DIT_FILES,
    size_bytes=int(4.6 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-DiT v2 multi-view: front/left/back/right pictures, 50 steps with guidance",
    sampler=SamplerDefaults(steps=50, guidance_scale=5.0, octree_resolution=384),
    multiview=True,
))


def shape_model_names() -> list[str]:
    return [name for name, spec in REGISTRY.items() if spec.kind == "shape"]


# --- texture: Hunyuan3D-Paint 2.0 (multiview albedo) and its delight model ---------------------------
# Only what models/paint_loader.py reads. The hub folders also hold a text encoder, tokenizer and
# feature extractor that HunyuanPaintPipeline never runs (its prompt embeddings are learned tensors in the
# UNet), `.bin` twins of the paint UNet/VAE safetensors, and unet/modules.py (we use hy3dgen's copy of
# that code, never code from the weights folder). The turbo folder ships its VAE only as a `.bin`.
_PAINT_CORE = ("scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
               "vae/config.json")
_register(ModelSpec(
    name="hunyuan3d-delight",
    kind="delight",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-delight-v2-0",
    files=("scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
           "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
           "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
           "vae/config.json", "vae/diffusion_pytorch_model.safetensors"),
    size_bytes=int(2.6 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D delight v2.0: InstructPix2Pix (SD 2.x) that removes lighting and shadows from the input view",
))
_register(ModelSpec(
    name="hunyuan3d-paint",
    kind="paint",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-paint-v2-0",
    files=_PAINT_CORE + ("vae/diffusion_pytorch_model.safetensors",),
    size_bytes=int(3.9 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-Paint v2.0: 2.5D multiview diffusion (dual-stream SD 2.x UNet), six views, 30 steps with guidance",
    requires=("hunyuan3d-delight",),
))
_register(ModelSpec(
    name="hunyuan3d-paint-turbo",
    kind="paint",
    repo_id="tencent/Hunyuan3D-2",
    revision=MAIN,
    subfolder="hunyuan3d-paint-v2-0-turbo",
    files=_PAINT_CORE + ("vae/diffusion_pytorch_model.bin",),
    size_bytes=int(3.9 * _GB),
    licence=HUNYUAN_LICENCE,
    description="Hunyuan3D-Paint v2.0 turbo: step-distilled multiview diffusion, 10 LCM steps without guidance",
    requires=("hunyuan3d-delight",),
))

# --- background removal (segmentation) -------------------------------------------------------------------
_register(ModelSpec(
    name="birefnet-lite",
    kind="segmentation",
    repo_id="onnx-community/BiRefNet_lite-ONNX",
    revision=MAIN,
    subfolder="",
    files=("onnx/model.onnx",),
    size_bytes=int(0.224 * _GB),
    licence="MIT (BiRefNet, ZhengPeng7/BiRefNet_lite; ONNX export by onnx-community)",
    description="BiRefNet-lite salient-object segmentation, ONNX fp32, 1024x1024 input, ImageNet normalisation",
))

# --- view synthesis --------------------------------------------------------------------------------------
_register(ModelSpec(
    name="zero123plus-v1.2",
    kind="multiview",
    repo_id="sudo-ai/zero123plus-v1.2",
    revision=MAIN,
    subfolder="",
    files=(
        "model_index.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "vision_encoder/config.json", "vision_encoder/model.safetensors",
        "scheduler/scheduler_config.json",
        "feature_extractor_clip/preprocessor_config.json",
        "feature_extractor_vae/preprocessor_config.json",
    ),
    size_bytes=int(3.9 * _GB),  # estimated from 1.92B parameters at 2 bytes
    licence="CC-BY-NC-4.0 (weights: non-commercial use only, per SUDO-AI-3D/zero123plus; its code is Apache-2.0)",
    description="Zero123++ v1.2: 6 views (azimuth 30..330 step 60, elevation 20/-10, 30 deg FOV) from one picture",
))
