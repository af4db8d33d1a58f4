"""Whole jobs through `handler.run_job` for every model pairing a request allows, with tiny random models in
the real MODELS_DIR layout loaded through the real loaders (CPU, offline).

Each job must end as users get it: a result with the meta URL, meta.json valid against the schema, a GLB
that passes Khronos glTF-Validator with all five maps wired (albedo, normal, and AO / roughness / metallic
through the ORM image), every map and view that meta.json lists present with its sha256, and the
generated views in views/.
"""
from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

import handler
from pipeline.meta import validate_meta
from pipeline.paint_views import VIEW_AZIMUTHS, VIEW_ELEVATIONS
from pipeline.request import SHAPE_MODELS, TEXTURE_MODELS
from pipeline.run import Services
from pipeline.types import angled_view_name
from tests.gltf_checks import validate_gltf
from tests.helpers import EXAMPLES
from tests.tiny_models import install_shape_model
from tests.tiny_paint_models import install_paint_models
from tests.tiny_segmentation import install_tiny_segmentation
from tests.tiny_zero123plus import install_tiny_zero123plus
from utils.settings import Settings

HUNYUAN_SHAPES = [name for name in SHAPE_MODELS if name != "silhouette"]
PAINT_MODELS = [name for name in TEXTURE_MODELS if name != "projection"]
SMALL = {"target_faces": 1500, "texture_size": 512, "seed": 3}
HUNYUAN_SMALL = {"octree_resolution": 64, "steps": 2}
PAINT_VIEW_NAMES = {"delit_front"} | {angled_view_name("paint", a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)}


@pytest.fixture(scope="module", autouse=True)
def offline():  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Services:
    """One worker, as handler.py builds it, over a MODELS_DIR holding every tiny model."""
    root = tmp_path_factory.mktemp("models")
    for name in HUNYUAN_SHAPES:
        install_shape_model(root, name)
    for name in PAINT_MODELS:
        install_paint_models(root, name)
    install_tiny_zero123plus(root)
    install_tiny_segmentation(root)  # as a deployed worker: random Zero123++ weights paint noise GrabCut drops
    outputs = tmp_path_factory.mktemp("outputs")
    return handler.build_services(Settings(models_dir=root, local_output_dir=outputs, device="cpu"))


def picture(name: str = "crate.png") -> str:
    return base64.b64encode((EXAMPLES / name).read_bytes()).decode()


def glb_json(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    magic, version, _ = struct.unpack_from("<4sII", data)
    assert (magic, version) == (b"glTF", 2)
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + length])


def check_bundle(services: Services, job_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """The checks every whole job passes; returns meta.json."""
    assert "error" not in result, result
    assert set(result) == {"api_version", "job_id", "meta_url", "glb_url", "seconds"}
    folder = Path(services.settings.local_output_dir) / job_id
    meta = json.loads((folder / "meta.json").read_text())
    validate_meta(meta)
    for key, entry in meta["outputs"].items():
        data = (folder / key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], key
    for key in ("model.glb", "textures/albedo.png", "textures/normal.png", "textures/roughness.png",
                "textures/metallic.png", "textures/ao.png", "textures/orm.png", "views/front.png"):
        assert key in meta["outputs"], f"{key} missing from {sorted(meta['outputs'])}"

    report = validate_gltf(folder / "model.glb")
    assert report["issues"]["numErrors"] == 0
    doc = glb_json(folder / "model.glb")
    (material,) = doc["materials"]
    pbr = material["pbrMetallicRoughness"]
    image_of = {i: doc["images"][texture["source"]]["name"] for i, texture in enumerate(doc["textures"])}
    assert image_of[pbr["baseColorTexture"]["index"]] == "albedo"
    assert image_of[material["normalTexture"]["index"]] == "normal"
    # AO, roughness and metallic are the ORM image's R, G and B, as glTF reads them
    assert image_of[material["occlusionTexture"]["index"]] == "orm"
    assert image_of[pbr["metallicRoughnessTexture"]["index"]] == "orm"

    steps = meta["timings"]["steps"]
    assert {"fetch", "background"} <= set(steps["multiview"])
    assert {"extract", "cleanup"} <= set(steps["mesh"])
    assert {"unwrap", "rasterise", "normal_bake", "ao_bake", "dilation"} <= set(steps["texture"])
    assert {"maps_png", "glb", "views_png"} <= set(steps["export"])
    assert "files" in steps["upload"]
    return meta


def roles(meta: dict[str, Any]) -> dict[str, str]:
    return {model["role"]: model["name"] for model in meta["models"]}


@pytest.mark.parametrize("texture_model", TEXTURE_MODELS)
@pytest.mark.parametrize("shape_model", SHAPE_MODELS)
def test_every_shape_and_texture_pairing_completes(services: Services, shape_model: str, texture_model: str) -> None:
    job_id = f"{shape_model}-{texture_model}"
    job: dict[str, Any] = {"image_base64": picture(), "shape_model": shape_model, "texture_model": texture_model,
                           **SMALL}
    if shape_model != "silhouette":
        job.update(HUNYUAN_SMALL)
    if shape_model == "hunyuan3d-2mv":  # the multi-view model with the user's own extra views
        job["views"] = {side: {"base64": picture()} for side in ("left", "back", "right")}
    meta = check_bundle(services, job_id, handler.run_job(job_id, job, services=services))

    assert roles(meta)["shape"] == shape_model
    assert meta["material"]["maps"]["albedo"]["method"] == texture_model
    views = {view["name"] for view in meta["views"]}
    if texture_model in PAINT_MODELS:
        assert {roles(meta)["paint"], roles(meta)["delight"]} == {texture_model, "hunyuan3d-delight"}
        assert PAINT_VIEW_NAMES <= views
        assert {"delight", "diffusion", "back_projection"} <= set(meta["timings"]["steps"]["texture"])
    else:
        assert not views & PAINT_VIEW_NAMES
    if shape_model == "hunyuan3d-2mv":
        assert {"left", "back", "right"} <= views
    if shape_model != "silhouette":
        assert {"encode", "sample", "decode"} <= set(meta["timings"]["steps"]["mesh"])


def test_generated_views_feed_the_multiview_shape_model(services: Services) -> None:
    """`multiview` with the view-synthesis model: the generated views reach the shape model and the bundle."""
    job_id = "synthesised"
    job = {"image_base64": picture(), "multiview": "zero123plus-v1.2", "shape_model": "hunyuan3d-2mv",
           "texture_model": "hunyuan3d-paint", **SMALL, **HUNYUAN_SMALL}
    meta = check_bundle(services, job_id, handler.run_job(job_id, job, services=services))

    assert roles(meta)["view_synthesis"] == "zero123plus-v1.2"
    synthesis = meta["stages"]["multiview"]["view_synthesis"]
    kept = {record["name"] for record in synthesis["views"] if "dropped" not in record}
    generated = {view["name"] for view in meta["views"] if view["source"] == "generated"}
    assert kept and kept <= generated and PAINT_VIEW_NAMES <= generated
    assert "view_synthesis" in meta["timings"]["steps"]["multiview"]
    slots = {"left", "right"} & kept  # Zero123++'s 90 and 270 degree views fill those slots
    assert slots <= set(meta["stages"]["mesh"]["views_used"])
    for name in generated:
        assert f"views/{name}.png" in meta["outputs"]
