"""Start-up self-check of the worker: fail loudly, before the first job, when something is missing.

Three checks, one log line each (`self-check <name>: ok ...` or `self-check <name>: FAILED ...`):
  weights  every file of every preloaded model (PRELOAD_MODELS, with what it requires) is under MODELS_DIR;
           a failure names the exact missing files and the download command
  storage  on RunPod a bucket must be configured (no silent local fallback there); the configured storage
           must answer (S3: head_bucket; local: the folder is writable)
  gpu      a CUDA GPU is visible when the preloaded models or RunPod need one, with enough memory for them

`check_or_exit()` is what `python handler.py` runs first: it raises SystemExit (exit status 1) with every
problem in one message. `python -m utils.selfcheck` runs the same checks alone (e.g. in `docker run`).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.download import VerificationError, check_safetensors
from models.registry import REGISTRY, ModelSpec, download_command, missing_files, model_dir, with_requirements
from pipeline.errors import StorageError
from utils.settings import Settings, SettingsError
from utils.storage import LocalStorage, S3Storage, Storage

log = logging.getLogger("selfcheck")

GIB = 1024**3

# Peak GPU memory (GiB, weights included) of one model while it runs. Shape: 4.7 GiB of weights measured on
# an H100 (DESIGN.md) plus volume decoding, target peak under 8 GB. Paint: about 14 GB with its delight model
# (paint 10 + delight 4; it requires delight, which is counted once however many paint models need it).
# VAE (0.43 GB of fp16 weights), segmentation (BiRefNet-lite, ONNX; on the CPU with the onnxruntime of the
# lock file) and multiview (Zero123++, an SD 2.x UNet at 320x320 per view) are estimates from their sizes.
# Preloaded models stay resident together, so the check adds them up (conservative: one job runs at a time).
GPU_MEMORY_GIB_BY_KIND: dict[str, float] = {
    "shape": 8.0,
    "vae": 0.5,
    "paint": 10.0,
    "delight": 4.0,
    "segmentation": 1.0,
    "multiview": 6.0,
}
GPU_MEMORY_GIB_BY_NAME: dict[str, float] = {
    "hunyuan3d-2mini": 6.0,  # 0.6B DiT instead of 1.1B
}

# RunPod's "cached models" endpoint setting puts Hugging Face repos here (HF cache layout).
RUNPOD_HF_CACHE = Path("/runpod-volume/huggingface-cache/hub")


@dataclass(frozen=True)
class Problem:
    """One failed check: which check, and a message that says what is wrong and what to do."""

    check: str  # "settings" | "weights" | "storage" | "gpu"
    message: str


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_bytes: int
    free_bytes: int


GpuProbe = Callable[[str | None], GpuInfo | None]
"""gpu_probe(settings.device) -> the GPU the worker would use, or None when no CUDA GPU is visible."""

StorageFactory = Callable[[Settings], Storage]


def cuda_probe(device: str | None) -> GpuInfo | None:
    """The CUDA device torch would use (index from DEVICE=cuda:N, else 0), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = 0
    if device and device.startswith("cuda"):
        index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    return GpuInfo(name=torch.cuda.get_device_name(index), total_bytes=int(total), free_bytes=int(free))


def selfcheck_storage(settings: Settings) -> Storage:
    """The configured storage, with S3 timeouts short enough that an unreachable endpoint fails in seconds."""
    if settings.storage == "s3":
        return S3Storage(settings, connect_timeout=5.0, read_timeout=10.0, max_attempts=2)
    return LocalStorage(settings.local_output_dir)


def default_hf_caches() -> list[Path]:
    """Hugging Face hub caches where weights may already be: HF_HUB_CACHE / HF_HOME, and RunPod's."""
    from huggingface_hub import constants

    caches = [Path(constants.HF_HUB_CACHE), RUNPOD_HF_CACHE]
    return list(dict.fromkeys(caches))


