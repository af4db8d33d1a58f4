"""torch.compile of the shape DiT's blocks (models/dit_compile.py) against the eager blocks, on the tiny
model on CPU (the worker compiles on CUDA only; inductor builds CPU kernels here, through the same path)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.dit_compile import compile_dit_blocks, is_compiled, uncompile_dit_blocks
from models.dit_forward import step_graphs_enabled
from models.manager import ModelManager, speed_up_dit
from models.registry import get_spec
from pipeline.context import Deadline, StageContext
from pipeline.hunyuan_sampler import ShapeSettings, encode_condition, sample_latents, warm_up
from tests.helpers import REPO
from tests.tiny_models import install_shape_model
from utils.settings import Settings

SETTINGS = ShapeSettings(steps=3, guidance_scale=5.0, octree_resolution=64, num_chunks=8000, seed=0)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    install_shape_model(root, "hunyuan3d-2")
    return ModelManager(Settings(models_dir=root, device="cpu")).shape_pipeline("hunyuan3d-2")


def _sample(pipe, image: Image.Image) -> torch.Tensor:
    condition = encode_condition(pipe, image, SETTINGS.guidance_scale)
    return sample_latents(pipe, condition, SETTINGS, StageContext("mesh", Deadline(600.0)))


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_compiled_blocks_sample_what_the_eager_blocks_sample(pipe):
    image = Image.open(REPO / "examples" / "crate.png").convert("RGBA")
    eager = _sample(pipe, image)
    assert not is_compiled(pipe.model)
    torch._dynamo.reset()
    assert compile_dit_blocks(pipe.model) == len(pipe.model.double_blocks) + len(pipe.model.single_blocks)
    try:
        assert is_compiled(pipe.model)
        # The warm-up builds the kernels for the shapes jobs use: a real picture then compiles nothing new.
        warm_up(pipe, SETTINGS, multiview=False)
        built = _graphs()
        assert built > 0
        compiled = _sample(pipe, image)
        assert _graphs() == built
    finally:
        uncompile_dit_blocks(pipe.model)
    assert not is_compiled(pipe.model)
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=0, atol=1e-4 * float(eager.abs().max()))
    assert torch.equal(_sample(pipe, image), eager)  # uncompiled: the eager blocks again, bit for bit


def test_torch_compile_setting_and_what_meta_records(pipe):
    assert Settings.from_env({}).torch_compile is True
    assert Settings.from_env({"TORCH_COMPILE": "0"}).torch_compile is False
    manager = ModelManager(Settings(models_dir=REPO, device="cpu"))
    manager._pipelines["hunyuan3d-2"] = pipe  # loaded on CPU: the worker does not compile there
    described = manager.describe("hunyuan3d-2")
    assert described["compiled"] is False and described["cuda_graphs"] is False


@pytest.mark.parametrize("failures", [1, 2])
def test_a_failing_warm_up_drops_the_speed_levers_one_by_one(pipe, monkeypatch, caplog, failures):
    seen = []

    def warm_up(*args) -> None:  # stands in for the real warm-up, which fails only on CUDA
        seen.append((is_compiled(pipe.model), step_graphs_enabled(pipe.model)))
        if len(seen) <= failures:
            raise RuntimeError("no C compiler")

    monkeypatch.setattr("pipeline.hunyuan_sampler.warm_up", warm_up)
    try:
        working = speed_up_dit(pipe, get_spec("hunyuan3d-2"), torch_compile=True, cuda_graphs=True)
        assert working == (["TORCH_COMPILE"] if failures == 1 else [])
        assert seen == [(True, True), (True, False)]  # (compiled, graphs): graphs go first, then compiling
        assert step_graphs_enabled(pipe.model) is False
        assert is_compiled(pipe.model) is (failures == 1)
        assert "CUDA_GRAPHS failed" in caplog.text and ("TORCH_COMPILE failed" in caplog.text) is (failures == 2)
    finally:
        uncompile_dit_blocks(pipe.model)
