"""meta.json / error.json: built from realistic stage outputs, validated against the shipped schemas."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

from pipeline.context import Deadline, StageContext
from pipeline.export import BundleFile, export_bundle
from pipeline.meta import (
    SCHEMA_DIR,
    SCHEMA_VERSION,
    build_error,
    build_meta,
    jsonable,
    validate_error,
    validate_meta,
)
from pipeline.request import JobRequest, parse_request
from pipeline.types import MeshData, MeshResult, SourceImage, TexturedMesh, ViewSet
from tests.spot_fixture import EXAMPLES, example_views, spot_textured, untextured

CREATED = datetime(2026, 11, 20, 23, 30, 5, 250000, tzinfo=timezone.utc)
TIMINGS = {"multiview": 0.41, "mesh": 3.2, "texture": 5.05, "export": 0.3, "upload": 0.6, "total": 9.6}


def _source(name: str, path: Path, mask_source: str) -> SourceImage:
    data = path.read_bytes()
    with Image.open(path) as image:
        rgba = np.asarray(image.convert("RGBA"))
        fmt = image.format
    return SourceImage(
        name=name,
        rgba=rgba,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        width=rgba.shape[1],
        height=rgba.shape[0],
        format=fmt,
        mask_source=mask_source,
    )


def _request(**extra: Any) -> JobRequest:
    front = base64.b64encode((EXAMPLES / "lantern.png").read_bytes()).decode()
    mask = base64.b64encode(b"\x89PNG mask bytes as sent").decode()
    raw = {
        "image_url": f"data:image/png;base64,{front}",
        "mask_base64": mask,
        "views": {"left": {"url": "https://example.com/left.jpg"}},
        "shape_model": "silhouette",
        "seed": 7,
        "texture_size": 512,
        "output_prefix": "studio/props",
        **extra,
    }
    return parse_request(raw)


def _views() -> ViewSet:
    views = example_views()
    views.sources = [
        _source("front", EXAMPLES / "lantern.png", "mask"),
        _source("left", EXAMPLES / "chair_wood.jpg", "none"),
    ]
    views.info["mask"] = {"sha256": hashlib.sha256(b"mask").hexdigest(), "bytes": 1234, "width": 512, "height": 512}
    return views


def _mesh(textured: TexturedMesh) -> MeshResult:
    mesh = MeshData(vertices=textured.vertices, faces=textured.faces)
    model = {"name": "silhouette", "repo_id": None, "revision": None, "dtype": "float32", "device": "cpu",
             "settings": {"target_faces": 40000, "grid": np.int64(128)}}
    return MeshResult(mesh=mesh, dense=mesh, model=model, info={"method": "visual hull", "seconds": np.float32(0.5)})


Built = tuple[dict[str, Any], list[BundleFile]]


def _build(textured: TexturedMesh, out: Path, request: JobRequest | None = None) -> Built:
    request = request or _request()
    views = _views()
    mesh = _mesh(textured)
    files = export_bundle(textured, views, out, ctx=StageContext(stage="export", deadline=Deadline(60.0)))
    prefix = f"{request.output_prefix}/job-42"
    meta = build_meta(
        job_id="job-42",
        request=request,
        views=views,
        mesh=mesh,
        textured=textured,
        files=files,
        urls={f.key: (out / f.key).as_uri() for f in files},
        key_prefix=prefix,
        timings=TIMINGS,
        models=[{"role": "shape", **mesh.model}, {"role": "texture", "name": "projection", "repo_id": None,
                 "revision": None, "dtype": None, "device": "cpu", "settings": {}}],
        created_at=CREATED,
    )
    return meta, files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(spot_textured(512), tmp_path_factory.mktemp("meta"))


def _fails(meta: dict[str, Any], *fragments: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_meta(meta)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_shipped_schemas_are_valid_draft_2020_12() -> None:
    for name in ("meta.schema.json", "error.schema.json"):
        schema = json.loads((SCHEMA_DIR / name).read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["additionalProperties"] is False
        jsonschema.Draft202012Validator.check_schema(schema)


def test_realistic_meta_validates_and_is_plain_json(built: Built) -> None:
    meta, _ = built
    validate_meta(meta)
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta
    assert meta["schema_version"] == SCHEMA_VERSION and meta["api_version"] == "1.0"
    assert meta["status"] == "complete" and meta["job_id"] == "job-42"
    assert meta["created_at"] == "2026-11-20T23:30:05.250Z"
    assert meta["timings"] == TIMINGS
    assert meta["worker"]["version"] and meta["worker"]["torch"] and meta["worker"]["numpy"] == np.__version__
    assert meta["models"][0]["settings"]["grid"] == 128


def test_meta_records_inputs_and_resolved_parameters(built: Built) -> None:
    meta, _ = built
    front, left = meta["input"]["images"]
    lantern = (EXAMPLES / "lantern.png").read_bytes()
    assert front == {
        "name": "front", "field": "image_url", "sha256": hashlib.sha256(lantern).hexdigest(), "bytes": len(lantern),
        "width": front["width"], "height": front["height"], "format": "PNG", "mask_source": "mask",
    }
    assert left["field"] == "views.left.url" and left["format"] == "JPEG"
    assert meta["input"]["mask"]["field"] == "mask_base64" and meta["input"]["mask"]["bytes"] == 1234
    params = meta["input"]["parameters"]
    assert params["texture_model"] == "projection" and params["target_faces"] == 40000 and params["seed"] == 7
    assert params["views"] == {"left": "url"}
    # The inline picture is recorded by hash, not copied into meta.json.
    assert params["image_url"].startswith("data:image/png;base64,<") and len(params["image_url"]) < 80
    assert "mask_base64" not in params and meta["input"]["seed"] == 7


def test_meta_outputs_match_the_files(built: Built) -> None:
    meta, files = built
    assert set(meta["outputs"]) == {f.key for f in files}
    for item in files:
        entry = meta["outputs"][item.key]
        assert entry["key"] == f"studio/props/job-42/{item.key}"
        assert entry["url"] == item.path.as_uri()
        assert (entry["bytes"], entry["sha256"]) == (item.bytes, hashlib.sha256(item.path.read_bytes()).hexdigest())
    glb = meta["outputs"]["model.glb"]
    assert glb["kind"] == "mesh" and glb["vertices"] == meta["mesh"]["vertices"] == 3225 and glb["faces"] == 5856
    assert glb["bbox"][0] == pytest.approx([-0.471552, -0.736784, -0.668909])
    albedo = meta["outputs"]["textures/albedo.png"]
    assert (albedo["width"], albedo["height"], albedo["colorspace"]) == (512, 512, "sRGB")
    assert albedo["method"] == "source texture"
    assert meta["outputs"]["views/back.png"]["kind"] == "view"


def test_meta_states_absent_maps_honestly(built: Built) -> None:
    meta, _ = built
    material = meta["material"]
    assert material["textured"] is True and material["texture_size"] == 512
    assert material["maps"]["ao"] == {"method": "not baked", "key": None, "value": 1.0}
    assert material["maps"]["roughness"] == {"method": "uniform", "key": "textures/roughness.png"}
    assert material["gltf"]["occlusion_texture"] is None
    assert material["gltf"]["metallic_factor"] == 1.0 and material["gltf"]["metallic_roughness_texture"] == "orm"
    back = next(v for v in meta["views"] if v["name"] == "back")
    assert back == {"name": "back", "key": "views/back.png", "source": "generated", "azimuth": 180.0, "elevation": 0.0,
                    "fov": 30.0, "projection": "perspective", "mask_method": "alpha", "size": 128}


def test_untextured_meta_validates_with_uniform_values(tmp_path: Path) -> None:
    meta, files = _build(untextured(spot_textured(64), roughness=0.6, metallic=0.25), tmp_path, _request(texture=False))
    validate_meta(meta)
    assert [f.key for f in files] == ["model.glb", "views/front.png", "views/back.png"]
    material = meta["material"]
    assert material["textured"] is False and material["texture_size"] is None
    assert material["maps"]["roughness"] == {"method": "not computed", "key": None, "value": 0.6}
    assert material["maps"]["metallic"]["value"] == 0.25
    assert material["gltf"]["metallic_factor"] == 0.25 and material["gltf"]["roughness_factor"] == 0.6


@pytest.mark.parametrize(
    ("mutate", "fragments"),
    [
        (lambda m: m.pop("job_id"), ["'job_id' is a required property"]),
        (lambda m: m["outputs"]["model.glb"].pop("sha256"), ["$.outputs['model.glb']", "'sha256' is a required"]),
        (lambda m: m["outputs"]["model.glb"].pop("vertices"), ["'vertices' is a required"]),
        (lambda m: m["timings"].pop("texture"), ["'texture' is a required"]),
        (lambda m: m["material"]["maps"].pop("ao"), ["'ao' is a required"]),
        (lambda m: m["mesh"].__setitem__("vertices", "3225"), ["$.mesh.vertices", "is not of type 'integer'"]),
        (
            lambda m: m["outputs"]["textures/orm.png"].__setitem__("sha256", "ab"),
            ["$.outputs['textures/orm.png'].sha256"],
        ),
        (lambda m: m.__setitem__("created_at", "2026-11-20T23:30:05+01:00"), ["$.created_at"]),
        (lambda m: m.__setitem__("status", "failed"), ["$.status"]),
        (lambda m: m.__setitem__("glb", "x"), ["Additional properties"]),
        (lambda m: m["worker"].__setitem__("gpu", "x"), ["$.worker", "Additional properties"]),
        (lambda m: m["outputs"].__setitem__("../escape.png", m["outputs"]["model.glb"]), ["$.outputs"]),
        (lambda m: m["timings"].__setitem__("mesh", -1.0), ["$.timings.mesh"]),
    ],
)
def test_broken_meta_fails_validation_naming_the_path(
    built: Built, mutate: Any, fragments: list[str]
) -> None:
    meta = copy.deepcopy(built[0])
    mutate(meta)
    _fails(meta, *fragments)


def test_build_meta_refuses_inconsistent_inputs(tmp_path: Path) -> None:
    textured = spot_textured(32)
    with pytest.raises(ValueError, match="timezone-aware"):
        build_meta(job_id="j", request=_request(), views=_views(), mesh=_mesh(textured), textured=textured, files=[],
                   urls={}, key_prefix="j", timings=TIMINGS, models=[], created_at=datetime(2026, 1, 1))
    files = export_bundle(textured, _views(), tmp_path, ctx=StageContext(stage="export", deadline=Deadline(60.0)))
    common = dict(job_id="j", request=_request(), mesh=_mesh(textured), textured=textured, files=files,
                  key_prefix="j", timings=TIMINGS, models=[], created_at=CREATED)
    with pytest.raises(ValueError, match="no URL was given for bundle file 'textures/albedo.png'"):
        build_meta(views=_views(), urls={"model.glb": "file:///x"}, **common)
    unrecorded = _views()
    del unrecorded.info["mask"]
    with pytest.raises(ValueError, match="mask"):
        build_meta(views=unrecorded, urls={f.key: "file:///x" for f in files}, **common)


def test_jsonable_rejects_what_json_cannot_carry() -> None:
    assert jsonable({"a": (np.float32(0.5), Path("x/y"))}) == {"a": [0.5, "x/y"]}
    with pytest.raises(ValueError, match=r"meta\.a"):
        jsonable({"a": float("nan")})
    with pytest.raises(ValueError, match="object"):
        jsonable({"a": object()})


def test_error_body_validates_and_its_check_can_fail() -> None:
    body = build_error(job_id="job-42", stage="mesh", message="no surface was found; try another picture",
                       timings={"multiview": 0.4, "mesh": 1.25, "total": 1.7},
                       created_at=CREATED.astimezone(timezone(timedelta(hours=2))))
    validate_error(body)
    assert body["created_at"] == "2026-11-20T23:30:05.250Z" and body["status"] == "failed"
    assert set(body) == {"schema_version", "api_version", "job_id", "created_at", "status", "stage", "error", "timings"}
    for key, value in (("status", "complete"), ("error", ["a", "list"]), ("timings", {"mesh": 1.0})):
        broken = {**body, key: value}
        with pytest.raises(ValueError, match="error.json is invalid"):
            validate_error(broken)


def test_one_view_name_rule_for_stages_schema_and_storage() -> None:
    """Generated view names pass export's check, the schema's name and key patterns and the storage key rule."""
    from pipeline.paint_views import VIEW_AZIMUTHS, VIEW_ELEVATIONS
    from pipeline.types import VIEW_NAME_PATTERN, angled_view_name, is_view_name
    from pipeline.view_synthesis import ZERO123PLUS_CAMERAS, view_names
    from utils.storage import _KEY_CHARS

    schema = json.loads((SCHEMA_DIR / "meta.schema.json").read_text())
    assert schema["$defs"]["view"]["properties"]["name"]["pattern"] == VIEW_NAME_PATTERN
    output_keys = schema["properties"]["outputs"]["propertyNames"]["pattern"]
    assert f"views/{VIEW_NAME_PATTERN[1:-1]}\\.png" in output_keys
    names = [angled_view_name("paint", a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    names += view_names(ZERO123PLUS_CAMERAS, {"front"})
    assert "paint_az180_elm90" in names and "paint_az000_elp90" in names
    for name in names:
        assert is_view_name(name) and _KEY_CHARS.fullmatch(f"job/views/{name}.png"), name
        jsonschema.validate(f"views/{name}.png", {"pattern": output_keys})
    assert not is_view_name("paint_az000_el+00")
