"""The texture stage end to end on real meshes with synthetic views."""
from __future__ import annotations

from pathlib import Path

import fast_simplification
import numpy as np
import pytest
import torch
import trimesh

from pipeline.context import Deadline, StageContext
from pipeline.errors import ModelUnavailableError
from pipeline.render.raster import interpolate, rasterize_uv
from pipeline.request import JobRequest
from pipeline.texture import run_texture_stage
from pipeline.types import MeshData, MeshResult, PreparedView, TexturedMesh, ViewSet

DATA = Path(__file__).resolve().parent / "data"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _request(**fields: object) -> JobRequest:
    return JobRequest.model_validate(
        {"image_base64": "AA==", "shape_model": "silhouette", "texture_size": 512, **fields}
    )


def _normalised(vertices: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    return ((vertices - centre) * scale).astype(np.float32)


def _load(name: str) -> MeshData:
    """A test mesh centred and scaled into [-0.9, 0.9]^3 (the world frame of pipeline/types.py)."""
    mesh = trimesh.load(DATA / name, process=False)
    centre = mesh.bounds.mean(0)
    scale = 0.9 / np.abs(mesh.vertices - centre).max()
    return MeshData(_normalised(mesh.vertices, centre, scale), mesh.faces.astype(np.int32))


def _view(
    name: str, azimuth: float, left: tuple[int, int, int], right: tuple[int, int, int], size: int = 128
) -> PreparedView:
    """An opaque view whose left image half is `left` and right half `right`."""
    rgba = np.full((size, size, 4), 255, np.uint8)
    rgba[:, : size // 2, :3] = left
    rgba[:, size // 2 :, :3] = right
    return PreparedView(name=name, rgba=rgba, source="input", azimuth=azimuth)


def _views(*views: PreparedView) -> ViewSet:
    return ViewSet(views={v.name: v for v in views}, sources=[])


def _run(mesh: MeshData, views: ViewSet, dense: MeshData | None = None, **fields: object) -> tuple[TexturedMesh, list]:
    log: list[tuple[float, str]] = []
    ctx = StageContext("texture", Deadline(120), progress=lambda stage, f, msg: log.append((f, msg)))
    result = run_texture_stage(_request(**fields), views, MeshResult(mesh, dense or mesh, {}), ctx)
    return result, log


def _texels(result: TexturedMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(covered [S, S] bool, world position [S, S, 3], normal [S, S, 3]) of each texel of the result."""
    size = result.maps["albedo"].shape[0]
    faces = torch.as_tensor(result.faces.astype(np.int64))
    frags = rasterize_uv(torch.as_tensor(result.uvs), faces, size)
    position = interpolate(torch.as_tensor(result.vertices), faces, frags)
    normal = torch.nn.functional.normalize(interpolate(torch.as_tensor(result.normals), faces, frags), dim=-1)
    return frags.mask.numpy(), position.numpy(), normal.numpy()


def _is(colour: tuple[int, int, int], pixels: np.ndarray) -> np.ndarray:  # [N] bool, within 40 per channel
    return (np.abs(pixels.astype(int) - colour) <= 40).all(-1)


@pytest.fixture(scope="module")
def spot_result() -> tuple[TexturedMesh, list]:
    return _run(_load("spot/spot_triangulated.obj"), _views(_view("front", 0.0, RED, BLUE)))


def test_untextured_request_keeps_factors_only() -> None:
    mesh = _load("spot/spot_triangulated.obj")
    result, _ = _run(mesh, _views(_view("front", 0.0, RED, BLUE)), texture=False, roughness=0.3, metallic=0.6)
    assert result.uvs is None and result.tangents is None and result.maps == {}
    assert result.info["maps"] == {} and result.info["texture"] == "disabled"
    assert np.array_equal(result.faces, mesh.faces)
    assert np.allclose(np.linalg.norm(result.normals, axis=1), 1, atol=1e-5)
    assert (result.roughness, result.metallic) == (0.3, 0.6)


@pytest.mark.parametrize("model", ["hunyuan3d-paint", "hunyuan3d-paint-turbo"])
def test_paint_models_need_a_model_manager(model: str) -> None:
    with pytest.raises(ModelUnavailableError, match="needs model weights"):
        _run(_load("spot/spot_triangulated.obj"), _views(_view("front", 0.0, RED, BLUE)), texture_model=model)


def test_spot_maps_and_info(spot_result) -> None:
    result, log = spot_result
    maps = result.maps
    assert maps["albedo"].shape == (512, 512, 3) and maps["normal"].shape == (512, 512, 3)
    for name in ("ao", "roughness", "metallic"):
        assert maps[name].shape == (512, 512) and maps[name].dtype == np.uint8
    assert np.array_equal(maps["orm"], np.stack([maps["ao"], maps["roughness"], maps["metallic"]], -1))
    assert (maps["roughness"] == 204).all() and (maps["metallic"] == 0).all()  # 0.8 and 0.0
    assert result.tangents.shape == (len(result.vertices), 4)
    assert result.uvs.shape == (len(result.vertices), 2)
    info = result.info
    assert info["maps"] == {
        "albedo": "projection", "normal": "baked", "ao": "baked",
        "roughness": "uniform", "metallic": "uniform", "orm": "packed",
    }
    assert info["models"] == {} and info["uv"]["method"] == "xatlas"
    assert info["albedo"]["method"] == "projection" and info["albedo"]["views"] == ["front", "back-mirrored"]
    assert info["normal"]["method"] == "baked" and info["ao"]["method"] == "baked"
    assert info["roughness"]["method"] == "uniform" and info["orm"]["size"] == 512
    # the low mesh is its own dense mesh: a flat normal map; AO darker in places but mostly open
    assert np.abs(maps["normal"].astype(int) - [128, 128, 255]).max() <= 2
    assert 150 < maps["ao"].mean() < 255 and maps["ao"].min() < 150
    # dilation filled every texel: nothing black is left between charts
    assert (maps["albedo"].max(-1) > 0).all()
    messages = [m for _, m in log]
    for expected in ("unwrapping UVs", "projecting views", "baking normal map", "baking ambient occlusion"):
        assert expected in messages
    fractions = [f for f, _ in log]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_front_colours_land_on_the_right_side(spot_result) -> None:
    # the front picture's left half (image columns < N/2) sees world x < 0: red there, blue at x > 0,
    # on the front and, through the mirrored front, on the back as well
    result, _ = spot_result
    covered, position, normal = _texels(result)
    albedo = result.maps["albedo"]
    for side, colour in ((position[..., 0] < -0.1, RED), (position[..., 0] > 0.1, BLUE)):
        for facing in (normal[..., 2] > 0.3, normal[..., 2] < -0.3):
            texels = covered & side & facing
            assert texels.sum() > 200
            assert _is(colour, albedo[texels]).mean() > 0.97


def test_side_view_colours_the_side_facing_it() -> None:
    mesh = _load("spot/spot_triangulated.obj")
    green = _view("right", 90.0, GREEN, GREEN)
    result, _ = _run(mesh, _views(_view("front", 0.0, RED, BLUE), green))
    covered, _, normal = _texels(result)
    albedo = result.maps["albedo"]
    # texels facing +X are green unless something hides them from the right camera (legs behind legs)
    assert _is(GREEN, albedo[covered & (normal[..., 0] > 0.8)]).mean() > 0.85
    assert _is(GREEN, albedo[covered & (normal[..., 0] < -0.3)]).mean() < 0.02  # the left side never
    assert result.info["albedo"]["views"] == ["front", "right", "back-mirrored"]


def test_occluded_surface_takes_no_colour_from_the_view() -> None:
    # a small plate at z = 0.5 hides the middle of a big plate at z = -0.5 from the front camera; the
    # picture is green exactly where the small plate is
    def plate(half: float, z: float) -> np.ndarray:
        return np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], np.float32)

    vertices = np.concatenate([plate(0.5, 0.5), plate(0.9, -0.5)])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], np.int32)
    rgba = np.full((128, 128, 4), 255, np.uint8)
    rgba[..., :3] = RED
    rgba[32:96, 32:96, :3] = GREEN
    result, _ = _run(MeshData(vertices, faces), _views(PreparedView("front", rgba, "input", 0.0)))
    covered, position, _ = _texels(result)
    albedo = result.maps["albedo"]
    small = covered & (position[..., 2] > 0)
    hidden = covered & (position[..., 2] < 0) & (np.abs(position[..., :2]) < 0.45).all(-1)
    assert small.sum() > 100 and hidden.sum() > 100
    assert _is(GREEN, albedo[small]).mean() > 0.97
    assert _is(RED, albedo[hidden]).mean() > 0.97  # filled from the nearest seen texels, never green


@pytest.mark.parametrize("name", ["stanford-bunny.obj", "fandisk.obj"])
def test_shared_meshes_bake_detail_from_the_dense_mesh(name: str) -> None:
    dense = _load(name)
    vertices, faces = fast_simplification.simplify(dense.vertices, dense.faces, target_count=2000)
    low = MeshData(vertices.astype(np.float32), faces.astype(np.int32))
    result, _ = _run(low, _views(_view("front", 0.0, RED, BLUE)), dense=dense)
    covered, _, _ = _texels(result)
    normal = result.maps["normal"][covered].astype(float) / 255 * 2 - 1
    length = np.linalg.norm(normal, axis=1)
    assert np.allclose(length, 1.0, atol=0.02)
    assert (normal[:, 2] > 0).mean() > 0.99  # detail tilts the normal, never flips it
    tilted = np.degrees(np.arccos(np.clip(normal[:, 2], -1, 1)))
    # the decimated surface differs from the dense one, moderately
    assert (tilted > 1.0).mean() > 0.1 and np.median(tilted) < 25
    assert result.info["normal"]["source_faces"] == len(dense.faces)
    assert result.maps["ao"][covered].mean() > 120
