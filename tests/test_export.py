"""Export stage: bundle files, GLB structure, glTF-Validator, pygltflib/trimesh re-read, Blender import."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from pipeline.context import Deadline, StageContext
from pipeline.errors import JobCancelled, JobTimeout, StageError
from pipeline.export import UNTEXTURED_BASE_COLOR, BundleFile, export_bundle, write_glb
from pipeline.types import TexturedMesh
from tests.gltf_checks import check_blender_import, gltf_issues, validate_gltf
from tests.spot_fixture import example_views, spot_textured, untextured


Bundle = tuple[Path, list[BundleFile]]


def _ctx(seconds: float = 60.0) -> StageContext:
    return StageContext(stage="export", deadline=Deadline(seconds=seconds))


def _glb_json(path: Path) -> dict[str, Any]:
    """The GLB's JSON chunk exactly as written (not pygltflib's view of it, which fills defaults)."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack_from("<II", data, 12)
    assert chunk_type == 0x4E4F534A  # "JSON"
    return json.loads(data[20 : 20 + chunk_length])


@pytest.fixture(scope="module")
def spot() -> TexturedMesh:
    return spot_textured(256, normal_map=True, tangents=True, ao=False)


@pytest.fixture(scope="module")
def bundle(spot: TexturedMesh, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BundleFile]]:
    out = tmp_path_factory.mktemp("bundle")
    return out, export_bundle(spot, example_views(), out, ctx=_ctx())


def test_bundle_lists_every_written_file_with_true_size_and_hash(bundle: Bundle) -> None:
    out, files = bundle
    keys = [f.key for f in files]
    # AO was not baked: no ao.png; every map the texture stage made is there, the GLB first.
    assert keys == [
        "model.glb",
        "textures/albedo.png",
        "textures/normal.png",
        "textures/roughness.png",
        "textures/metallic.png",
        "textures/orm.png",
        "views/front.png",
        "views/back.png",
    ]
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(keys)
    for item in files:
        data = item.path.read_bytes()
        assert item.path == out / item.key
        assert item.bytes == len(data) > 0
        assert item.sha256 == hashlib.sha256(data).hexdigest()
        assert item.content_type == ("model/gltf-binary" if item.key.endswith(".glb") else "image/png")


def test_texture_and_view_pngs_have_the_documented_modes(bundle: Bundle, spot: TexturedMesh) -> None:
    out, files = bundle
    by_key = {f.key: f for f in files}
    expected = {
        "textures/albedo.png": ("RGB", "sRGB"),
        "textures/normal.png": ("RGB", "linear"),
        "textures/roughness.png": ("L", "linear"),
        "textures/metallic.png": ("L", "linear"),
        "textures/orm.png": ("RGB", "linear"),
        "views/front.png": ("RGBA", "sRGB"),
    }
    for key, (mode, colorspace) in expected.items():
        with Image.open(out / key) as image:
            assert image.format == "PNG" and image.mode == mode, key
            assert by_key[key].info["width"] == image.width and by_key[key].info["height"] == image.height
        assert by_key[key].info["colorspace"] == colorspace
        assert by_key[key].info["channels"] == len(mode)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "textures/orm.png")), spot.maps["orm"])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "textures/albedo.png")), spot.maps["albedo"])
    mesh_info = by_key["model.glb"].info
    assert (mesh_info["vertices"], mesh_info["faces"]) == (len(spot.vertices), len(spot.faces))
    np.testing.assert_allclose(mesh_info["bbox"], np.stack([spot.vertices.min(0), spot.vertices.max(0)]), atol=1e-6)


def test_glb_passes_khronos_validator_without_warnings(bundle: Bundle, spot: TexturedMesh) -> None:
    out, _ = bundle
    report = validate_gltf(out / "model.glb")
    # Tangents are present with the normal map, so not even MESH_PRIMITIVE_GENERATED_TANGENT_SPACE.
    assert report["issues"]["numWarnings"] == 0, gltf_issues(report, 1)
    assert report["info"]["materialCount"] == 1
    assert report["info"]["drawCallCount"] == 1
    assert report["info"]["totalVertexCount"] == len(spot.vertices)
    assert report["info"]["totalTriangleCount"] == len(spot.faces)


