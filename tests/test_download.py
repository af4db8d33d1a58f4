"""models/download.py without a network: the hub download function is replaced by one that writes files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub._local_folder import write_download_metadata
from safetensors.torch import save_file

from models import download
from models.registry import get_spec, model_dir

DIT_CONFIG = {key: {"target": "x"} for key in ("model", "vae", "conditioner", "scheduler", "image_processor")}


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: writes `filename` under `local_dir` like the hub does."""

    def __init__(self, broken: str | None = None, commit: str | None = None, bad_etag: bool = False) -> None:
        self.calls: list[dict] = []
        self.broken = broken  # a file name to write truncated
        self.commit = commit  # when set, record download metadata as hf_hub_download does
        self.bad_etag = bad_etag

    def __call__(self, *, repo_id: str, filename: str, revision: str, local_dir: Path) -> str:
        self.calls.append({"repo_id": repo_id, "filename": filename, "revision": revision,
                           "local_dir": Path(local_dir)})
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename.endswith(".safetensors"):
            save_file({"vae.weight": torch.ones(4, 3, dtype=torch.float16)}, str(path))
            if self.broken and filename.endswith(self.broken):
                path.write_bytes(path.read_bytes()[:-5])
        else:
            section = DIT_CONFIG if "dit" in filename else {"target": "x", "params": {}}
            path.write_text(yaml.safe_dump(section))
        if self.commit:
            etag = "0" * 64 if self.bad_etag else download.sha256_of(path)
            write_download_metadata(Path(local_dir), filename, self.commit, f'"{etag}"')
        return str(path)


def test_fetches_exactly_the_listed_files_into_the_layout(tmp_path):
    hub = FakeHub()
    spec = get_spec("hunyuan3d-2")
    folder = download.download_model(spec, tmp_path, fetch=hub)
    assert folder == tmp_path / "tencent" / "Hunyuan3D-2" / "hunyuan3d-dit-v2-0"
    assert [call["filename"] for call in hub.calls] == [
        "hunyuan3d-dit-v2-0/config.yaml", "hunyuan3d-dit-v2-0/model.fp16.safetensors"]
    assert all(call["repo_id"] == "tencent/Hunyuan3D-2" and call["revision"] == spec.revision for call in hub.calls)
    assert not any(call["filename"].endswith(".ckpt") for call in hub.calls)
    manifest = json.loads((folder / download.MANIFEST).read_text())
    assert manifest["revision"] == spec.revision and set(manifest["files"]) == set(spec.files)
    assert download.verify_layout(spec, tmp_path) == []


def test_records_the_hub_commit_and_checks_the_etag(tmp_path):
    from models.manager import ModelManager
    from utils.settings import Settings

    spec = get_spec("hunyuan3d-2-fast")
    folder = download.download_model(spec, tmp_path, fetch=FakeHub(commit="a" * 40))
    assert json.loads((folder / download.MANIFEST).read_text())["commit"] == "a" * 40
    described = ModelManager(Settings(models_dir=tmp_path, device="cpu")).describe(spec.name)
    assert described["commit"] == "a" * 40 and described["vae"]["commit"] is None
    with pytest.raises(download.VerificationError, match="differs from the hub"):
        download.download_model(get_spec("hunyuan3d-2"), tmp_path, fetch=FakeHub(commit="b" * 40, bad_etag=True))


def test_main_fetches_requirements_too(tmp_path, capsys):
    hub = FakeHub()
    assert download.main(["--models-dir", str(tmp_path), "hunyuan3d-2-turbo"], fetch=hub) == 0
    fetched = [call["filename"] for call in hub.calls]
    assert fetched == ["hunyuan3d-vae-v2-0-turbo/config.yaml", "hunyuan3d-vae-v2-0-turbo/model.fp16.safetensors",
                       "hunyuan3d-dit-v2-0-turbo/config.yaml", "hunyuan3d-dit-v2-0-turbo/model.fp16.safetensors"]
    out = capsys.readouterr().out
    assert "[hunyuan3d-2-turbo] ok" in out and "[hunyuan3d-2-vae-turbo] ok" in out


def test_truncated_weights_fail_verification(tmp_path, capsys):
    hub = FakeHub(broken="model.fp16.safetensors")
    assert download.main(["--models-dir", str(tmp_path), "hunyuan3d-2mini"], fetch=hub) == 1
    assert "truncated" in capsys.readouterr().err
    assert not (model_dir(get_spec("hunyuan3d-2mini"), tmp_path) / download.MANIFEST).exists()


def test_verify_catches_bad_config_and_changed_files(tmp_path):
    spec = get_spec("hunyuan3d-2mv")
    folder = download.download_model(spec, tmp_path, fetch=FakeHub())
    weights = folder / "model.fp16.safetensors"
    save_file({"vae.weight": torch.zeros(4, 3, dtype=torch.float16)}, str(weights))  # same size, other bytes
    assert any("differs from the downloaded copy" in p for p in download.verify_layout(spec, tmp_path))
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {}}))
    assert any("config lacks vae, conditioner, scheduler, image_processor" in p
               for p in download.verify_layout(spec, tmp_path))
    weights.unlink()
    assert download.verify_layout(spec, tmp_path) == [
        "missing tencent/Hunyuan3D-2mv/hunyuan3d-dit-v2-mv/model.fp16.safetensors"]


def test_check_safetensors_reports_garbage(tmp_path):
    path = tmp_path / "model.fp16.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json......}")
    with pytest.raises(download.VerificationError, match="unreadable safetensors header"):
        download.check_safetensors(path)
    save_file({"a": torch.ones(2, 2), "b": torch.zeros(3, dtype=torch.bfloat16)}, str(path))
    assert download.check_safetensors(path) == 2


def test_list_shows_known_models_and_presence(tmp_path, capsys):
    download.download_model(get_spec("hunyuan3d-2"), tmp_path, fetch=FakeHub())
    assert download.main(["--models-dir", str(tmp_path), "--list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(lines) >= {"hunyuan3d-2", "hunyuan3d-2-turbo", "hunyuan3d-2-fast", "hunyuan3d-2mini", "hunyuan3d-2mv",
                          "hunyuan3d-2-vae-turbo"}
    assert " present " in lines["hunyuan3d-2"] and "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0@" in lines["hunyuan3d-2"]
    assert "missing 2/2 files" in lines["hunyuan3d-2mv"]
    assert "4.93GB" in lines["hunyuan3d-2"]


def test_verify_flag_fetches_nothing(tmp_path, capsys):
    hub = FakeHub()
    assert download.main(["--models-dir", str(tmp_path), "--verify", "hunyuan3d-2"], fetch=hub) == 1
    assert hub.calls == [] and "missing tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0/config.yaml" in capsys.readouterr().err


def test_unknown_names_and_no_arguments_are_usage_errors(tmp_path):
    with pytest.raises(SystemExit) as unknown:
        download.main(["--models-dir", str(tmp_path), "hunyuan3d-9"])
    assert unknown.value.code == 2
    with pytest.raises(SystemExit):
        download.main(["--models-dir", str(tmp_path)])
