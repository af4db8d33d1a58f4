"""The Blender extension: its zip builds and validates, and inside Blender (`bpy`, its own venv) it drives
serve.py with local and with S3 storage, imports the result, shows errors, cancels, and unregisters cleanly.
The Blender-driving tests run once per supported Blender: the newest (.venv-blender) and 4.2 LTS, the oldest
(.venv-blender-lts); $BLENDER_PYTHON runs them in that one Python instead."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from types import ModuleType
from pathlib import Path
from typing import Any

import pytest

from scripts.build_addon import build
from tests.helpers import EXAMPLES, REPO
from tests.s3_fixtures import S3Server, s3_server  # noqa: F401  (the fixture)
from tests.serve_process import ServeProcess, free_port, running_server

# venv -> the requirements file that pins its bpy; scripts/setup.sh --dev makes both.
BLENDER_VENVS = {".venv-blender": "requirements-blender.txt", ".venv-blender-lts": "requirements-blender-lts.txt"}
TOKEN = "addon-token"
PICTURE = EXAMPLES / "extinguisher.png"
# "texture" always set: the scene keeps each run's options, and a job that ends in 0.5 s would race the
# unregister-while-running run's cancel (the textured silhouette job runs for seconds).
TEXTURED = {"shape_model": "silhouette", "texture_size": "512", "target_faces": 2000, "texture": True}
UNTEXTURED = {**TEXTURED, "texture": False}


def _blender_params() -> list[Any]:
    if os.environ.get("BLENDER_PYTHON"):
        return [pytest.param(None, id="BLENDER_PYTHON")]
    return [pytest.param(venv, id=venv.removeprefix(".venv-")) for venv in BLENDER_VENVS]


@pytest.fixture(params=_blender_params())
def blender(request: pytest.FixtureRequest) -> Path:
    """Blender's Python (bpy): $BLENDER_PYTHON, else each venv of BLENDER_VENVS in turn; missing fails."""
    venv = request.param
    if venv is None:
        path = Path(os.environ["BLENDER_PYTHON"])
        setup = "point BLENDER_PYTHON at a Python with bpy installed"
    else:
        path = REPO / venv / "bin" / "python"
        setup = (f"python3.11 -m venv {venv} && {venv}/bin/python -m pip install -r {BLENDER_VENVS[venv]} "
                 "(or: bash scripts/setup.sh --dev)")
    if not path.is_file():
        pytest.fail(f"Blender's Python (bpy) is missing at {path}: run {setup}")
    return path


def pinned_blender(python: Path) -> str | None:
    """The Blender version the venv's requirements file pins (None for $BLENDER_PYTHON)."""
    for venv, requirements in BLENDER_VENVS.items():
        if python == REPO / venv / "bin" / "python":
            return next(line.split("==")[1].strip() for line in (REPO / requirements).read_text().splitlines()
                        if line.startswith("bpy=="))
    return None


