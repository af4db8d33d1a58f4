"""The start-up self-check: each missing piece gets a message that says what is missing and what to do."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from models.registry import REGISTRY, model_dir, with_requirements
from tests.helpers import REPO
from tests.s3_fixtures import S3Server, s3_server  # noqa: F401  (pytest fixture)
from utils.selfcheck import (
    GIB,
    GpuInfo,
    Problem,
    check_or_exit,
    hf_cache_snapshot,
    run_selfcheck,
)
from utils.settings import Settings


def no_gpu(device: str | None) -> GpuInfo | None:
    return None


def gpu(total_gib: float, free_gib: float, name: str = "NVIDIA Test GPU"):
    def probe(device: str | None) -> GpuInfo:
        return GpuInfo(name=name, total_bytes=int(total_gib * GIB), free_bytes=int(free_gib * GIB))

    return probe


def local_settings(tmp_path: Path, **env: str) -> Settings:
    base = {
        "STORAGE": "local",
        "LOCAL_OUTPUT_DIR": str(tmp_path / "outputs"),
        "MODELS_DIR": str(tmp_path / "models"),
        "PRELOAD_MODELS": "",
    }
    return Settings.from_env({**base, **env})


def write_weights(folder: Path, files: tuple[str, ...]) -> None:
    """Real (tiny) files in the layout the loaders read: a YAML config and a readable safetensors file."""
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors"):
            save_file({"weight": np.zeros((4, 4), dtype=np.float16)}, str(folder / name))
        else:
            (folder / name).write_text(yaml.safe_dump({"target": "x.Y", "params": {}}))


def install(models_dir: Path, name: str) -> None:
    for spec in with_requirements(name):
        write_weights(model_dir(spec, models_dir), spec.files)


def only(problems: list[Problem], check: str) -> list[Problem]:
    return [p for p in problems if p.check == check]


# ---------------------------------------------------------------- weights


def test_local_cpu_worker_without_preloads_passes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="selfcheck")
    problems = run_selfcheck(local_settings(tmp_path), gpu_probe=no_gpu, hf_caches=[])
    assert problems == []
    lines = [r.getMessage() for r in caplog.records]
    for check in ("weights", "storage", "gpu"):
        assert sum(line.startswith(f"self-check {check}: ok") for line in lines) == 1, lines


def test_missing_weights_name_every_file_and_the_download_command(tmp_path):
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2-turbo")
    problems = only(run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[]), "weights")
    assert len(problems) == 1
    message = problems[0].message
    models = tmp_path / "models"
    expected = [
        models / "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0-turbo/config.yaml",
        models / "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0-turbo/model.fp16.safetensors",
        models / "tencent/Hunyuan3D-2/hunyuan3d-vae-v2-0-turbo/config.yaml",  # the turbo model's VAE
        models / "tencent/Hunyuan3D-2/hunyuan3d-vae-v2-0-turbo/model.fp16.safetensors",
    ]
    for path in expected:
        assert f"missing {path}" in message
    assert message.count("missing ") == len(expected)
    assert f"MODELS_DIR={models} python -m models.download hunyuan3d-2-turbo" in message
    assert '--build-arg MODELS="hunyuan3d-2-turbo"' in message


def test_only_the_absent_files_are_listed(tmp_path):
    models = tmp_path / "models"
    install(models, "hunyuan3d-2-vae-turbo")
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2-turbo")
    (problem,) = only(run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[]), "weights")
    assert "hunyuan3d-dit-v2-0-turbo/model.fp16.safetensors" in problem.message
    assert "hunyuan3d-vae-v2-0-turbo" not in problem.message


def test_present_weights_pass(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="selfcheck")
    install(tmp_path / "models", "hunyuan3d-2")
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2")
    assert run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[]) == []
    assert any("self-check weights: ok (hunyuan3d-2;" in r.getMessage() for r in caplog.records)


def test_truncated_safetensors_is_reported(tmp_path):
    models = tmp_path / "models"
    install(models, "hunyuan3d-2")
    weights = model_dir(REGISTRY["hunyuan3d-2"], models) / "model.fp16.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # an interrupted copy onto a volume
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2")
    (problem,) = only(run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[]), "weights")
    assert str(weights) in problem.message and "truncated" in problem.message


def test_unknown_preloaded_model(tmp_path):
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-9")
    (problem,) = run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[])
    assert problem.check == "weights"
    assert "'hunyuan3d-9'" in problem.message and "hunyuan3d-2mini" in problem.message


def make_hf_cache(hub: Path, repo_id: str, commit: str, files: dict[str, tuple[str, ...]]) -> Path:
    """A Hugging Face hub cache as huggingface_hub (and RunPod's cached models) lay it out: blobs, a
    snapshot of relative symlinks, and refs/main naming the commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for index, (subfolder, names) in enumerate(files.items()):
        blobs = repo / "blobs" / str(index)
        write_weights(blobs, names)
        for name in names:
            link = snapshot / subfolder / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blobs / name, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_weights_in_the_hf_cache_get_the_link_command_and_the_link_works(tmp_path):
    spec = REGISTRY["hunyuan3d-2"]
    hub = tmp_path / "huggingface-cache" / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = make_hf_cache(hub, spec.repo_id, commit, {spec.subfolder: spec.files})
    assert hf_cache_snapshot(spec.repo_id, "main", hub) == snapshot

    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2")
    (problem,) = run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[hub])
    target = tmp_path / "models" / "tencent" / "Hunyuan3D-2"
    command = f"mkdir -p {target.parent} && ln -sfn {snapshot} {target}"
    assert command in problem.message

    subprocess.run(["sh", "-c", command], check=True)  # what the operator runs
    assert run_selfcheck(settings, gpu_probe=gpu(80, 79), hf_caches=[hub]) == []


