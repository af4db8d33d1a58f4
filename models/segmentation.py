"""The background-removal segmentation model: BiRefNet-lite as an ONNX graph run by onnxruntime.

Weights: `onnx-community/BiRefNet_lite-ONNX`, file `onnx/model.onnx` (fp32, ~224 MB), MIT licence (the
BiRefNet authors' licence; the ONNX export is the community's). Input `input_image` float32
[1, 3, 1024, 1024]: RGB in [0, 1] normalised with the ImageNet mean/std; output `output_image` float32
[1, 1, 1024, 1024]: logits, a sigmoid gives the object's matte.

Presence of the file under MODELS_DIR decides whether it is used (no setting): `segmentation_session` is
None without it, and the multiview stage falls back to GrabCut and says so. The onnxruntime session is built
once per (file, device) and kept for the life of the process.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any

from models.registry import get_spec, missing_files, model_dir
from pipeline.errors import ModelUnavailableError

log = logging.getLogger(__name__)

SEGMENTATION_MODEL = "birefnet-lite"
ONNX_FILE = "onnx/model.onnx"
INPUT_NAME = "input_image"
OUTPUT_NAME = "output_image"
DEFAULT_SIDE = 1024  # the export's static input size; a dynamic export is fed this size too
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SESSION_LOCK = threading.Lock()


def segmentation_model_path(models_dir: Path) -> Path | None:
    """The ONNX file when it is installed under MODELS_DIR, else None."""
    spec = get_spec(SEGMENTATION_MODEL)
    if missing_files(spec, Path(models_dir)):
        return None
    return model_dir(spec, Path(models_dir)) / ONNX_FILE


def providers_for(device: str, available: list[str]) -> list[str | tuple[str, dict[str, Any]]]:
    """onnxruntime execution providers for a torch-style device string ("cpu", "cuda", "cuda:1")."""
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device.startswith("cuda"):
        # The CPU-only onnxruntime wheel: still correct, only slower; the provider used goes to meta.json.
        log.warning("onnxruntime has no CUDA provider here (install onnxruntime-gpu); segmentation runs on CPU")
    return ["CPUExecutionProvider"]


@functools.lru_cache(maxsize=4)
def _load(path: str, device: str) -> Any:
    import onnxruntime as ort  # imported on first use: the worker starts without it when no model is present
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    load_errors = (RuntimeError, ValueError, ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
                   ort_errors.NoSuchFile, ort_errors.InvalidArgument)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(path, sess_options=options,
                                       providers=providers_for(device, ort.get_available_providers()))
    except load_errors as exc:  # what onnxruntime raises for unreadable, invalid or unsupported graphs
        raise ModelUnavailableError(
            f"segmentation model {path} could not be loaded ({exc}); fetch it again with "
            f"`python -m models.download {SEGMENTATION_MODEL}`, or delete it to use GrabCut", stage="multiview",
        ) from exc
    names_in = [node.name for node in session.get_inputs()]
    names_out = [node.name for node in session.get_outputs()]
    if INPUT_NAME not in names_in or OUTPUT_NAME not in names_out:
        raise ModelUnavailableError(
            f"segmentation model {path} has inputs {names_in} and outputs {names_out}; "
            f"expected {INPUT_NAME!r} -> {OUTPUT_NAME!r} (the BiRefNet ONNX export)", stage="multiview")
    log.info("loaded segmentation model %s on %s", path, session.get_providers()[0])
    return session


def load_session(path: Path, device: str) -> Any:
    """The onnxruntime InferenceSession for `path` on `device`, built once per process."""
    with _SESSION_LOCK:
        return _load(str(path), device)


def input_side(session: Any) -> tuple[int, int]:
    """(height, width) the graph takes: its static shape, or DEFAULT_SIDE for dynamic axes."""
    shape = next(node.shape for node in session.get_inputs() if node.name == INPUT_NAME)
    height, width = shape[2], shape[3]
    return (height if isinstance(height, int) else DEFAULT_SIDE, width if isinstance(width, int) else DEFAULT_SIDE)


def describe_active_backend(models_dir: Path) -> str:
    """One line for the start-up log: which background remover jobs will use."""
    path = segmentation_model_path(models_dir)
    if path is None:
        spec = get_spec(SEGMENTATION_MODEL)
        return (f"background removal: GrabCut (classical); {SEGMENTATION_MODEL} is not installed "
                f"({', '.join(missing_files(spec, Path(models_dir)))} missing under MODELS_DIR)")
    return f"background removal: {SEGMENTATION_MODEL} ({path})"


def describe(provider: str) -> dict[str, Any]:
    """What meta.json records about the model; `provider` is the onnxruntime execution provider it ran on."""
    spec = get_spec(SEGMENTATION_MODEL)
    device = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
    return {"name": spec.name, "repo_id": spec.repo_id, "revision": spec.revision, "dtype": "float32",
            "device": device, "runtime": f"onnxruntime ({provider})", "licence": spec.licence}