def hf_cache_snapshot(repo_id: str, revision: str, hub_cache: Path) -> Path | None:
    """The snapshot folder of `repo_id@revision` in a hub cache
    (<cache>/models--<org>--<repo>/snapshots/<commit>, the commit read from refs/<revision>), or None."""
    repo_dir = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    snapshots = sorted(p for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    return snapshots[0] if len(snapshots) == 1 else None


def _cache_hint(spec: ModelSpec, models_dir: Path, hf_caches: Iterable[Path]) -> str:
    """How to use a copy of `spec` found in a Hugging Face cache, or "" when there is none."""
    for cache in hf_caches:
        snapshot = hf_cache_snapshot(spec.repo_id, spec.revision, cache)
        if snapshot is None:
            continue
        folder = snapshot / spec.subfolder if spec.subfolder else snapshot
        if all((folder / name).is_file() for name in spec.files):
            target = Path(models_dir) / spec.org / spec.repo
            return (
                f"; {spec.repo_id} is in the Hugging Face cache at {snapshot}: link it with "
                f"`mkdir -p {target.parent} && ln -sfn {snapshot} {target}`"
            )
    return ""


def _spec_problems(spec: ModelSpec, models_dir: Path) -> list[str]:
    """Missing files (absolute paths) and unreadable safetensors of one spec."""
    missing = [str(Path(models_dir) / rel) for rel in missing_files(spec, models_dir)]
    broken = []
    for name in spec.files:
        path = model_dir(spec, models_dir) / name
        if name.endswith(".safetensors") and str(path) not in missing:
            try:
                check_safetensors(path)  # reads the header only: cheap even for 5 GB files
            except VerificationError as exc:
                broken.append(str(exc))
            except OSError as exc:
                broken.append(f"{path}: unreadable ({exc.strerror or exc})")
    return [f"missing {path}" for path in missing] + broken


def check_weights(settings: Settings, hf_caches: Sequence[Path]) -> list[Problem]:
    """Every file of every preloaded model (and what it requires) is present under MODELS_DIR."""
    models_dir = settings.models_dir
    problems: list[Problem] = []
    present: list[str] = []
    for name in settings.preload_models:
        if name not in REGISTRY:
            problems.append(Problem(
                "weights",
                f"PRELOAD_MODELS names {name!r}, which is not a model with weights; known: {', '.join(REGISTRY)} "
                "(PRELOAD_MODELS=none preloads nothing)",
            ))
            continue
        specs = with_requirements(name)
        found = [(spec, _spec_problems(spec, models_dir)) for spec in specs]
        details = [detail for _, spec_problems in found for detail in spec_problems]
        if not details:
            present.append(name)
            continue
        hints = "".join(dict.fromkeys(_cache_hint(spec, models_dir, hf_caches) for spec, bad in found if bad))
        problems.append(Problem(
            "weights",
            f"preloaded model {name!r} is not usable under MODELS_DIR={models_dir}: {'; '.join(details)}. "
            f"Fetch it with `MODELS_DIR={models_dir} {download_command([name])}`, bake it into the image "
            f"(docker build --build-arg MODELS=\"{name}\"), or point MODELS_DIR at a volume that has it{hints}",
        ))
    if not problems:
        what = ", ".join(present) if present else "none preloaded (PRELOAD_MODELS is empty)"
        log.info("self-check weights: ok (%s; MODELS_DIR=%s)", what, models_dir)
    return problems


def check_storage(settings: Settings, storage_factory: StorageFactory) -> list[Problem]:
    """On RunPod a bucket is required; the configured storage must accept writes / answer head_bucket."""
    if settings.on_runpod and settings.storage == "local":
        return [Problem(
            "storage",
            "running on RunPod with local storage: bundles would stay inside the worker and be lost. Set S3_BUCKET "
            "(or BUCKET_NAME), AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or BUCKET_ACCESS_KEY_ID/"
            "BUCKET_SECRET_ACCESS_KEY) and, for R2/MinIO, S3_ENDPOINT_URL in the endpoint's environment",
        )]
    try:
        storage_factory(settings).check()
    except StorageError as exc:
        return [Problem("storage", f"{exc.message}")]
    if settings.storage == "s3":
        where = f"s3 bucket {settings.s3_bucket!r} at {settings.s3_endpoint_url or 'AWS S3'}"
    else:
        where = f"local folder {settings.local_output_dir}"
    log.info("self-check storage: ok (%s)", where)
    return []


def gpu_need_gib(name: str) -> float | None:
    """Peak GPU memory of one registered model, or None when this module has no figure for its kind."""
    if name in GPU_MEMORY_GIB_BY_NAME:
        return GPU_MEMORY_GIB_BY_NAME[name]
    return GPU_MEMORY_GIB_BY_KIND.get(REGISTRY[name].kind)


def check_gpu(settings: Settings, gpu_probe: GpuProbe) -> list[Problem]:
    """A CUDA GPU is visible when needed, with enough free memory for all preloaded models together."""
    if settings.device == "cpu":
        log.info("self-check gpu: ok (DEVICE=cpu: models run on the CPU)")
        return []
    needs: dict[str, float] = {}
    problems: list[Problem] = []
    for name in settings.preload_models:
        if name not in REGISTRY:
            continue  # reported by the weights check
        for spec in with_requirements(name):  # what a model requires is loaded with it, once
            need = gpu_need_gib(spec.name)
            if need is None:
                problems.append(Problem(
                    "gpu",
                    f"no GPU memory figure for {spec.name!r} (kind {spec.kind!r}); "
                    "add one to GPU_MEMORY_GIB_BY_KIND in utils/selfcheck.py",
                ))
            else:
                needs[spec.name] = need
    required = sum(needs.values())
    breakdown = ", ".join(f"{name} {gib:g} GiB" for name, gib in needs.items())
    info = gpu_probe(settings.device)
    if info is None:
        reasons = []
        if required:
            reasons.append(f"the preloaded models need one ({breakdown})")
        if settings.on_runpod:
            reasons.append("this is a RunPod GPU worker")
        if settings.device:
            reasons.append(f"DEVICE={settings.device}")
        if reasons:
            problems.append(Problem(
                "gpu",
                "no CUDA GPU is visible (torch.cuda.is_available() is False) but " + " and ".join(reasons) + ". "
                "Run the container with `--gpus all`, check the host driver supports the image's CUDA "
                "(`nvidia-smi`), or set DEVICE=cpu and PRELOAD_MODELS=none for a CPU-only worker",
            ))
        elif not problems:
            log.info("self-check gpu: ok (no CUDA GPU: CPU only, no preloaded models)")
        return problems
    free_gib, total_gib = info.free_bytes / GIB, info.total_bytes / GIB
    if info.free_bytes < required * GIB:
        problems.append(Problem(
            "gpu",
            f"GPU {info.name} has {free_gib:.1f} GiB free of {total_gib:.1f} GiB, but the preloaded models need "
            f"about {required:g} GiB ({breakdown}). Choose a GPU type with at least {required:g} GiB, or preload "
            "fewer models (PRELOAD_MODELS)",
        ))
    elif not problems:
        log.info(
            "self-check gpu: ok (%s: %.1f GiB free of %.1f GiB; preloaded models need about %g GiB)",
            info.name, free_gib, total_gib, required,
        )
    return problems


def run_selfcheck(
    settings: Settings,
    *,
    gpu_probe: GpuProbe = cuda_probe,
    storage_factory: StorageFactory = selfcheck_storage,
    hf_caches: Sequence[Path] | None = None,
) -> list[Problem]:
    """Run every check, log one line per check, return the problems (empty: the worker may serve)."""
    caches = default_hf_caches() if hf_caches is None else hf_caches
    problems = (
        check_weights(settings, caches)
        + check_storage(settings, storage_factory)
        + check_gpu(settings, gpu_probe)
    )
    for problem in problems:
        log.error("self-check %s: FAILED: %s", problem.check, problem.message)
    return problems


def check_or_exit(
    env: Mapping[str, str] | None = None,
    *,
    gpu_probe: GpuProbe = cuda_probe,
    storage_factory: StorageFactory = selfcheck_storage,
    hf_caches: Sequence[Path] | None = None,
) -> Settings:
    """Read the settings from `env` (default os.environ) and run the self-check; return the settings, or raise
    SystemExit (exit status 1) with every problem in its message."""
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        log.error("self-check settings: FAILED: %s", exc)
        raise SystemExit(f"start-up self-check failed:\n  - settings: {exc}") from None
    problems = run_selfcheck(settings, gpu_probe=gpu_probe, storage_factory=storage_factory, hf_caches=hf_caches)
    if problems:
        lines = "\n".join(f"  - {p.check}: {p.message}" for p in problems)
        raise SystemExit(f"start-up self-check failed ({len(problems)} problem(s)):\n{lines}")
    return settings


if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    check_or_exit()
    print("self-check passed")
