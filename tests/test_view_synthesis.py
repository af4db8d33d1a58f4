"""pipeline/view_synthesis.py and models/zero123plus.py with a tiny random Zero123++ in the hub layout,
loaded through the real loader (tests/tiny_zero123plus.py)."""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import zero123plus
from models.manager import ModelManager
from models.registry import get_spec
from models.zero123plus import (ZERO123PLUS, AttentionState, ReferenceAttention, get_zero123plus,
                                load_zero123plus)
from pipeline.errors import JobTimeout, ModelUnavailableError
from pipeline.view_synthesis import ZERO123PLUS_CAMERAS, condition_rgb, sample_views, split_grid, view_names
from tests.helpers import example_bytes
from tests.tiny_zero123plus import install_tiny_zero123plus
from utils.settings import Settings


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's ops are far too small to split: on a shared 2-core runner, threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models_dir = tmp_path_factory.mktemp("models")
    install_tiny_zero123plus(models_dir)
    return models_dir


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> zero123plus.Zero123PlusModel:
    return load_zero123plus(tiny_dir / "sudo-ai" / "zero123plus-v1.2", "cpu", torch.float32)


def _front(name: str = "lantern.png", side: int = 128) -> np.ndarray:  # [side, side, 4] uint8
    return np.asarray(Image.open(io.BytesIO(example_bytes(name))).convert("RGBA").resize((side, side)))


def _never() -> None:
    """A deadline that never passes."""


def test_cameras_are_v12s() -> None:
    assert [c.azimuth for c in ZERO123PLUS_CAMERAS] == [30, 90, 150, 210, 270, 330]
    assert [c.elevation for c in ZERO123PLUS_CAMERAS] == [20, -10, 20, -10, 20, -10]
    assert {c.fov for c in ZERO123PLUS_CAMERAS} == {30.0}


def test_view_names_fill_left_and_right_but_not_back() -> None:
    assert view_names(ZERO123PLUS_CAMERAS, {"front"}) == [
        "generated_az030_elp20", "right", "generated_az150_elp20", "generated_az210_elm10", "left",
        "generated_az330_elm10"]
    # The user's own right photo wins; the 90 degree view keeps its camera name.
    assert view_names(ZERO123PLUS_CAMERAS, {"front", "right"})[1] == "generated_az090_elm10"


def test_split_grid_is_row_major() -> None:
    grid = np.zeros((30, 20, 3), np.uint8)
    for index in range(6):
        row, col = divmod(index, 2)
        grid[row * 10:(row + 1) * 10, col * 10:(col + 1) * 10] = index
    assert [int(tile[0, 0, 0]) for tile in split_grid(grid)] == [0, 1, 2, 3, 4, 5]


def test_condition_picture_is_on_grey() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = [200, 10, 10, 255]
    rgb = np.asarray(condition_rgb(rgba))
    assert tuple(rgb[0, 0]) == (200, 10, 10) and tuple(rgb[3, 3]) == (127, 127, 127)


def test_loader_reads_the_hub_layout(model: zero123plus.Zero123PlusModel) -> None:
    assert model.prompt_embeds.shape == (1, 77, 32) and model.ramp.shape == (77,)
    assert model.tile == 16
    references = [p for p in model.unet.attn_processors.values() if isinstance(p, ReferenceAttention)]
    names = [n for n in model.unet.attn_processors if n.endswith("attn1.processor")]
    assert len(references) == len(names) > 0 and all(p.state is model.attention for p in references)


def test_reference_attention_over_duplicate_tokens_equals_self_attention() -> None:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    tokens = torch.randn(1, 5, 16)
    state = AttentionState()
    processor = ReferenceAttention("layer", state)
    state.mode = "write"
    processor(attn, tokens)
    assert torch.equal(state.bank["layer"], tokens)
    state.mode = "read"
    # Keys/values [x, x]: every weight halves and appears twice, so the result is plain self-attention.
    torch.testing.assert_close(processor(attn, tokens), AttnProcessor2_0()(attn, tokens), atol=1e-5, rtol=1e-5)
    assert state.bank == {}
    state.mode = "write"
    processor(attn, torch.zeros(1, 3, 16))
    state.mode = "read"
    assert not torch.allclose(processor(attn, tokens), AttnProcessor2_0()(attn, tokens), atol=1e-4)


def test_sampler_gives_six_reproducible_views_that_depend_on_the_picture(model: zero123plus.Zero123PlusModel) -> None:
    steps: list[float] = []
    views = sample_views(model, _front(), seed=3, steps=4, check=_never, progress=lambda f, m: steps.append(f))
    assert len(views) == 6 and all(v.shape == (16, 16, 3) and v.dtype == np.uint8 for v in views)
    assert steps == [0.25, 0.5, 0.75, 1.0]
    assert model.attention.mode == "off" and model.attention.bank == {}
    again = sample_views(model, _front(), seed=3, steps=4, check=_never)
    assert all(np.array_equal(a, b) for a, b in zip(views, again))
    other_seed = sample_views(model, _front(), seed=4, steps=4, check=_never)
    assert not all(np.array_equal(a, b) for a, b in zip(views, other_seed))
    other_picture = sample_views(model, _front("crate.png"), seed=3, steps=4, check=_never)
    assert not all(np.array_equal(a, b) for a, b in zip(views, other_picture))
    unguided = sample_views(model, _front(), seed=3, steps=2, guidance_scale=1.0, check=_never)
    assert len(unguided) == 6


def test_sampler_checks_the_deadline_every_step(model: zero123plus.Zero123PlusModel) -> None:
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise JobTimeout("past the cap", stage="multiview")

    with pytest.raises(JobTimeout):
        sample_views(model, _front(), seed=0, steps=50, check=check)
    assert calls["n"] == 4 and model.attention.bank == {}


def test_missing_weights_name_the_files(tmp_path: Path) -> None:
    manager = ModelManager(Settings(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ModelUnavailableError) as info:
        get_zero123plus(manager)
    assert info.value.stage == "multiview"
    assert "sudo-ai/zero123plus-v1.2/unet/diffusion_pytorch_model.safetensors" in info.value.message
    assert "python -m models.download zero123plus-v1.2" in info.value.message


def test_get_loads_once_per_process(tiny_dir: Path) -> None:
    manager = ModelManager(Settings(models_dir=tiny_dir, device="cpu"))
    assert get_zero123plus(manager) is get_zero123plus(manager)
    info = zero123plus.describe(manager)
    assert info["repo_id"] == "sudo-ai/zero123plus-v1.2" and "CC-BY-NC-4.0" in info["licence"]


def test_model_index_without_ramping_is_refused(tmp_path: Path) -> None:
    folder = install_tiny_zero123plus(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    del index["ramping_coefficients"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelUnavailableError) as info:
        load_zero123plus(folder, "cpu", torch.float32)
    assert "ramping_coefficients" in info.value.message


def test_registry_entry() -> None:
    spec = get_spec(ZERO123PLUS)
    assert spec.kind == "multiview" and spec.repo_id == "sudo-ai/zero123plus-v1.2" and spec.subfolder == ""
    assert "model_index.json" in spec.files and spec.licence.startswith("CC-BY-NC-4.0")
