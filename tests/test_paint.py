"""Hunyuan3D-Paint albedo: upstream conventions (cameras, normal / position encoding), back-projection,
fill, and the whole path with tiny random models loaded through the real loader on CPU."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import xatlas

from models.manager import ModelManager
from models.paint_loader import forget, paint_models
from pipeline.bake import texel_surface
from pipeline.context import Deadline, StageContext
from pipeline.dilation import dilate
from pipeline.errors import JobCancelled, ModelUnavailableError
from pipeline.paint import paint_albedo
from pipeline.paint_bake import fill_unseen, merge_views
from pipeline.paint_diffusion import recenter, turbo_timesteps
from pipeline.paint_views import (
    CAMERA_DISTANCE,
    ORTHO_HALF_EXTENT,
    VIEW_AZIMUTHS,
    VIEW_ELEVATIONS,
    VIEW_WEIGHTS,
    camera_index,
    encode_normals,
    encode_positions,
    normalize_for_views,
    render_view_maps,
    view_camera,
    welded_vertex_normals,
)
from pipeline.render.camera import project_points
from pipeline.render.raster import rasterize_uv
from pipeline.types import PreparedView
from tests.tiny_paint_models import TINY_VIEW_SIZE, install_paint_models
from utils.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_TO_RENDERER = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # MeshRender.set_mesh


def sphere(subdivisions: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A unit-radius icosphere unwrapped by xatlas: (vertices [V, 3], faces [F, 3], uvs [V, 2])."""
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    vmap, faces, uvs = xatlas.parametrize(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    return mesh.vertices[vmap].astype(np.float32), faces.astype(np.int32), uvs.astype(np.float32)


def front_view() -> PreparedView:
    from PIL import Image

    rgba = np.asarray(Image.open(EXAMPLES / "lantern.png").convert("RGBA").resize((96, 96)))
    return PreparedView(name="front", rgba=rgba, source="input", azimuth=0.0)


def ctx(deadline: Deadline | None = None, progress=None) -> StageContext:  # type: ignore[no-untyped-def]
    kwargs = {"progress": progress} if progress is not None else {}
    return StageContext(stage="texture", deadline=deadline or Deadline(600.0), **kwargs)


# --- conventions ---------------------------------------------------------------------------------------

def test_view_cameras_match_upstream_pixels() -> None:
    """Our camera puts every point on the pixel hy3dgen's get_mv_matrix + custom_rasterizer would."""
    from hy3dgen.texgen.differentiable_renderer.camera_utils import (
        get_mv_matrix,
        get_orthographic_projection_matrix,
    )

    size = 1000
    points = np.random.default_rng(0).uniform(-0.55, 0.55, (200, 3))
    proj = get_orthographic_projection_matrix(-ORTHO_HALF_EXTENT, ORTHO_HALF_EXTENT, -ORTHO_HALF_EXTENT,
                                              ORTHO_HALF_EXTENT, 0.1, 100)
    for azimuth, elevation in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS):
        renderer = np.c_[points @ _TO_RENDERER.T, np.ones(len(points))]
        camera_space = renderer @ get_mv_matrix(elevation, azimuth, CAMERA_DISTANCE).T.astype(np.float64)
        ndc = (camera_space @ proj.T.astype(np.float64))[:, :3]
        # custom_rasterizer: column = (x/2 + 1/2)(W-1) + 1/2, row = (1/2 + y/2)(H-1) + 1/2 (row 0 at NDC y = -1)
        upstream = np.stack([(ndc[:, 0] * 0.5 + 0.5) * (size - 1) + 0.5, (0.5 + 0.5 * ndc[:, 1]) * (size - 1) + 0.5], 1)
        xy, _, depth = project_points(torch.as_tensor(points, dtype=torch.float64), view_camera(azimuth, elevation, size))
        assert np.abs(xy.numpy() - upstream).max() < 0.6, (azimuth, elevation)
        assert np.allclose(depth.numpy(), -camera_space[:, 2], atol=1e-5)


def test_camera_ids_are_upstreams() -> None:
    assert [camera_index(a, e) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)] == [21, 12, 15, 18, 43, 37]


def test_encodings_follow_upstream_renderer() -> None:
    """Normal colour = (face normal computed in the renderer frame + 1) / 2 for a counter-clockwise
    (outward) triangle; position colour = 0.5 - renderer position / 1.15 (MeshRender.render_*)."""
    rng = np.random.default_rng(1)
    for _ in range(10):
        tri = rng.normal(size=(3, 3))
        outward = np.cross(tri[1] - tri[0], tri[2] - tri[0])
        outward /= np.linalg.norm(outward)
        r = tri @ _TO_RENDERER.T
        upstream = np.cross(r[1] - r[0], r[2] - r[0])
        upstream = (upstream / np.linalg.norm(upstream) + 1.0) * 0.5
        assert np.allclose(encode_normals(torch.as_tensor(outward)).numpy(), upstream, atol=1e-9)
        assert np.allclose(encode_positions(torch.as_tensor(tri)).numpy(), 0.5 - r / 1.15, atol=1e-9)


