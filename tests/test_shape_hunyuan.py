"""The Hunyuan3D-2 mesh stage on tiny random models in the real layout (CPU, offline)."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy.spatial import cKDTree

from models.manager import ModelManager
from models.registry import get_spec, missing_files, model_dir
from pipeline import meshops
from pipeline.context import Deadline, StageContext
from pipeline.errors import JobCancelled, ModelUnavailableError, StageError
from pipeline.hunyuan_sampler import (
    ShapeSettings,
    extract_surfaces,
    fill_undecoded,
    prepare_inputs,
    reduction_stride,
    run_shape,
    run_stock,
)
from pipeline.request import parse_request
from pipeline.shape_hunyuan import NO_SURFACE, clean_and_reduce, front_view_similarity, generate_hunyuan_mesh
from pipeline.types import MeshData, PreparedView, ViewSet
from bench.cleanup_cpu import analytic_grid
from tests.tiny_models import build_vae, dit_config, install_shape_model, vae_config
from utils.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHAPE_MODELS = ["hunyuan3d-2", "hunyuan3d-2-turbo", "hunyuan3d-2-fast", "hunyuan3d-2mini", "hunyuan3d-2mv"]
FAST = {"octree_resolution": 64, "steps": 2, "target_faces": 1000}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in SHAPE_MODELS:
        install_shape_model(root, name)
    return root


@pytest.fixture(scope="module")
def manager(models_dir) -> ModelManager:
    return ModelManager(Settings(models_dir=models_dir, device="cpu"))


def make_view(name: str, file: str, size: int = 96) -> PreparedView:
    """An example picture cut to its alpha box and centred on a square with a margin (as the views stage does)."""
    rgba = np.asarray(Image.open(EXAMPLES / file).convert("RGBA"))
    rows, cols = np.nonzero(rgba[..., 3] >= 128)
    crop = rgba[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = int(max(crop.shape[:2]) * 1.25)
    canvas = np.zeros((side, side, 4), np.uint8)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    canvas[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    square = np.asarray(Image.fromarray(canvas, "RGBA").resize((size, size), Image.BILINEAR))
    azimuth = {"front": 0.0, "right": 90.0, "back": 180.0, "left": 270.0}[name]
    return PreparedView(name=name, rgba=square, source="input", azimuth=azimuth)


def front_only(file: str = "lantern.png") -> ViewSet:
    return ViewSet(views={"front": make_view("front", file)}, sources=[])


def request(**fields):
    return parse_request({"image_base64": "unused-by-this-stage", **FAST, **fields})


def ctx(seconds: float = 120.0) -> StageContext:
    return StageContext("mesh", Deadline(seconds))


# --- generation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHAPE_MODELS)
def test_each_model_gives_one_closed_outward_mesh(manager, name):
    result = generate_hunyuan_mesh(request(shape_model=name), front_only(), ctx(), manager)
    stats = meshops.mesh_stats(result.mesh)
    assert stats["watertight"] and stats["components"] == 1 and stats["euler"] == 2
    assert stats["volume"] > 0  # faces wind outward
    assert 500 <= stats["faces"] <= 1000 < len(result.dense.faces)
    assert np.abs(result.mesh.vertices).max() <= 1.0 + 1e-5
    assert meshops.mesh_stats(result.dense)["watertight"]
    spec = get_spec(name)
    model = result.model
    assert (model["name"], model["repo_id"], model["revision"]) == (name, spec.repo_id, spec.revision)
    assert (model["device"], model["dtype"]) == ("cpu", "float32")
    assert model["settings"]["steps"] == 2 and model["settings"]["octree_resolution"] == 64
    assert model["settings"]["decoder"] == ("flashvdm" if spec.sampler.flashvdm else "hierarchical")
    assert {"guidance_scale", "seed", "num_chunks", "box_v", "mc_level"} <= set(model["settings"])


def test_same_seed_same_mesh_other_seed_other_mesh(manager):
    first = generate_hunyuan_mesh(request(seed=7), front_only(), ctx(), manager)
    again = generate_hunyuan_mesh(request(seed=7), front_only(), ctx(), manager)
    other = generate_hunyuan_mesh(request(seed=8), front_only(), ctx(), manager)
    assert np.array_equal(first.dense.vertices, again.dense.vertices)
    assert np.array_equal(first.dense.faces, again.dense.faces)
    assert first.dense.vertices.shape != other.dense.vertices.shape or not np.allclose(
        first.dense.vertices, other.dense.vertices, atol=1e-6)


def test_mesh_lines_up_with_the_front_view(manager):
    views = front_only("crate.png")
    result = generate_hunyuan_mesh(request(), views, ctx(), manager)
    rows, cols = np.nonzero(views.front.mask)
    n = views.front.mask.shape[0]
    mask_box = np.array([[cols.min() / n * 2 - 1, 1 - (rows.max() + 1) / n * 2],
                         [(cols.max() + 1) / n * 2 - 1, 1 - rows.min() / n * 2]])
    lo, hi = result.dense.bounds
    centre = (lo[:2] + hi[:2]) / 2
    assert np.allclose(centre, mask_box.mean(0), atol=1e-5)
    extent = max(hi[0] - lo[0], hi[1] - lo[1])
    assert extent == pytest.approx((mask_box[1] - mask_box[0]).max(), abs=1e-5)
    assert abs((lo[2] + hi[2]) / 2) < 1e-5


def fit_to_front_view(mesh: MeshData, mask: np.ndarray) -> tuple[MeshData, dict]:
    similarity, info = front_view_similarity(mesh.vertices, mask)
    return (mesh if similarity is None else meshops.apply_similarity(mesh, similarity)), info


def test_fit_to_front_view_shrinks_deep_meshes_into_the_box():
    cube = MeshData(vertices=np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-3, 3)], np.float32),
                    faces=np.zeros((0, 3), np.int32))
    mask = np.zeros((10, 10), bool)
    mask[1:9, 1:9] = True
    fitted, info = fit_to_front_view(cube, mask)
    assert np.abs(fitted.vertices).max() == pytest.approx(1.0)
    assert info["front_fit"]["shrunk_to_fit"] < 1


def test_multiview_uses_the_views_it_has(manager):
    views = {name: make_view(name, "lantern.png") for name in ("front", "left", "back", "right")}
    full = generate_hunyuan_mesh(request(shape_model="hunyuan3d-2mv"), ViewSet(views=views, sources=[]), ctx(), manager)
    assert full.info["views_used"] == ["front", "left", "back", "right"] and "views_missing" not in full.info
    assert meshops.mesh_stats(full.mesh)["watertight"]
    partial = {name: views[name] for name in ("front", "back")}
    two = generate_hunyuan_mesh(request(shape_model="hunyuan3d-2mv"), ViewSet(views=partial, sources=[]), ctx(),
                                manager)
    assert two.info["views_used"] == ["front", "back"] and two.info["views_missing"] == ["left", "right"]
    single = generate_hunyuan_mesh(request(), ViewSet(views=views, sources=[]), ctx(), manager)
    assert single.info["views_ignored"] == ["back", "left", "right"]


def test_missing_weights_name_the_files_and_the_command(tmp_path, models_dir):
    install_shape_model(tmp_path, "hunyuan3d-2")
    empty = ModelManager(Settings(models_dir=tmp_path, device="cpu"))
    with pytest.raises(ModelUnavailableError) as caught:
        generate_hunyuan_mesh(request(shape_model="hunyuan3d-2-turbo"), front_only(), ctx(), empty)
    message = caught.value.message
    assert caught.value.stage == "mesh"
    assert "tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0-turbo/model.fp16.safetensors" in message
    assert "tencent/Hunyuan3D-2/hunyuan3d-vae-v2-0-turbo/config.yaml" in message  # its FlashVDM VAE too
    assert "python -m models.download hunyuan3d-2-turbo" in message
    assert missing_files(get_spec("hunyuan3d-2"), tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only choice")
def test_device_and_dtype_are_chosen_once_for_this_machine(tmp_path):
    chosen = ModelManager(Settings(models_dir=tmp_path))
    assert (chosen.device, chosen.dtype) == ("cpu", torch.float32)
    with pytest.raises(ValueError, match="no usable CUDA device"):
        ModelManager(Settings(models_dir=tmp_path, device="cuda"))


def test_preload_loads_what_it_can_and_logs_the_rest(models_dir, caplog):
    fresh = ModelManager(Settings(models_dir=models_dir, device="cpu"))
    with caplog.at_level("INFO", logger="models.manager"):
        fresh.preload(["hunyuan3d-2mini", "no-such-model"])
    assert fresh.loaded() == ["hunyuan3d-2mini"]
    assert "loaded shape model hunyuan3d-2mini" in caplog.text and "not preloading no-such-model" in caplog.text
    assert "models loaded at start-up: hunyuan3d-2mini" in caplog.text


def test_cancel_stops_sampling_between_steps(manager):
    deadline = Deadline(120.0)
    steps_seen = []

    def progress(stage: str, fraction: float, message: str) -> None:
        if message.startswith("sampling step"):
            steps_seen.append(message)
            deadline.cancel()  # the deadline check right after this step's report must stop the sampler

    with pytest.raises(JobCancelled):
        generate_hunyuan_mesh(request(steps=30), front_only(), StageContext("mesh", deadline, progress), manager)
    assert steps_seen == ["sampling step 1/30"]


def test_no_surface_is_a_clear_error(manager):
    bias = manager.shape_pipeline("hunyuan3d-2").vae.geo_decoder.output_proj.bias
    # The decoder's field is shifted below the level everywhere: nothing is inside, there is no surface.
    with torch.no_grad():
        bias -= 100.0
    try:
        with pytest.raises(StageError, match=NO_SURFACE):
            generate_hunyuan_mesh(request(), front_only(), ctx(), manager)
    finally:
        with torch.no_grad():
            bias += 100.0


def test_hy3dgen_axes_come_through_unchanged(tmp_path):
    """A field lopsided towards +y (tilt * sin y) must give a raw mesh whose bounding box sits at +y."""
    install_shape_model(tmp_path, "hunyuan3d-2", tilt=0.4)
    pipe = ModelManager(Settings(models_dir=tmp_path, device="cpu")).shape_pipeline("hunyuan3d-2")
    settings = ShapeSettings(steps=2, guidance_scale=5.0, octree_resolution=64, num_chunks=8000, seed=0)
    raw = run_shape(pipe, Image.fromarray(make_view("front", "lantern.png").rgba, "RGBA"), settings, ctx())
    lo, hi = raw.bounds
    centre = (lo + hi) / 2
    assert centre[1] > 0.15 and abs(centre[0]) < 0.03 and abs(centre[2]) < 0.03


@pytest.mark.parametrize("name", ["hunyuan3d-2", "hunyuan3d-2-turbo"])
def test_step_by_step_path_equals_the_stock_call(manager, name):
    pipe = manager.shape_pipeline(name)
    decoder = "flashvdm" if get_spec(name).sampler.flashvdm else "vanilla"
    settings = ShapeSettings(steps=3, guidance_scale=5.0, octree_resolution=64, num_chunks=5000, seed=3,
                             decoder=decoder)
    image = Image.fromarray(make_view("front", "crate.png").rgba, "RGBA")
    ours = run_shape(pipe, image, settings, ctx())
    stock = run_stock(pipe, image, settings, ctx())
    assert np.array_equal(ours.faces, stock.faces)
    assert np.allclose(ours.vertices, stock.vertices, atol=1e-6)


@pytest.mark.parametrize("name", ["hunyuan3d-2", "hunyuan3d-2mv"])
def test_prepared_inputs_equal_hy3dgens_prepare_image(manager, name):
    pipe = manager.shape_pipeline(name)
    front = Image.fromarray(make_view("front", "lantern.png").rgba, "RGBA")
    image = {"front": front, "back": front.transpose(Image.FLIP_LEFT_RIGHT)} if name.endswith("mv") else front
    ours, stock = prepare_inputs(pipe, image), pipe.prepare_image(image)
    assert ours.keys() == stock.keys()
    for key, value in stock.items():
        assert torch.equal(ours[key], value) if isinstance(value, torch.Tensor) else ours[key] == value


def test_flashvdm_decoding_matches_full_decoding(manager):
    """The FlashVDM lever (surface-only decoding) against the full grid on the same latents."""
    pipe = manager.shape_pipeline("hunyuan3d-2")
    image = Image.fromarray(make_view("front", "lantern.png").rgba, "RGBA")
    base = dict(steps=2, guidance_scale=5.0, octree_resolution=64, num_chunks=8000, seed=1)
    full = run_shape(pipe, image, ShapeSettings(**base), ctx())
    flash = run_shape(pipe, image, ShapeSettings(**base, decoder="flashvdm"), ctx())
    # Top-k attention changes the field slightly; the surfaces must agree to a fraction of a grid cell.
    cell = 2.02 / 64
    assert np.allclose(full.bounds, flash.bounds, atol=cell)
    assert abs(len(flash.faces) / len(full.faces) - 1) < 0.1


def test_bf16_lever_stays_close_to_fp32(models_dir, manager):
    """The bf16 lever (ModelManager(dtype=...)) against the fp32 reference on the same model and seed."""
    bf16 = ModelManager(Settings(models_dir=models_dir, device="cpu"), dtype=torch.bfloat16)
    low = generate_hunyuan_mesh(request(), front_only(), ctx(), bf16)
    reference = generate_hunyuan_mesh(request(), front_only(), ctx(), manager)
    assert low.model["dtype"] == "bfloat16" and meshops.mesh_stats(low.mesh)["watertight"]
    assert np.allclose(low.dense.bounds, reference.dense.bounds, atol=2.02 / 64)
    assert abs(len(low.dense.faces) / len(reference.dense.faces) - 1) < 0.05


def test_fill_undecoded_gives_the_full_grid_surface():
    """Cells FlashVDM leaves undecoded (NaN, |logit| > 0.95) must not change the marching-cubes result."""
    from skimage import measure

    axis = torch.linspace(-1, 1, 48)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    full = (0.6 - torch.sqrt(x * x + y * y + z * z)) * 5  # positive inside a sphere
    sparse = torch.where(full.abs() > 0.95, torch.nan, full)[None]
    filled = fill_undecoded(sparse)[0]
    assert not filled.isnan().any() and torch.equal(filled[~sparse[0].isnan()], full[~sparse[0].isnan()])
    assert ((filled > 0) == (full > 0)).all()  # every filled cell is on its true side
    ours = measure.marching_cubes(filled.numpy(), 0.0, method="lewiner")
    reference = measure.marching_cubes(full.numpy(), 0.0, method="lewiner")
    assert np.array_equal(ours[1], reference[1]) and np.allclose(ours[0], reference[0])
    empty_line = torch.full((1, 4, 2, 2), torch.nan)
    empty_line[0, 1, 0, 0] = 0.5
    assert fill_undecoded(empty_line)[0, :, 0, 0].tolist() == [0.5] * 4
    assert fill_undecoded(empty_line)[0, :, 1, 1].tolist() == [-1.0] * 4


def test_turbo_refined_flashvdm_levels_still_give_a_closed_mesh(manager):
    """octree 128 makes FlashVDM decode twice, leaving far cells undecoded."""
    result = generate_hunyuan_mesh(request(shape_model="hunyuan3d-2-turbo", octree_resolution=128, steps=1),
                                   front_only(), ctx(), manager)
    stats = meshops.mesh_stats(result.dense)
    assert stats["watertight"] and stats["components"] == 1 and np.isfinite(result.dense.vertices).all()


def test_turbo_and_fast_decode_with_the_lighter_flashvdm_vae(models_dir, manager):
    """install_shape_model writes the FlashVDM VAE with its own geometry decoder (no ln_post, a latents_proj),
    and the manager loads it through ShapeVAE.from_pretrained (a strict load) in place of the DiT file's VAE;
    test_each_model_gives_one_closed_outward_mesh meshes with it end to end."""
    folder = model_dir(get_spec("hunyuan3d-2-vae-turbo"), models_dir)
    stored = load_file(folder / "model.fp16.safetensors")
    assert not [key for key in stored if key.startswith("geo_decoder.ln_post.")]
    assert {"geo_decoder.latents_proj.weight", "geo_decoder.latents_proj.bias"} <= set(stored)
    dit = load_file(model_dir(get_spec("hunyuan3d-2-turbo"), models_dir) / "model.fp16.safetensors")
    assert "vae.geo_decoder.ln_post.weight" in dit  # the DiT file's own VAE is the standard one
    for name in ("hunyuan3d-2-turbo", "hunyuan3d-2-fast"):
        decoder = manager.shape_pipeline(name).vae.geo_decoder
        assert not decoder.enable_ln_post and decoder.downsample_ratio == 2
        assert torch.equal(decoder.latents_proj.weight, stored["geo_decoder.latents_proj.weight"].float())
    assert manager.shape_pipeline("hunyuan3d-2").vae.geo_decoder.enable_ln_post


@pytest.mark.parametrize("name", ["hunyuan3d-2", "hunyuan3d-2-turbo"])
def test_benchmark_runs_tiny_on_cpu(tmp_path, name):
    from bench.shape_gpu import main

    out = tmp_path / "bench.json"
    result = main(["--tiny", "--device", "cpu", "--model", name, "--steps", "2", "--octree", "48", "--repeats", "1",
                   "--target-faces", "2000", "--json", str(out)])
    saved = json.loads(out.read_text())
    median = saved["median"]
    for key in ("encode", "sample", "decode", "extract", "cleanup", "stock_raw", "ratio"):
        assert median[key] > 0
    assert median["faces_final"] <= 2000 < median["faces_raw"]
    assert result["parameters"]["model"] > 0 and saved["settings"]["steps"] == 2
    vae = get_spec(name).vae  # turbo decodes with the FlashVDM VAE, as the worker does
    config = dit_config(name)["vae"] if vae is None else vae_config(vae)
    assert saved["vae"] == vae
    assert result["parameters"]["vae"] == sum(p.numel() for p in build_vae(config).parameters())


def test_handler_makes_a_valid_bundle_with_hunyuan_models(models_dir, tmp_path):
    """End to end through the worker: the tiny hunyuan3d-2 (front only) and hunyuan3d-2mv (with views)."""
    import handler
    from pipeline.meta import validate_meta

    settings = Settings(models_dir=models_dir, local_output_dir=tmp_path, device="cpu")
    services = handler.build_services(settings)
    picture = base64.b64encode((EXAMPLES / "crate.png").read_bytes()).decode()
    views = {side: {"base64": picture} for side in ("left", "back", "right")}
    for job_id, extra in (("single", {"shape_model": "hunyuan3d-2"}),
                          ("multi", {"shape_model": "hunyuan3d-2mv", "views": views})):
        job = {"image_base64": picture, "texture": False, "seed": 5, **FAST, **extra}
        result = handler.run_job(job_id, job, services=services)
        assert "error" not in result, result
        meta = json.loads((tmp_path / job_id / "meta.json").read_text())
        validate_meta(meta)
        shape = next(model for model in meta["models"] if model["name"] == extra["shape_model"])
        assert shape["settings"]["seed"] == 5 and shape["device"] == "cpu"
        assert meta["outputs"]["model.glb"]["faces"] <= 1000


# --- reduction source -----------------------------------------------------------------------------------------


def test_reduction_stride_keeps_four_times_the_target():
    assert reduction_stride(850_000, 40_000) == 2  # 212k faces left: room for the decimation
    assert reduction_stride(600_000, 40_000) == 1  # 150k < 4 x 40k: reduce the dense mesh
    assert reduction_stride(850_000, 10_000, max_stride=4) == 4
    assert reduction_stride(850_000, 10_000) == 2  # capped


def test_coarse_extraction_is_the_same_surface_in_the_same_frame():
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=128, num_chunks=1, seed=0)
    surfaces = extract_surfaces(analytic_grid(128), settings, target_faces=2_000)
    assert surfaces.stride == 2
    dense, coarse = surfaces.dense, surfaces.coarse
    assert len(coarse.faces) < len(dense.faces) / 3
    # Every coarse vertex lies on a grid edge of the stride-2 grid, between two field values of opposite
    # sign: within a coarse cell (2 fine cells) of the dense surface, and the boxes agree to that.
    cell = 2.02 / 128
    assert np.abs(coarse.bounds - dense.bounds).max() < 2 * cell
    distance, _ = cKDTree(dense.vertices).query(coarse.vertices)
    assert distance.max() < 2 * cell


def test_clean_and_reduce_moves_both_meshes_alike():
    settings = ShapeSettings(steps=1, guidance_scale=0.0, octree_resolution=128, num_chunks=1, seed=0)
    surfaces = extract_surfaces(analytic_grid(128), settings, target_faces=2_000)
    views = front_only("crate.png")
    mesh, dense, info = clean_and_reduce(surfaces, 2_000, views.front.mask, ctx())
    assert info["reduced_from"] == {"stride": 2, "faces": len(surfaces.coarse.faces)}
    assert len(mesh.faces) <= 2_000 and meshops.mesh_stats(mesh)["watertight"]
    reference, _ = fit_to_front_view(meshops.normalize_to_unit_box(meshops.clean_mesh(surfaces.dense)),
                                     views.front.mask)
    assert np.allclose(dense.bounds, reference.bounds, atol=1e-5)
    # the reduced mesh came through the same similarity: it stays within a coarse cell of the dense one
    scale = np.ptp(dense.vertices, 0).max() / np.ptp(surfaces.dense.vertices, 0).max()
    assert np.abs(mesh.bounds - dense.bounds).max() < 2 * (2.02 / 128) * scale
