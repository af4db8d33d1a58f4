"""A tiny ONNX stand-in for BiRefNet-lite, written where the real export lives under a MODELS_DIR.

Same input and output names, dtypes and static shapes as onnx-community/BiRefNet_lite-ONNX (`input_image`
float32 [1, 3, 1024, 1024] ImageNet-normalised RGB -> `output_image` float32 [1, 1, 1024, 1024] logits), but the
graph is one 1x1 convolution: logits = GAIN * (red - blue - THRESHOLD) on the normalised channels. Its mask is
therefore a known function of the picture, so tests can tell that a cut-out really came from the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.registry import get_spec, model_dir
from models.segmentation import IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, ONNX_FILE, OUTPUT_NAME, SEGMENTATION_MODEL

SIDE = 1024
GAIN = 20.0
THRESHOLD = 0.3  # on chair_wood.jpg this keeps the reddish wood, about 17% of the photo


def install_tiny_segmentation(models_dir: Path, *, input_name: str = INPUT_NAME) -> Path:
    """Write the graph to <models_dir>/onnx-community/BiRefNet_lite-ONNX/onnx/model.onnx; return its path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([GAIN, 0.0, -GAIN], np.float32).reshape(1, 3, 1, 1)
    bias = np.array([-GAIN * THRESHOLD], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "weight", "bias"], [OUTPUT_NAME], kernel_shape=[1, 1])],
        "tiny_birefnet",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 1, SIDE, SIDE])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what opset 17 exports carry; newer onnx packages default past what onnxruntime reads
    onnx.checker.check_model(model)
    path = model_dir(get_spec(SEGMENTATION_MODEL), models_dir) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected_mask(rgb: np.ndarray) -> np.ndarray:  # [H, W, 3] uint8 -> [H, W] bool, before clean-up
    """What the tiny graph decides, computed directly at the picture's own resolution."""
    pixels = (rgb.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return (pixels[..., 0] - pixels[..., 2]) > THRESHOLD
