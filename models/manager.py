"""Loads model weights once per process and keeps them.

The device and dtype are chosen once: CUDA with fp16 when a GPU is visible (the weights ship as fp16),
CPU with fp32 otherwise; `Settings.device` (DEVICE) overrides the device. Shape pipelines are built by
hy3dgen's own `from_pretrained` from `<MODELS_DIR>/<org>/<repo>/<subfolder>/` (hy3dgen finds that folder
through HY3DGEN_MODELS, set only while it loads). Files are checked first, so a missing model is a clear
ModelUnavailableError naming the files and the download command, never a hub download at run time.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from models.dit_compile import compile_dit_blocks, is_compiled, uncompile_dit_blocks
from models.dit_forward import disable_step_graphs, enable_step_graphs, step_graphs_enabled
from models.registry import (
    ModelSpec,
    download_command,
    get_spec,
    installed_commit,
    missing_files,
    with_requirements,
)
from models.torchvision_compat import import_shapegen
from pipeline.errors import ModelUnavailableError
from utils.settings import Settings

log = logging.getLogger(__name__)
_ENV_LOCK = threading.Lock()


def pick_device(requested: str | None) -> str:
    """`requested` when given (checked), else "cuda" when a GPU is visible, else "cpu"."""
    if requested:
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"DEVICE={requested!r} but this machine has no usable CUDA device")
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


@contextmanager
def _hy3dgen_models_dir(models_dir: Path) -> Iterator[None]:
    """hy3dgen reads its weights root from HY3DGEN_MODELS at load time; point it at MODELS_DIR meanwhile."""
    with _ENV_LOCK:
        previous = os.environ.get("HY3DGEN_MODELS")
        os.environ["HY3DGEN_MODELS"] = str(models_dir)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("HY3DGEN_MODELS", None)
            else:
                os.environ["HY3DGEN_MODELS"] = previous


class ModelManager:
    """One per worker process. `lock` serialises model use: hy3dgen's schedulers keep per-call state."""

    def __init__(self, settings: Settings, dtype: torch.dtype | None = None) -> None:
        self.models_dir = Path(settings.models_dir)
        self.device: str = pick_device(settings.device)
        self.dtype: torch.dtype = dtype or pick_dtype(self.device)
        self.cuda_graphs = settings.cuda_graphs
        self.torch_compile = settings.torch_compile
        self.lock = threading.RLock()
        self._pipelines: dict[str, Any] = {}

    def require(self, name: str) -> list[ModelSpec]:
        """The specs `name` needs, all present on disk; otherwise ModelUnavailableError saying what to do
        (its stage is left for run_pipeline to fill in with the stage that asked)."""
        try:
            specs = with_requirements(name)
        except KeyError as exc:
            raise ModelUnavailableError(str(exc.args[0])) from None
        missing = [path for spec in specs for path in missing_files(spec, self.models_dir)]
        if missing:
            raise ModelUnavailableError(
                f"model {name!r} is not installed: missing {', '.join(missing)} under MODELS_DIR={self.models_dir}; "
                f"fetch it with `{download_command([name])}` (with MODELS_DIR set)"
            )
        return specs

    def shape_pipeline(self, name: str) -> Any:
        """The loaded hy3dgen pipeline for shape model `name` (loaded on first use, then kept)."""
        with self.lock:
            if name not in self._pipelines:
                try:
                    spec = self.require(name)[-1]
                except ModelUnavailableError as err:
                    err.stage = "mesh"  # a shape model is always the mesh stage's
                    raise
                if spec.kind != "shape":
                    raise ModelUnavailableError(f"{name!r} is a {spec.kind} model, not a shape model", stage="mesh")
                started = time.monotonic()
                self._pipelines[name] = self._load_shape(spec)
                log.info("loaded shape model %s (%s) on %s %s in %.1f s", name, _where(spec), self.device,
                         str(self.dtype).removeprefix("torch."), time.monotonic() - started)
            return self._pipelines[name]

    def _load_shape(self, spec: ModelSpec) -> Any:
        shapegen = import_shapegen()
        with _hy3dgen_models_dir(self.models_dir):
            pipe = shapegen.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(
                spec.repo_id, subfolder=spec.subfolder, device=self.device, dtype=self.dtype,
                use_safetensors=True, variant="fp16",
            )
            if spec.vae is not None:
                vae_spec = get_spec(spec.vae)
                pipe.vae = shapegen.models.ShapeVAE.from_pretrained(
                    vae_spec.repo_id, subfolder=vae_spec.subfolder, device=self.device, dtype=self.dtype,
                    use_safetensors=True, variant="fp16",
                )
        if spec.sampler is not None and spec.sampler.flashvdm:
            # mc_algo "mc": scikit-image marching cubes ("dmc" needs the diso CUDA extension).
            pipe.vae.enable_flashvdm_decoder(enabled=True, adaptive_kv_selection=True, topk_mode="mean", mc_algo="mc")
        if self.device.startswith("cuda") and (self.torch_compile or self.cuda_graphs):
            speed_up_dit(pipe, spec, torch_compile=self.torch_compile, cuda_graphs=self.cuda_graphs)
        return pipe

    def preload(self, names: Iterable[str]) -> None:
        """Load models at worker start. A missing model is logged (with the fix) and skipped, so the
        worker still serves the jobs it can; a job asking for it gets the same message."""
        loaded: list[str] = []
        for name in names:
            try:
                self.load(name)
                loaded.append(name)
            except ModelUnavailableError as exc:
                log.error("not preloading %s: %s", name, exc.message)
        log.info("models loaded at start-up: %s", ", ".join(loaded) or "none")

    def load(self, name: str) -> None:
        """Load model `name` now, whatever its kind (shape or paint, with what it requires)."""
        try:
            kind = get_spec(name).kind
        except KeyError as exc:
            raise ModelUnavailableError(str(exc.args[0])) from None
        if kind == "paint":
            from models.paint_loader import paint_models  # it builds on this module

            paint_models(self, name)
        else:
            self.shape_pipeline(name)

    def loaded(self) -> list[str]:
        """The shape pipelines loaded so far (paint models are cached by models/paint_loader.py)."""
        return list(self._pipelines)

    def describe(self, name: str) -> dict[str, Any]:
        """What meta.json records about a model."""
        spec = get_spec(name)
        info: dict[str, Any] = {
            "name": spec.name,
            "repo_id": spec.repo_id,
            "revision": spec.revision,
            "commit": installed_commit(spec, self.models_dir),
            "subfolder": spec.subfolder,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "licence": spec.licence,
        }
        pipe = self._pipelines.get(name)
        if pipe is not None and spec.kind == "shape":
            info["compiled"] = is_compiled(pipe.model)
            info["cuda_graphs"] = step_graphs_enabled(pipe.model)
        if spec.vae is not None:
            vae = get_spec(spec.vae)
            info["vae"] = {"repo_id": vae.repo_id, "revision": vae.revision, "subfolder": vae.subfolder,
                           "commit": installed_commit(vae, self.models_dir)}
        return info


