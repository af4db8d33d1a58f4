"""End to end, as a user runs it: `python handler.py --test_input ...` in a subprocess.

Each bundle is checked the way its consumers read it: meta.json against the JSON Schema, the GLB through
Khronos glTF-Validator and imported in Blender, and (S3) every presigned URL fetched over HTTP with its
bytes compared to the sha256 in meta.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from pipeline.meta import validate_meta
from tests.gltf_checks import check_blender_import, validate_gltf
from tests.helpers import REPO, example_b64, file_url_path
from tests.s3_fixtures import s3_server  # noqa: F401  (pytest fixture)


def run_handler(job: dict, env: dict[str, str], timeout: float = 300) -> tuple[dict | None, str]:
    """Run the worker once on `job`; return (the result it logged, the whole log)."""
    proc = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout + proc.stderr
    result = None
    for line in log.splitlines():
        if "Job result:" in line:
            result = eval_result(line.split("Job result:", 1)[1].strip())["output"]
    if proc.returncode != 0:
        return None, log
    return result, log


def eval_result(text: str) -> dict:
    """The runpod SDK logs the result dict with repr(); parse it without eval."""
    import ast

    return ast.literal_eval(text)


def check_bundle_files(meta: dict, read: "callable") -> None:
    """Every output listed in meta.json exists, with the bytes and sha256 it claims."""
    outputs = meta["outputs"]
    assert "model.glb" in outputs
    for required in ("textures/albedo.png", "textures/orm.png", "textures/roughness.png", "textures/metallic.png"):
        assert required in outputs, f"{required} missing from {sorted(outputs)}"
    for name, entry in outputs.items():
        data = read(entry["url"])
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name


@pytest.mark.parametrize("picture", ["extinguisher.png", "chair_wood.jpg"])
def test_handler_makes_a_valid_bundle_locally(local_env: dict[str, str], picture: str) -> None:
    job = {
        "id": f"e2e-{picture.split('.')[0]}",
        "input": {
            "image_base64": example_b64(picture),
            "shape_model": "silhouette",
            "target_faces": 5000,
            "texture_size": 512,
            "seed": 7,
        },
    }
    result, log = run_handler(job, local_env)
    assert result is not None, log[-3000:]
    assert set(result) == {"api_version", "job_id", "meta_url", "glb_url", "seconds"}
    meta = json.loads(file_url_path(result["meta_url"]).read_text())
    validate_meta(meta)
    assert meta["input"]["parameters"]["seed"] == 7
    check_bundle_files(meta, lambda url: file_url_path(url).read_bytes())
    glb = file_url_path(result["glb_url"])
    report = validate_gltf(glb)
    assert report["issues"]["numErrors"] == 0
    blender = check_blender_import(glb)
    assert blender["base_color_linked"] and blender["roughness_linked"] and blender["metallic_linked"], blender
    # Progress is visible in the log, stage by stage.
    for stage in ("multiview", "mesh", "texture", "export", "upload"):
        assert f"| {stage}" in log


def test_handler_failure_exits_nonzero_with_error_json(local_env: dict[str, str]) -> None:
    job = {"id": "e2e-bad", "input": {"image_url": "file:///etc/passwd", "shape_model": "silhouette"}}
    result, log = run_handler(job, local_env)
    assert result is None
    assert "image_url" in log and "file" in log
    error = json.loads((Path(local_env["LOCAL_OUTPUT_DIR"]) / "e2e-bad" / "error.json").read_text())
    assert error["status"] == "failed" and "image_url" in error["error"]


def test_handler_with_s3_storage(s3_server, local_env: dict[str, str]) -> None:
    env = {
        **local_env,
        "STORAGE": "s3",
        "S3_BUCKET": s3_server.bucket,
        "S3_PREFIX": "assets",
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
        "AWS_REGION": "us-east-1",
    }
    job = {
        "id": "e2e-s3",
        "input": {"image_base64": example_b64("extinguisher.png"), "shape_model": "silhouette",
                  "target_faces": 3000, "texture_size": 512, "output_prefix": "team"},
    }
    result, log = run_handler(job, env)
    assert result is not None, log[-3000:]
    assert "testing-secret-never-logged" not in log
    meta = requests.get(result["meta_url"], timeout=10).json()
    validate_meta(meta)
    assert meta["outputs"]["model.glb"]["key"] == "assets/team/e2e-s3/model.glb"
    check_bundle_files(meta, lambda url: requests.get(url, timeout=10).content)


def test_handler_s3_missing_bucket_is_a_clear_error(s3_server, local_env: dict[str, str]) -> None:
    env = {
        **local_env,
        "STORAGE": "s3",
        "S3_BUCKET": "no-such-bucket",
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-never-logged",
        "AWS_REGION": "us-east-1",
    }
    job = {"id": "e2e-nobucket", "input": {"image_base64": example_b64("extinguisher.png"),
                                            "shape_model": "silhouette", "target_faces": 2000, "texture_size": 512}}
    result, log = run_handler(job, env)
    assert result is None
    assert "no-such-bucket" in log
    assert "testing-secret-never-logged" not in log