def run_in_blender(python: Path, tmp: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Build the zip, run tests/blender_addon_driver.py in Blender with `runs`, return its report."""
    zip_path = build(REPO / "blender_addon", tmp / "dist")
    config = {"zip": str(zip_path), "picture": str(PICTURE), "out": str(tmp / "report.json"), "runs": runs}
    (tmp / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp / "blender-user"),  # keep the user's Blender untouched
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    done = subprocess.run([str(python), str(REPO / "tests" / "blender_addon_driver.py"),
                           str(tmp / "config.json")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the Blender driver failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    report = json.loads((tmp / "report.json").read_text())
    pinned = pinned_blender(python)
    assert pinned is None or report["blender"].split()[0] == pinned, (report["blender"], pinned)
    assert report["unregistered"] == {"job_in_flight": False, "addon_enabled": False, "timer_registered": False,
                                      "scene_property": False, "panel_class": False}, report["unregistered"]
    return report


def check_imported(run: dict[str, Any], *, name: str, cursor: tuple[float, float, float],
                   textured: bool) -> dict[str, Any]:
    """The run ended with the asset in the scene as the contract promises; return the object's report."""
    status = run["status"]
    assert status["error"] == "" and status["stage"] == "done" and not status["running"], status
    obj = run["object"]
    assert obj["type"] == "MESH" and obj["name"] == name
    assert obj["location"] == pytest.approx(list(cursor), abs=1e-4)
    assert obj["selected"] and obj["all_new_selected"]
    assert obj["job_id"] == status["job_id"] and obj["glb_exists"]
    assert obj["meta"]["job_id"] == status["job_id"]  # meta.json kept beside the GLB
    assert 500 <= obj["faces"] <= 2000 * 1.05
    assert max(obj["dimensions"]) <= 2.0 + 1e-3
    material = obj["material"]
    assert material["principled"], material
    links = material["links"]
    if not textured:
        assert set(links.values()) == {None} and not material["images"]
        assert material["metallic_value"] == pytest.approx(0.0)  # written, not glTF's default of 1.0
        return obj
    assert links["Base Color"] == "TEX_IMAGE"
    assert links["Normal"] == "NORMAL_MAP" and material["normal_map_source"] == "TEX_IMAGE"
    assert links["Roughness"] == "SEPARATE_COLOR" and links["Metallic"] == "SEPARATE_COLOR"
    assert material["image_sizes"] and all(size == [512, 512] for size in material["image_sizes"])
    return obj


def server_status(server: ServeProcess, job_id: str) -> str:
    code, reply = server.call("GET", f"/status/{job_id}")
    assert code == 200, reply
    return reply["status"]


def addon_module(name: str) -> ModuleType:
    """A bpy-free module of the addon (client, jobflow), imported without running the package's __init__."""
    package = "image_to_3d_addon_under_test"
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, REPO / "blender_addon" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "blender_addon")])
        sys.modules[package] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{package}.{name}")


def test_client_endpoint_urls_and_online_access() -> None:
    client = addon_module("client")
    assert client.remote_base_url(" abc123 ") == "https://api.runpod.ai/v2/abc123"
    assert client.remote_base_url("https://api.runpod.ai/v2/abc123/run") == "https://api.runpod.ai/v2/abc123"
    assert client.local_base_url("gpu-box:8000/") == "http://gpu-box:8000/v2/local"
    assert client.local_base_url("http://gpu-box:8000/v2/mine") == "http://gpu-box:8000/v2/mine"
    for bad in ("", "abc/../x"):
        with pytest.raises(client.EndpointError):
            client.remote_base_url(bad)
    assert client.network_allowed("http://127.0.0.1:8000/v2/local", online_access=False)
    assert client.network_allowed("http://localhost:8000", online_access=False)
    assert not client.network_allowed("https://api.runpod.ai/v2/x", online_access=False)
    assert client.network_allowed("https://api.runpod.ai/v2/x", online_access=True)


def test_job_results_that_cannot_be_imported_say_why() -> None:
    jobflow, client = addon_module("jobflow"), addon_module("client")
    cases = ((None, "COMPLETED without output"), ({}, "COMPLETED without output"),
             ({"error": "mesh: no surface"}, "mesh: no surface"), ({"meta_url": "x"}, "no glb_url"))
    for output, words in cases:
        with pytest.raises(client.EndpointError, match=words):
            jobflow._result(output)
    result = {"glb_url": "https://s3/x/model.glb", "meta_url": "https://s3/x/meta.json"}
    assert jobflow._result(result) == result