def test_sphere_view_maps_face_each_camera() -> None:
    vertices, faces, _ = sphere()
    normalized, _, scale = normalize_for_views(vertices)
    assert np.isclose(np.linalg.norm(normalized, axis=1).max(), 1.15 / 2, atol=1e-4)
    maps = render_view_maps(normalized, faces, welded_vertex_normals(normalized, faces), size=64, device="cpu")
    centre = maps.normal[:, :, 32, 32]  # [6, 3]
    # Camera-facing normal of each view in our frame, then encoded as upstream does.
    facing = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 0, -1], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float32)
    assert torch.allclose(centre, encode_normals(facing), atol=0.03)
    assert torch.allclose(maps.position[0, :, 32, 32], encode_positions(torch.tensor([0.0, 0.0, 0.575])), atol=0.03)
    # Upright front view: upper half sees +y normals (blue > 0.5), right half +x (red > 0.5).
    assert maps.normal[0, 2, 16, 32] > 0.7 and maps.normal[0, 0, 32, 48] > 0.7
    # White background, coverage a disc of radius 0.575 / 0.6 of the half-size.
    assert torch.all(maps.normal[:, :, 0, 0] == 1.0) and torch.all(maps.position[:, :, 0, 0] == 1.0)
    assert abs(maps.mask[0].float().mean().item() - np.pi * (0.575 / 1.2) ** 2) < 0.03


# --- back-projection and fill ---------------------------------------------------------------------------

def _sphere_surface(size: int = 128):  # type: ignore[no-untyped-def]
    vertices, faces, uvs = sphere()
    normalized, _, _ = normalize_for_views(vertices)
    normals = welded_vertex_normals(normalized, faces)
    surface = texel_surface(normalized, faces, uvs, normals, size=size)
    return normalized, faces, surface