# ---------------------------------------------------------------- storage


def test_local_storage_on_runpod_fails(tmp_path):
    settings = local_settings(tmp_path, RUNPOD_ENDPOINT_ID="abc123", DEVICE="cpu")
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "storage"
    assert "RunPod with local storage" in problem.message and "S3_BUCKET" in problem.message


def test_unwritable_local_folder_fails(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = local_settings(tmp_path, LOCAL_OUTPUT_DIR=str(blocker / "outputs"))
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "storage" and "not writable" in problem.message and str(blocker) in problem.message


def test_reachable_bucket_passes_on_runpod(s3_server: S3Server, caplog):
    caplog.set_level(logging.INFO, logger="selfcheck")
    settings = Settings.from_env(s3_server.env(RUNPOD_ENDPOINT_ID="abc123", PRELOAD_MODELS="none", DEVICE="cpu"))
    assert run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[]) == []
    assert any(f"bucket {s3_server.bucket!r}" in r.getMessage() for r in caplog.records)


def test_missing_bucket_fails(s3_server: S3Server):
    settings = Settings.from_env(s3_server.env(S3_BUCKET="no-such-bucket-here", PRELOAD_MODELS=""))
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "storage"
    assert "'no-such-bucket-here' does not exist" in problem.message


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_fails(s3_server: S3Server):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    settings = Settings.from_env(s3_server.env(S3_ENDPOINT_URL=endpoint, PRELOAD_MODELS=""))
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "storage"
    assert f"could not reach the storage endpoint {endpoint}" in problem.message
    assert s3_server.secret_access_key not in problem.message


# ---------------------------------------------------------------- GPU


def test_no_gpu_with_preloaded_models_fails(tmp_path):
    install(tmp_path / "models", "hunyuan3d-2")
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2")
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "gpu"
    assert "no CUDA GPU is visible" in problem.message and "hunyuan3d-2 8 GiB" in problem.message
    assert "--gpus all" in problem.message


def test_no_gpu_on_runpod_fails_even_without_preloads(s3_server: S3Server):
    settings = Settings.from_env(s3_server.env(RUNPOD_ENDPOINT_ID="abc123", PRELOAD_MODELS="none"))
    (problem,) = run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[])
    assert problem.check == "gpu" and "RunPod GPU worker" in problem.message


def test_device_cpu_skips_the_gpu(tmp_path):
    install(tmp_path / "models", "hunyuan3d-2")
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2", DEVICE="cpu")
    assert run_selfcheck(settings, gpu_probe=no_gpu, hf_caches=[]) == []


def test_too_little_gpu_memory_fails(tmp_path):
    for name in ("hunyuan3d-2", "hunyuan3d-2mv"):
        install(tmp_path / "models", name)
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2,hunyuan3d-2mv")
    (problem,) = run_selfcheck(settings, gpu_probe=gpu(16, 15.2, "Tesla T4"), hf_caches=[])
    assert problem.check == "gpu"
    assert "Tesla T4 has 15.2 GiB free of 16.0 GiB" in problem.message
    assert "need about 16 GiB (hunyuan3d-2 8 GiB, hunyuan3d-2mv 8 GiB)" in problem.message

    assert run_selfcheck(settings, gpu_probe=gpu(24, 23.5), hf_caches=[]) == []


