"""models/registry.py: what the worker knows about each model and where its files live."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import (
    REGISTRY,
    ModelSpec,
    _register,
    download_command,
    get_spec,
    missing_files,
    model_dir,
    shape_model_names,
    with_requirements,
)
from pipeline.request import SHAPE_MODELS


def test_every_requested_shape_model_is_registered_with_defaults():
    hunyuan = [name for name in SHAPE_MODELS if name != "silhouette"]
    assert sorted(shape_model_names()) == sorted(hunyuan)
    for name in hunyuan:
        spec = get_spec(name)
        assert spec.kind == "shape" and spec.sampler is not None
        assert spec.files == ("config.yaml", "model.fp16.safetensors")
        assert spec.repo_id.startswith("tencent/Hunyuan3D-2") and spec.revision and spec.licence
        assert spec.size_bytes > 1_000_000_000


def test_no_ckpt_duplicates():
    for spec in REGISTRY.values():
        assert not [name for name in spec.files if name.endswith(".ckpt")], spec.name
    for spec in REGISTRY.values():
        if spec.kind in ("shape", "vae"):  # hy3dgen reads exactly these two
            assert spec.files == ("config.yaml", "model.fp16.safetensors"), spec.name


def test_turbo_and_fast_decode_with_the_flashvdm_vae():
    for name in ("hunyuan3d-2-turbo", "hunyuan3d-2-fast"):
        spec = get_spec(name)
        assert spec.sampler.flashvdm and spec.sampler.steps <= 20
        assert spec.vae == "hunyuan3d-2-vae-turbo" and spec.vae in spec.requires
    assert get_spec("hunyuan3d-2-turbo").sampler.steps == 5
    assert get_spec("hunyuan3d-2").sampler.steps == 50 and not get_spec("hunyuan3d-2").sampler.flashvdm
    assert get_spec("hunyuan3d-2mv").multiview and not get_spec("hunyuan3d-2").multiview


def test_model_dir_is_the_hub_layout(tmp_path):
    spec = get_spec("hunyuan3d-2mini")
    assert model_dir(spec, tmp_path) == tmp_path / "tencent" / "Hunyuan3D-2mini" / "hunyuan3d-dit-v2-mini"
    root_level = ModelSpec(name="x", kind="paint", repo_id="org/repo", revision="main", subfolder="",
                           files=("a.json",), size_bytes=1, licence="mit")
    assert model_dir(root_level, tmp_path) == tmp_path / "org" / "repo"


def test_missing_files_lists_absent_and_empty_files(tmp_path: Path):
    spec = get_spec("hunyuan3d-2")
    folder = model_dir(spec, tmp_path)
    assert missing_files(spec, tmp_path) == [
        "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/config.yaml",
        "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/model.fp16.safetensors",
    ]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")
    (folder / "model.fp16.safetensors").write_bytes(b"")
    assert missing_files(spec, tmp_path) == ["tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/model.fp16.safetensors"]
    (folder / "model.fp16.safetensors").write_bytes(b"x")
    assert missing_files(spec, tmp_path) == []


def test_requirements_come_first_and_once():
    names = [spec.name for spec in with_requirements("hunyuan3d-2-turbo")]
    assert names == ["hunyuan3d-2-vae-turbo", "hunyuan3d-2-turbo"]
    assert [spec.name for spec in with_requirements("hunyuan3d-2")] == ["hunyuan3d-2"]
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        with_requirements("nope")


def test_register_refuses_duplicates_and_unknown_requirements():
    before = dict(REGISTRY)
    with pytest.raises(ValueError, match="registered twice"):
        _register(get_spec("hunyuan3d-2"))
    orphan = ModelSpec(name="orphan", kind="paint", repo_id="org/repo", revision="main", subfolder="p",
                       files=("config.json",), size_bytes=1, licence="mit", requires=("missing-vae",))
    with pytest.raises(ValueError, match="requires 'missing-vae'"):
        _register(orphan)
    assert REGISTRY == before


def test_download_command_text():
    assert download_command(["hunyuan3d-2", "hunyuan3d-2mv"]) == "python -m models.download hunyuan3d-2 hunyuan3d-2mv"