def test_back_projection_of_constant_views() -> None:
    normalized, faces, surface = _sphere_surface()
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                            [1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    images = colours[:, :, None, None].expand(6, 3, 64, 64).contiguous()
    cameras = [view_camera(a, e, 64) for a, e in zip(VIEW_AZIMUTHS, VIEW_ELEVATIONS)]
    texture, seen = merge_views(images, cameras, VIEW_WEIGHTS, surface, torch.as_tensor(normalized),
                                torch.as_tensor(faces.astype(np.int64)))
    assert seen[surface.mask].float().mean() > 0.99 and not seen[~surface.mask].any()
    normal = surface.normal
    for view, axis in ((0, torch.tensor([0.0, 0.0, 1.0])), (2, torch.tensor([0.0, 0.0, -1.0]))):
        facing = surface.mask & ((normal @ axis) > 0.97)  # only that view sees these (others past 75 degrees)
        assert facing.sum() > 50
        assert torch.allclose(texture[facing], colours[view].expand(int(facing.sum()), 3), atol=1e-5)
    # Between front (weight 1) and right (0.1) at 45 degrees: mostly front, some right.
    diagonal = surface.mask & ((normal @ torch.tensor([0.7071, 0.0, 0.7071])) > 0.99)
    mixed = texture[diagonal].mean(0)
    assert mixed[0] > 0.8 and 0.02 < mixed[1] < 0.2


def test_back_projection_respects_occlusion() -> None:
    """A small box hidden behind a big one (seen from the front) gets no colour from the front view."""
    big = trimesh.creation.box(extents=(1.0, 1.0, 0.2))
    small = trimesh.creation.box(extents=(0.3, 0.3, 0.1))
    small.apply_translation((0.0, 0.0, -0.5))
    mesh = trimesh.util.concatenate([big, small])
    vmap, faces, uvs = xatlas.parametrize(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    vertices = mesh.vertices[vmap].astype(np.float32)
    normalized, _, _ = normalize_for_views(vertices)
    surface = texel_surface(normalized, faces.astype(np.int64), uvs, welded_vertex_normals(normalized, faces),
                            size=128)
    camera = view_camera(0.0, 0.0, 64)
    images = torch.ones(1, 3, 64, 64)
    texture, seen = merge_views(images, [camera], [1.0], surface, torch.as_tensor(normalized),
                                torch.as_tensor(faces.astype(np.int64)))
    small_front = surface.mask & (surface.position[..., 2] < -0.1) & (surface.normal[..., 2] > 0.9)
    big_front = surface.mask & (surface.position[..., 2] > 0.0) & (surface.normal[..., 2] > 0.9)
    assert small_front.sum() > 10 and not seen[small_front].any()
    assert seen[big_front].float().mean() > 0.9


def test_fill_takes_nearest_seen_colour() -> None:
    size = 16
    positions = np.zeros((size, size, 3))
    positions[..., 0] = np.arange(size)[None, :]
    positions[..., 1] = np.arange(size)[:, None]
    texture = np.zeros((size, size, 3))
    texture[:, :8] = (1.0, 0.0, 0.0)
    seen = np.zeros((size, size), bool)
    seen[:, :8] = True
    covered = np.ones((size, size), bool)
    covered[:, 14:] = False
    filled = fill_unseen(texture, seen, covered, positions, neighbours=1)
    assert np.allclose(filled[:, 8:14], (1.0, 0.0, 0.0)) and np.allclose(filled[:, 14:], 0.0)


def test_recenter_pads_the_object_like_upstream() -> None:
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[40:60, 30:50] = 200  # a 20 x 20 object
    out = recenter(rgba)
    assert out.shape == (28, 28, 4)  # 20 + 2 * int(20 * 0.2)
    assert (out[..., 3] > 0).sum() == 400 and np.all(out[0, 0] == (255, 255, 255, 0))


def test_turbo_timesteps_are_upstreams_grid() -> None:
    assert turbo_timesteps(10, 1000) == [989, 890, 791, 692, 593, 494, 395, 296, 197, 98]
    assert turbo_timesteps(2, 1000) == [989, 494]


# --- the whole path with tiny models through the real loader ------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    install_paint_models(root, "hunyuan3d-paint")
    install_paint_models(root, "hunyuan3d-paint-turbo")
    return root


@pytest.fixture(scope="module")
def manager(installed: Path):  # type: ignore[no-untyped-def]
    manager = ModelManager(Settings(models_dir=installed, device="cpu"))
    yield manager
    forget(manager)


def _tiny(models):  # type: ignore[no-untyped-def]
    return dataclasses.replace(models, view_size=TINY_VIEW_SIZE, delight_steps=2)


def test_layout_is_the_hubs(installed: Path) -> None:
    paint = installed / "tencent" / "Hunyuan3D-2" / "hunyuan3d-paint-v2-0"
    for folder in ("scheduler", "text_encoder", "tokenizer", "unet", "vae", "feature_extractor"):
        assert (paint / folder).is_dir()
    assert json.loads((paint / "model_index.json").read_text())["unet"] == ["modules", "UNet2p5DConditionModel"]
    turbo = installed / "tencent" / "Hunyuan3D-2" / "hunyuan3d-paint-v2-0-turbo"
    assert (turbo / "vae" / "diffusion_pytorch_model.bin").is_file()


def test_paint_albedo_with_tiny_models(manager: ModelManager) -> None:
    models = paint_models(manager, "hunyuan3d-paint")
    assert paint_models(manager, "hunyuan3d-paint") is models  # cached per manager
    assert models.steps == 30 and not models.turbo and models.view_size == TINY_VIEW_SIZE
    vertices, faces, uvs = sphere(2)
    args = dict(texture_size=256, models=_tiny(models), seed=3, steps=2, device="cpu")
    albedo, info = paint_albedo(front_view(), vertices, faces, uvs, ctx=ctx(), **args)
    assert albedo.shape == (256, 256, 3) and albedo.dtype == np.uint8
    assert info["seen_fraction"] > 0.99 and info["steps"] == 2
    assert info["models"]["paint"]["subfolder"] == "hunyuan3d-paint-v2-0"
    assert info["models"]["delight"]["name"] == "hunyuan3d-delight"
    images = info.pop("images")
    assert sorted(images) == ["delit_front", "paint_az000_elp00", "paint_az000_elp90", "paint_az090_elp00",
                              "paint_az180_elm90", "paint_az180_elp00", "paint_az270_elp00"]
    assert all(image.shape == (TINY_VIEW_SIZE, TINY_VIEW_SIZE, 3) and image.dtype == np.uint8 for image in images.values())
    json.dumps(info)
    # Every texel is filled: dilating the result again changes nothing, and the map is not uniform.
    covered = rasterize_uv(torch.as_tensor(uvs), torch.as_tensor(faces.astype(np.int64)), 256).mask.numpy()
    assert np.array_equal(dilate(albedo, covered, pixels=256), albedo)
    assert len(np.unique(albedo.reshape(-1, 3), axis=0)) > 50
    again, _ = paint_albedo(front_view(), vertices, faces, uvs, ctx=ctx(), **args)
    assert np.array_equal(again, albedo)
    other, _ = paint_albedo(front_view(), vertices, faces, uvs, ctx=ctx(), **{**args, "seed": 4})
    assert not np.array_equal(other, albedo)


def test_turbo_loads_bin_vae_and_runs(manager: ModelManager) -> None:
    models = paint_models(manager, "hunyuan3d-paint-turbo")
    assert models.turbo and models.steps == 10 and type(models.multiview.scheduler).__name__ == "LCMScheduler"
    vertices, faces, uvs = sphere(1)
    albedo, info = paint_albedo(front_view(), vertices, faces, uvs, texture_size=64, models=_tiny(models), ctx=ctx(),
                                seed=0, steps=2, device="cpu")
    assert albedo.shape == (64, 64, 3) and info["turbo"]


def test_missing_weights_name_files_and_command(tmp_path: Path) -> None:
    install_paint_models(tmp_path, "hunyuan3d-paint")
    paint = tmp_path / "tencent" / "Hunyuan3D-2" / "hunyuan3d-paint-v2-0"
    (paint / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    empty = ModelManager(Settings(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ModelUnavailableError) as err:
        paint_models(empty, "hunyuan3d-paint")
    assert err.value.stage == "texture"
    assert "hunyuan3d-paint-v2-0/unet/diffusion_pytorch_model.safetensors" in err.value.message
    assert "python -m models.download hunyuan3d-paint" in err.value.message
    with pytest.raises(ModelUnavailableError, match="delight-v2-0/unet/config.json"):
        paint_models(ModelManager(Settings(models_dir=tmp_path / "none", device="cpu")), "hunyuan3d-paint-turbo")


def test_deadline_stops_the_diffusion(manager: ModelManager) -> None:
    deadline = Deadline(600.0)
    seen: list[str] = []

    def progress(stage: str, fraction: float, message: str) -> None:
        seen.append(message)
        if message == "generating views":
            deadline.cancel()  # the next check, after this denoising step, must stop the job

    vertices, faces, uvs = sphere(1)
    models = _tiny(paint_models(manager, "hunyuan3d-paint"))
    with pytest.raises(JobCancelled):
        paint_albedo(front_view(), vertices, faces, uvs, texture_size=64, models=models, ctx=ctx(deadline, progress),
                     seed=0, steps=5, device="cpu")
    assert seen.count("generating views") == 1 and "projecting views onto the texture" not in seen


def test_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    from bench.texture_gpu import main

    out = tmp_path / "bench.json"
    main(["--tiny", "--device", "cpu", "--repeats", "1", "--size", "64", "--faces", "320", "--ao-samples", "2",
          "--json", str(out)])
    median = json.loads(out.read_text())["median"]
    for key in ("delight", "render", "diffusion", "back_projection", "fill", "normal_bake", "ao_bake"):
        assert median[key] > 0
    assert median["seen_fraction"] > 0.9


def test_texture_stage_paints_with_tiny_models(manager: ModelManager) -> None:
    """texture_model hunyuan3d-paint through run_texture_stage: the paint albedo, its models in info, and the
    generated views handed on for the bundle."""
    from pipeline.request import parse_request
    from pipeline.texture import run_texture_stage
    from pipeline.types import MeshData, MeshResult, ViewSet

    source = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    mesh = MeshData(source.vertices.astype(np.float32), source.faces.astype(np.int32))
    request = parse_request({"image_base64": "AAAA", "shape_model": "silhouette", "texture_model": "hunyuan3d-paint",
                             "texture_size": 512})
    views = ViewSet(views={"front": front_view()}, sources=[])
    result = run_texture_stage(request, views, MeshResult(mesh, mesh, {}), ctx(), device="cpu", models=manager)
    assert result.maps["albedo"].shape == (512, 512, 3)
    assert result.info["maps"]["albedo"] == "hunyuan3d-paint"
    assert set(result.info["models"]) == {"paint", "delight"}
    generated = result.info["generated_views"]
    assert "delit_front" in generated and all(v.source == "generated" for v in generated.values())


def test_texture_stage_names_missing_paint_weights(tmp_path: Path) -> None:
    from pipeline.request import parse_request
    from pipeline.texture import run_texture_stage
    from pipeline.types import MeshData, MeshResult, ViewSet

    source = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    mesh = MeshData(source.vertices.astype(np.float32), source.faces.astype(np.int32))
    request = parse_request({"image_base64": "AAAA", "shape_model": "silhouette", "texture_model": "hunyuan3d-paint"})
    empty = ModelManager(Settings(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ModelUnavailableError, match="python -m models.download hunyuan3d-paint"):
        run_texture_stage(request, ViewSet(views={"front": front_view()}, sources=[]), MeshResult(mesh, mesh, {}),
                          ctx(), device="cpu", models=empty)