def test_paint_and_its_delight_model_are_counted_once(tmp_path):
    for name in ("hunyuan3d-2", "hunyuan3d-paint", "hunyuan3d-paint-turbo"):
        install(tmp_path / "models", name)
    settings = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2 hunyuan3d-paint")
    assert run_selfcheck(settings, gpu_probe=gpu(24, 23.5), hf_caches=[]) == []  # 8 + 10 + 4 = 22 GiB

    both = local_settings(tmp_path, PRELOAD_MODELS="hunyuan3d-2 hunyuan3d-paint hunyuan3d-paint-turbo")
    (problem,) = run_selfcheck(both, gpu_probe=gpu(24, 23.5), hf_caches=[])
    assert "need about 32 GiB (hunyuan3d-2 8 GiB, hunyuan3d-delight 4 GiB, hunyuan3d-paint 10 GiB, " \
           "hunyuan3d-paint-turbo 10 GiB)" in problem.message


def test_every_registered_kind_has_a_gpu_figure():
    from utils.selfcheck import gpu_need_gib

    missing = [name for name in REGISTRY if gpu_need_gib(name) is None]
    assert missing == [], "add their kind to GPU_MEMORY_GIB_BY_KIND in utils/selfcheck.py"


# ---------------------------------------------------------------- exit


def test_check_or_exit_names_every_problem(tmp_path):
    env = {
        "STORAGE": "local",
        "LOCAL_OUTPUT_DIR": str(tmp_path / "outputs"),
        "MODELS_DIR": str(tmp_path / "models"),
        "RUNPOD_ENDPOINT_ID": "abc123",  # PRELOAD_MODELS unset: RunPod preloads hunyuan3d-2 and hunyuan3d-paint
    }
    with pytest.raises(SystemExit) as exited:
        check_or_exit(env, gpu_probe=no_gpu, hf_caches=[])
    text = str(exited.value.code)
    assert "4 problem(s)" in text
    assert "  - weights: preloaded model 'hunyuan3d-2'" in text
    assert "  - weights: preloaded model 'hunyuan3d-paint'" in text
    assert "  - storage: running on RunPod with local storage" in text
    assert "  - gpu: no CUDA GPU is visible" in text


def test_check_or_exit_returns_the_settings(tmp_path):
    settings = check_or_exit({"STORAGE": "local", "LOCAL_OUTPUT_DIR": str(tmp_path)}, gpu_probe=no_gpu, hf_caches=[])
    assert settings.local_output_dir == tmp_path and settings.preload_models == ()


def test_bad_setting_exits_with_its_name():
    with pytest.raises(SystemExit) as exited:
        check_or_exit({"MAX_SECONDS": "soon"}, gpu_probe=no_gpu, hf_caches=[])
    assert "MAX_SECONDS='soon' is not a number" in str(exited.value.code)


def _worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "S3_", "BUCKET_", "AWS_"))}
    env.update(
        STORAGE="local",
        LOCAL_OUTPUT_DIR=str(tmp_path / "outputs"),
        MODELS_DIR=str(tmp_path / "models"),
        PRELOAD_MODELS="",
        HF_HUB_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",  # a CPU box, even on a developer's GPU machine
    )
    env.update(extra)
    return env


def test_repo_test_input_is_a_valid_request():
    from pipeline.request import parse_request

    job = json.loads((REPO / "test_input.json").read_text())
    assert parse_request(job["input"]).shape_model == "silhouette"  # runs with no weights and no GPU


def test_handler_on_a_cpu_box_passes_the_selfcheck_and_runs_test_input(tmp_path):
    """`python handler.py` with no arguments, as the README's first command runs it: the runpod SDK reads
    test_input.json from the working directory. The repo's request at a smaller face and texture budget keeps
    this under a few seconds of pipeline time (the full one costs about a minute of CPU)."""
    job = json.loads((REPO / "test_input.json").read_text())
    job["input"].update(target_faces=3000, texture_size=512)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "test_input.json").write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, str(REPO / "handler.py")],
        cwd=workdir, env=_worker_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    for check in ("weights", "storage", "gpu"):
        assert f"self-check {check}: ok" in log
    metas = list((tmp_path / "outputs").rglob("meta.json"))
    assert len(metas) == 1, log[-3000:]
    assert json.loads(metas[0].read_text())["job_id"]


def test_handler_exits_before_serving_when_the_selfcheck_fails(tmp_path):
    proc = subprocess.run(
        [sys.executable, "handler.py"],
        cwd=REPO, env=_worker_env(tmp_path, RUNPOD_ENDPOINT_ID="abc123", DEVICE="cpu"),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "self-check storage: FAILED: running on RunPod with local storage" in proc.stdout
    assert "start-up self-check failed (1 problem(s))" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("meta.json"))


def test_selfcheck_module_runs_alone(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "utils.selfcheck"],
        cwd=REPO, env=_worker_env(tmp_path), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("self-check passed")