def test_extension_zip_builds_and_validates(tmp_path: Path, blender: Path) -> None:
    zip_path = build(REPO / "blender_addon", tmp_path)
    assert zip_path.name == "image_to_3d-1.0.0.zip"
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "client.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert build(REPO / "blender_addon", tmp_path).read_bytes() == zip_path.read_bytes()  # reproducible
    # Blender's own extension tool (bl_pkg) validates the manifest inside the zip.
    locate = subprocess.run([str(blender), "-c", "import bpy, addon_utils; print(next(m.__file__ for m in "
                             "addon_utils.modules() if m.__name__ == 'bl_pkg'))"],
                            capture_output=True, text=True, timeout=120, check=True)
    tool = Path(locate.stdout.strip().splitlines()[-1]).parent / "cli" / "blender_ext.py"
    checked = subprocess.run([str(blender), str(tool), "validate", str(zip_path)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_addon_with_local_storage(tmp_path: Path, blender: Path) -> None:
    with running_server(tmp_path / "server", token=TOKEN) as server:
        common = {"mode": "LOCAL", "url": server.url, "key": TOKEN, "download_dir": str(tmp_path / "downloads"),
                  "options": TEXTURED}
        report = run_in_blender(blender, tmp_path, [
            {**common, "name": "file", "cursor": [1.0, 2.0, 3.0]},
            {**common, "name": "bad-token", "key": "wrong"},
            {**common, "name": "cancel", "cancel": True},
            {**common, "name": "remote-mode", "mode": "REMOTE", "url": server.endpoint, "source": "IMAGE",
             "cursor": [-1.0, 0.0, 0.5], "options": UNTEXTURED},
            {**common, "name": "unregister-while-running", "leave_running": True},
        ])
        runs = {r["name"]: r for r in report["runs"]}

        obj = check_imported(runs["file"], name="extinguisher", cursor=(1.0, 2.0, 3.0), textured=True)
        assert Path(obj["meta_path"]).parent.parent == tmp_path / "downloads"
        assert "API key" in runs["bad-token"]["status"]["error"]
        cancelled = runs["cancel"]["status"]
        assert cancelled["stage"] == "cancelled" and cancelled["error"] == "" and "object" not in runs["cancel"]
        assert server_status(server, cancelled["job_id"]) == "CANCELLED"
        check_imported(runs["remote-mode"], name="extinguisher.001", cursor=(-1.0, 0.0, 0.5), textured=False)
        left = runs["unregister-while-running"]["status"]["job_id"]
        assert left and server_status(server, left) == "CANCELLED"  # unregister cancelled it on the server too


def test_addon_with_s3_storage(tmp_path: Path, blender: Path, s3_server: S3Server) -> None:
    with running_server(tmp_path / "server", env=s3_server.env()) as server:
        common = {"mode": "LOCAL", "url": server.url, "download_dir": str(tmp_path / "downloads"),
                  "options": UNTEXTURED}
        report = run_in_blender(blender, tmp_path, [
            {**common, "name": "s3", "cursor": [0.0, 0.0, 1.0]},
            {**common, "name": "down", "url": f"http://127.0.0.1:{free_port()}"},
            {**common, "name": "job-fails", "options": {**UNTEXTURED, "shape_model": "hunyuan3d-2"}},
            {**common, "name": "no-key", "mode": "REMOTE", "url": "abc123"},
            {**common, "name": "offline", "mode": "REMOTE", "url": "abc123", "key": "rp_key"},
        ])
        runs = {r["name"]: r for r in report["runs"]}
        obj = check_imported(runs["s3"], name="extinguisher", cursor=(0.0, 0.0, 1.0), textured=False)
        outputs = obj["meta"]["outputs"]
        assert "model.glb" in outputs
        assert all(entry["url"].startswith(s3_server.endpoint_url) for entry in outputs.values())
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
        assert any(k.endswith(f"{obj['job_id']}/model.glb") for k in keys)
        assert "Cannot reach" in runs["down"]["status"]["error"]
        assert runs["job-fails"]["status"]["error"].startswith("The job failed: ")
        assert runs["no-key"]["operator"] == ["ERROR"] and "API key" in runs["no-key"]["status"]["error"]
        assert not report["online_access"] and "Allow Online Access" in runs["offline"]["status"]["error"]