def test_glb_json_has_explicit_pbr_material_and_aligned_views(bundle: Bundle, spot: TexturedMesh) -> None:
    out, _ = bundle
    doc = _glb_json(out / "model.glb")
    assert "image-to-3d" in doc["asset"]["generator"]
    (material,) = doc["materials"]
    pbr = material["pbrMetallicRoughness"]
    # Written explicitly: glTF's default metallicFactor 1.0 must never be implied.
    assert pbr["metallicFactor"] == 1.0 and pbr["roughnessFactor"] == 1.0
    textures = doc["textures"]
    image_name = {i: doc["images"][t["source"]]["name"] for i, t in enumerate(textures)}
    assert image_name[pbr["baseColorTexture"]["index"]] == "albedo"
    assert image_name[pbr["metallicRoughnessTexture"]["index"]] == "orm"
    assert image_name[material["normalTexture"]["index"]] == "normal"
    assert "occlusionTexture" not in material  # AO was not baked
    assert all(img["mimeType"] == "image/png" and "bufferView" in img for img in doc["images"])
    (sampler,) = doc["samplers"]
    assert sampler == {"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}
    assert all(view["byteOffset"] % 4 == 0 for view in doc["bufferViews"])
    (prim,) = doc["meshes"][0]["primitives"]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0", "TANGENT"}
    position = doc["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(position["min"], spot.vertices.min(0))
    np.testing.assert_allclose(position["max"], spot.vertices.max(0))
    assert doc["accessors"][prim["indices"]]["componentType"] == 5123  # uint16: 3225 vertices fit


def test_glb_rereads_with_pygltflib_and_trimesh(bundle: Bundle, spot: TexturedMesh) -> None:
    out, _ = bundle
    gltf = pygltflib.GLTF2().load(str(out / "model.glb"))
    blob = gltf.binary_blob()
    decoded = {}
    for image in gltf.images:
        view = gltf.bufferViews[image.bufferView]
        png = blob[view.byteOffset : view.byteOffset + view.byteLength]
        decoded[image.name] = png
        Image.open(io.BytesIO(png)).load()
    # The GLB embeds exactly the bundle's PNG files.
    for name in ("albedo", "normal", "orm"):
        assert decoded[name] == (out / f"textures/{name}.png").read_bytes()
    scene = trimesh.load(out / "model.glb", force="scene")
    (geometry,) = scene.geometry.values()
    assert len(geometry.vertices) == len(spot.vertices) and len(geometry.faces) == len(spot.faces)
    np.testing.assert_array_equal(geometry.faces, spot.faces)
    np.testing.assert_allclose(geometry.vertices, spot.vertices, atol=1e-6)
    material = geometry.visual.material
    assert material.metallicFactor == 1.0 and material.roughnessFactor == 1.0
    assert material.baseColorTexture.size == (256, 256)


def test_blender_links_base_colour_orm_and_normal(bundle: Bundle, spot: TexturedMesh) -> None:
    out, _ = bundle
    result = check_blender_import(out / "model.glb")
    assert result["objects"] == 1
    assert (result["vertices"], result["faces"]) == (len(spot.vertices), len(spot.faces))
    assert result["base_color_linked"], result["base_color"]
    assert result["roughness_linked"], result["roughness"]
    assert result["metallic_linked"], result["metallic"]
    assert result["normal_linked"], result["normal"]
    assert result["base_color"]["chain"][0]["colorspace"] == "sRGB"
    assert result["roughness"]["chain"][-1]["colorspace"] == "Non-Color"


def test_untextured_glb_is_valid_with_explicit_uniform_factors(spot: TexturedMesh, tmp_path: Path) -> None:
    plain = untextured(spot, roughness=0.6, metallic=0.25)
    files = export_bundle(plain, example_views(), tmp_path, ctx=_ctx())
    assert [f.key for f in files] == ["model.glb", "views/front.png", "views/back.png"]
    report = validate_gltf(tmp_path / "model.glb")
    assert report["issues"]["numWarnings"] == 0, gltf_issues(report, 1)
    doc = _glb_json(tmp_path / "model.glb")
    pbr = doc["materials"][0]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.25 and pbr["roughnessFactor"] == 0.6
    assert pbr["baseColorFactor"] == list(UNTEXTURED_BASE_COLOR)
    assert "images" not in doc and "textures" not in doc and "samplers" not in doc
    assert set(doc["meshes"][0]["primitives"][0]["attributes"]) == {"POSITION", "NORMAL"}
    result = check_blender_import(tmp_path / "model.glb")
    assert not result["roughness"]["linked"] and result["roughness"]["value"] == pytest.approx(0.6)
    assert not result["metallic"]["linked"] and result["metallic"]["value"] == pytest.approx(0.25)
    assert result["base_color"]["value"][:3] == pytest.approx([0.8, 0.8, 0.8])


def test_baked_ao_links_occlusion_to_the_orm_texture(tmp_path: Path) -> None:
    mesh = spot_textured(64, normal_map=False, ao=True)
    info = write_glb(mesh, tmp_path / "ao.glb")
    assert info["material"]["occlusion_texture"] == "orm" and info["material"]["normal_texture"] is None
    validate_gltf(tmp_path / "ao.glb")
    material = _glb_json(tmp_path / "ao.glb")["materials"][0]
    orm_texture = material["pbrMetallicRoughness"]["metallicRoughnessTexture"]["index"]
    assert material["occlusionTexture"]["index"] == orm_texture


def test_validator_check_reports_missing_tangents(tmp_path: Path) -> None:
    """The warning check is live: a normal map without tangents is reported."""
    mesh = spot_textured(64, normal_map=True, tangents=False)
    write_glb(mesh, tmp_path / "no_tangents.glb")
    report = validate_gltf(tmp_path / "no_tangents.glb")
    codes = {m["code"] for m in gltf_issues(report, 1)}
    assert "MESH_PRIMITIVE_GENERATED_TANGENT_SPACE" in codes


def test_large_mesh_uses_uint32_indices(tmp_path: Path) -> None:
    grid = trimesh.creation.box().subdivide_to_size(0.012)
    assert len(grid.vertices) >= 65535
    mesh = TexturedMesh(
        vertices=np.asarray(grid.vertices, np.float32),
        faces=np.asarray(grid.faces, np.int32),
        uvs=None,
        normals=np.asarray(grid.vertex_normals, np.float32),
        tangents=None,
        maps={},
        roughness=0.8,
        metallic=0.0,
    )
    write_glb(mesh, tmp_path / "big.glb")
    validate_gltf(tmp_path / "big.glb")
    doc = _glb_json(tmp_path / "big.glb")
    assert doc["accessors"][doc["meshes"][0]["primitives"][0]["indices"]]["componentType"] == 5125


@pytest.mark.parametrize(
    ("maps", "fragment"),
    [
        ({"albedo": np.zeros((8, 8, 3), np.float32)}, "uint8"),
        ({"albedo": np.zeros((8, 4, 3), np.uint8)}, "square"),
        ({"roughness": np.zeros((8, 8, 3), np.uint8)}, "channel"),
        ({"emission": np.zeros((8, 8, 3), np.uint8)}, "unknown texture map"),
    ],
)
def test_bad_maps_fail_with_a_stage_error(spot: TexturedMesh, tmp_path: Path, maps: dict, fragment: str) -> None:
    bad = TexturedMesh(spot.vertices, spot.faces, spot.uvs, spot.normals, None, maps, 0.8, 0.0)
    with pytest.raises(StageError, match=fragment) as err:
        export_bundle(bad, example_views(), tmp_path, ctx=_ctx())
    assert err.value.stage == "export"


def test_zero_normals_and_bad_indices_fail_with_a_stage_error(spot: TexturedMesh, tmp_path: Path) -> None:
    normals = spot.normals.copy()
    normals[5] = 0.0
    broken = untextured(spot)
    broken.normals = normals
    with pytest.raises(StageError, match="normals are zero"):
        write_glb(broken, tmp_path / "x.glb")
    broken = untextured(spot)
    broken.faces = spot.faces + 1
    with pytest.raises(StageError, match="do not exist"):
        write_glb(broken, tmp_path / "x.glb")


def test_export_stops_when_the_deadline_has_passed(spot: TexturedMesh, tmp_path: Path) -> None:
    with pytest.raises(JobTimeout):
        export_bundle(spot, example_views(), tmp_path / "late", ctx=_ctx(seconds=1e-9))
    deadline = Deadline(seconds=60.0, cancel_event=threading.Event())
    deadline.cancel()
    with pytest.raises(JobCancelled):
        ctx = StageContext(stage="export", deadline=deadline)
        export_bundle(spot, example_views(), tmp_path / "cancelled", ctx=ctx)


def test_parallel_encoding_writes_the_files_sequential_encoding_writes(
    spot: TexturedMesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same bytes with one encoder thread as with several, and every image is encoded once (the GLB embeds
    the bytes made for textures/: the single-image encoder is never called)."""
    from pipeline import export

    def not_again(image: np.ndarray) -> bytes:
        raise AssertionError("an image was encoded a second time")

    monkeypatch.setattr(export, "encode_png", not_again)
    monkeypatch.setattr(export, "ENCODE_THREADS", 4)
    parallel = export_bundle(spot, example_views(), tmp_path / "parallel", ctx=_ctx())
    monkeypatch.setattr(export, "ENCODE_THREADS", 1)
    sequential = export_bundle(spot, example_views(), tmp_path / "sequential", ctx=_ctx())
    assert [f.key for f in parallel] == [f.key for f in sequential]
    for a, b in zip(parallel, sequential):
        assert a.path.read_bytes() == b.path.read_bytes(), a.key