def speed_up_dit(pipe: Any, spec: ModelSpec, *, torch_compile: bool, cuda_graphs: bool) -> list[str]:
    """Compile the DiT's blocks (TORCH_COMPILE, models/dit_compile.py) and record its sampling step in a
    CUDA graph (CUDA_GRAPHS, models/dit_forward.py) now, with a warm-up run; returns the levers that work.
    A failure (e.g. no C compiler for Triton) is logged and the lever is dropped: same results, slower
    sampling."""
    from pipeline.hunyuan_sampler import ShapeSettings, warm_up  # pipeline code imports this module

    assert spec.sampler is not None
    defaults = spec.sampler
    settings = ShapeSettings(steps=2, guidance_scale=defaults.guidance_scale,
                             octree_resolution=defaults.octree_resolution, num_chunks=defaults.num_chunks,
                             seed=0, decoder=defaults.decoder)
    levers = {"TORCH_COMPILE": (torch_compile, compile_dit_blocks, uncompile_dit_blocks),
              "CUDA_GRAPHS": (cuda_graphs, enable_step_graphs, disable_step_graphs)}
    on = [name for name, (wanted, _, _) in levers.items() if wanted]
    for name in on:
        levers[name][1](pipe.model)
    # On a failure drop the levers one by one (graphs first: the likelier to fail) and warm up again.
    while on:
        started = time.monotonic()
        try:
            warm_up(pipe, settings, spec.multiview)
        except Exception as exc:  # noqa: BLE001 - the model without the lever works
            name = on.pop()
            levers[name][2](pipe.model)
            log.error("%s failed for %s's DiT (%s: %s); running without it (same results, slower sampling). "
                      "%s=0 skips the attempt.", name, spec.name, type(exc).__name__, str(exc)[:300], name)
            continue
        log.info("warmed up %s's DiT with %s in %.1f s", spec.name, " + ".join(on), time.monotonic() - started)
        break
    return on


def _where(spec: ModelSpec) -> str:
    return f"{spec.repo_id}/{spec.subfolder}@{spec.revision}"
