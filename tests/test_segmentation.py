"""models/segmentation.py and the model backend of pipeline/background.py, through a tiny ONNX graph with
BiRefNet's input/output names and shapes, saved where the real export lives (tests/tiny_segmentation.py)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import segmentation
from models.registry import get_spec, missing_files
from models.segmentation import (SEGMENTATION_MODEL, describe_active_backend, input_side, load_session,
                                 providers_for, segmentation_model_path)
from pipeline.background import BACKENDS, BackgroundRemover, remove_background
from pipeline.errors import JobTimeout, ModelUnavailableError
from tests.helpers import example_bytes
from tests.tiny_segmentation import expected_mask, install_tiny_segmentation


def _photo(name: str) -> np.ndarray:  # [H, W, 3] uint8
    return np.asarray(Image.open(io.BytesIO(example_bytes(name))).convert("RGB"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_registry_entry_and_layout(tmp_path: Path) -> None:
    spec = get_spec(SEGMENTATION_MODEL)
    assert spec.kind == "segmentation" and spec.repo_id == "onnx-community/BiRefNet_lite-ONNX"
    assert spec.licence.startswith("MIT") and spec.files == ("onnx/model.onnx",)
    assert missing_files(spec, tmp_path) == ["onnx-community/BiRefNet_lite-ONNX/onnx/model.onnx"]
    assert segmentation_model_path(tmp_path) is None
    assert "GrabCut" in describe_active_backend(tmp_path)
    path = install_tiny_segmentation(tmp_path)
    assert segmentation_model_path(tmp_path) == path
    assert describe_active_backend(tmp_path) == f"background removal: {SEGMENTATION_MODEL} ({path})"


def test_model_mask_comes_from_the_graph(tmp_path: Path) -> None:
    session = load_session(install_tiny_segmentation(tmp_path), "cpu")
    assert input_side(session) == (1024, 1024)
    rgb = _photo("chair_wood.jpg")
    mask = remove_background(rgb, method=SEGMENTATION_MODEL, session=session)
    assert mask.shape == rgb.shape[:2] and mask.dtype == bool
    truth = expected_mask(rgb)
    assert 0.1 < truth.mean() < 0.3
    assert _iou(mask, truth) > 0.97  # the graph's own decision, up to resampling at the 1024 input
    grabcut = remove_background(rgb, method="grabcut")
    assert _iou(grabcut, truth) < 0.9  # and not what GrabCut would have said


def test_session_is_cached_per_process(tmp_path: Path) -> None:
    path = install_tiny_segmentation(tmp_path)
    assert load_session(path, "cpu") is load_session(path, "cpu")


def test_known_background_and_deadline(tmp_path: Path) -> None:
    session = load_session(install_tiny_segmentation(tmp_path), "cpu")
    rgb = _photo("chair_wood.jpg")
    known = np.zeros(rgb.shape[:2], bool)
    known[:, : rgb.shape[1] // 2] = True
    mask = BACKENDS[SEGMENTATION_MODEL](rgb, session=session, known_background=known)
    assert mask.any() and not (mask & known).any()

    def expired() -> None:
        raise JobTimeout("past the cap", stage="multiview")

    with pytest.raises(JobTimeout):
        remove_background(rgb, method=SEGMENTATION_MODEL, session=session, check=expired)


def test_graph_with_other_names_is_refused(tmp_path: Path) -> None:
    path = install_tiny_segmentation(tmp_path, input_name="pixel_values")
    with pytest.raises(ModelUnavailableError) as info:
        load_session(path, "cpu")
    assert "expected 'input_image' -> 'output_image'" in info.value.message and info.value.stage == "multiview"


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "onnx-community" / "BiRefNet_lite-ONNX" / "onnx" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph")
    with pytest.raises(ModelUnavailableError) as info:
        load_session(path, "cpu")
    assert "could not be loaded" in info.value.message


def test_remover_picks_model_when_present_else_grabcut(tmp_path: Path) -> None:
    rgb = _photo("chair_wood.jpg")
    absent = BackgroundRemover(tmp_path, "cpu")
    assert absent.method == "grabcut" and absent.describe() == {"backend": "grabcut"}
    install_tiny_segmentation(tmp_path)
    present = BackgroundRemover(tmp_path, "cpu")
    assert present.method == SEGMENTATION_MODEL
    assert present.describe() == {"backend": SEGMENTATION_MODEL, "provider": "CPUExecutionProvider"}
    assert _iou(present(rgb), expected_mask(rgb)) > 0.97
    assert BackgroundRemover(None).method == "grabcut"


def test_providers_follow_the_device() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", both) == ["CPUExecutionProvider"]
    assert providers_for("cuda", both) == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert providers_for("cuda:1", both)[0] == ("CUDAExecutionProvider", {"device_id": 1})
    assert providers_for("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_describe_names_the_runtime() -> None:
    info = segmentation.describe("CPUExecutionProvider")
    assert info["repo_id"] == "onnx-community/BiRefNet_lite-ONNX" and info["device"] == "cpu"
    assert info["runtime"] == "onnxruntime (CPUExecutionProvider)" and info["dtype"] == "float32"
