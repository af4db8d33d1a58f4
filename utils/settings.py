"""Worker configuration, read once from the environment (CONTRACT.md section 4)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


DEFAULT_SHAPE_MODEL = "hunyuan3d-2"
DEFAULT_PAINT_MODEL = "hunyuan3d-paint"  # what the default request textures with


class SettingsError(ValueError):
    """An environment variable has a bad value; the message names it."""


def _number(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum:g}")
    return value


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("/models")
    storage: str = "local"  # "local" or "s3"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    presign_seconds: int = 604800
    local_output_dir: Path = Path("outputs")
    max_seconds: float = 180.0
    allow_private_urls: bool = False  # let image URLs reach private/loopback/link-local hosts
    max_download_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    fetch_timeout_seconds: float = 20.0
    preload_models: tuple[str, ...] = ()
    device: str | None = None  # force "cpu" / "cuda"; None = pick automatically
    cuda_graphs: bool = True  # replay the de-light UNet and the shape DiT's steps from CUDA graphs (faster)
    torch_compile: bool = True  # compile the shape DiT's blocks on CUDA (models/dit_compile.py; ~1.7x faster)
    on_runpod: bool = False  # RunPod sets RUNPOD_ENDPOINT_ID / RUNPOD_POD_ID in its workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        bucket = _first(env, "S3_BUCKET", "BUCKET_NAME")
        storage = (env.get("STORAGE") or ("s3" if bucket else "local")).strip().lower()
        if storage not in ("local", "s3"):
            raise SettingsError(f"STORAGE={storage!r} must be 'local' or 's3'")
        if storage == "s3" and not bucket:
            raise SettingsError("STORAGE=s3 needs S3_BUCKET")
        on_runpod = bool(env.get("RUNPOD_ENDPOINT_ID") or env.get("RUNPOD_POD_ID"))
        # Unset: a RunPod worker preloads what the default request runs, shape and paint (cold start before
        # the first job, and a loud start-up failure when weights are missing); elsewhere models load on first use.
        preload = env.get("PRELOAD_MODELS")
        if preload is None:
            preload = f"{DEFAULT_SHAPE_MODEL} {DEFAULT_PAINT_MODEL}" if on_runpod else ""
        return cls(
            models_dir=Path(env.get("MODELS_DIR") or "/models"),
            storage=storage,
            s3_bucket=bucket,
            s3_prefix=(env.get("S3_PREFIX") or "").strip("/"),
            s3_endpoint_url=_first(env, "S3_ENDPOINT_URL", "BUCKET_ENDPOINT_URL"),
            aws_access_key_id=_first(env, "AWS_ACCESS_KEY_ID", "BUCKET_ACCESS_KEY_ID"),
            aws_secret_access_key=_first(env, "AWS_SECRET_ACCESS_KEY", "BUCKET_SECRET_ACCESS_KEY"),
            aws_region=_first(env, "AWS_REGION", "AWS_DEFAULT_REGION"),
            presign_seconds=int(_number(env, "PRESIGN_SECONDS", 604800, 1)),
            local_output_dir=Path(env.get("LOCAL_OUTPUT_DIR") or "outputs"),
            max_seconds=_number(env, "MAX_SECONDS", 180.0, 1),
            allow_private_urls=_bool(env.get("ALLOW_PRIVATE_URLS")),
            max_download_bytes=int(_number(env, "MAX_DOWNLOAD_BYTES", 50 * 1024 * 1024, 1024)),
            max_image_pixels=int(_number(env, "MAX_IMAGE_PIXELS", 40_000_000, 1024)),
            fetch_timeout_seconds=_number(env, "FETCH_TIMEOUT_SECONDS", 20.0, 0.1),
            preload_models=tuple(p for p in preload.replace(",", " ").split() if p and p != "none"),
            device=(env.get("DEVICE") or None),
            cuda_graphs=_bool(env.get("CUDA_GRAPHS"), default=True),
            torch_compile=_bool(env.get("TORCH_COMPILE"), default=True),
            on_runpod=on_runpod,
        )
