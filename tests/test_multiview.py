"""pipeline/multiview.py: gathering the request's pictures and preparing centred object views."""
from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from models.manager import ModelManager
from pipeline import multiview
from pipeline.context import Deadline, StageContext
from pipeline.errors import InputError, JobTimeout, ModelUnavailableError
from pipeline.multiview import RawInputs, gather_inputs, prepare_views, recentre
from pipeline.request import parse_request
from pipeline.types import ViewSet
from pipeline.view_synthesis import ZERO123PLUS_CAMERAS, view_names
from tests.helpers import example_b64, example_bytes
from tests.tiny_segmentation import expected_mask, install_tiny_segmentation
from tests.tiny_zero123plus import install_tiny_zero123plus
from utils.fetch import Fetcher
from utils.settings import Settings

MAX = 40_000_000


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _ctx(seconds: float = 60.0, log: list[tuple[str, float, str]] | None = None) -> StageContext:
    progress = (lambda stage, f, msg: log.append((stage, f, msg))) if log is not None else None
    if progress is None:
        return StageContext("multiview", Deadline(seconds))
    return StageContext("multiview", Deadline(seconds), progress, span=(0.0, 0.1))


def _prepare(name: str, *, mask: bytes | None = None, remove_background: object = "auto",
             views: dict[str, tuple[str, bytes]] | None = None, view_size: int = 512):
    request = parse_request({"image_base64": "AAAA", "remove_background": remove_background})
    raw = RawInputs(image=("image_base64", example_bytes(name)), mask=("mask_base64", mask) if mask else None,
                    views=views or {})
    return prepare_views(request, raw, _ctx(), view_size=view_size, max_pixels=MAX)


def _rgba(name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(example_bytes(name))).convert("RGBA"))


# --- gather_inputs ---------------------------------------------------------------------------------------


def test_gather_inputs_names_every_field() -> None:
    png = example_bytes("extinguisher.png")
    request = parse_request({
        "image_base64": example_b64("extinguisher.png"),
        "mask_base64": "data:image/png;base64," + base64.b64encode(png).decode(),
        "views": {"back": {"base64": example_b64("crate.png")},
                  "left": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
    })
    raw = gather_inputs(request, Fetcher(Settings()))
    assert raw.image == ("image_base64", png)
    assert raw.mask == ("mask_base64", png)
    assert raw.views == {"left": ("views.left.url", png), "back": ("views.back.base64", example_bytes("crate.png"))}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"image_url": "file:///etc/passwd"}, "image_url"),
        ({"image_base64": "not base64!"}, "image_base64"),
        ({"image_base64": "AAAA", "mask_url": "http://169.254.169.254/latest/"}, "mask_url"),
        ({"image_base64": "AAAA", "views": {"right": {"url": "gopher://x/"}}}, "views.right.url"),
        ({"image_base64": "AAAA", "views": {"left": {"base64": "@@@@"}}}, "views.left.base64"),
    ],
)
def test_gather_inputs_errors_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        gather_inputs(parse_request(payload), Fetcher(Settings()))
    assert info.value.field == field


# --- recentring -----------------------------------------------------------------------------------------


def test_recentre_geometry() -> None:
    """A 40x20 box off to one side ends up centred, its larger side spanning (1 - 2 margin) of the view."""
    alpha = np.zeros((100, 200), np.uint8)
    alpha[10:30, 130:170] = 255
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[alpha > 0] = [200, 100, 50]
    view = recentre(rgb, alpha, view_size=64, margin=0.1)
    assert view.shape == (64, 64, 4) and view.dtype == np.uint8
    weight = view[..., 3].astype(np.float64) / 255.0
    assert weight.sum() == pytest.approx(51.2 * 25.6, rel=0.02)
    cy, cx = ndimage.center_of_mass(weight)
    assert cx == pytest.approx(31.5, abs=0.1) and cy == pytest.approx(31.5, abs=0.1)  # pixel-centre coords
    solid = view[..., 3] == 255
    assert (np.abs(view[solid, :3].astype(int) - [200, 100, 50]) <= 1).all()


def test_box_shrink_matches_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The strip-wise premultiplied box shrink equals a whole-image numpy reference, edges included."""
    monkeypatch.setattr(multiview, "STRIP_PIXELS", 500)  # many strips
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (47, 61, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (47, 61), dtype=np.uint8)
    calls: list[int] = []
    fast = multiview._premultiplied_box_shrink(rgb, alpha, 4, lambda: calls.append(1))
    weight = alpha[..., None] / 255.0
    padded = np.pad(np.concatenate([rgb * weight, weight * 255.0], axis=2), ((0, 1), (0, 3), (0, 0)))
    reference = padded.reshape(12, 4, 16, 4, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(fast, reference, atol=1e-3)
    assert len(calls) > 3  # the deadline is checked between strips


def test_recentre_big_picture_geometry() -> None:
    alpha = np.zeros((1500, 3000), np.uint8)
    alpha[200:1100, 1700:2300] = 255  # 600 wide x 900 tall
    rgb = np.full((1500, 3000, 3), 255, np.uint8)
    rgb[alpha > 0] = [10, 120, 240]
    view = recentre(rgb, alpha, view_size=100, margin=0.1)
    weight = view[..., 3].astype(np.float64) / 255.0
    assert weight.sum() == pytest.approx(80 * 80 * 600 / 900, rel=0.02)
    cy, cx = ndimage.center_of_mass(weight)
    assert cx == pytest.approx(49.5, abs=0.1) and cy == pytest.approx(49.5, abs=0.1)
    assert (np.abs(view[weight > 0.99, :3].astype(int) - [10, 120, 240]) <= 1).all()


@pytest.mark.parametrize("view_size", [64, 512])
def test_recentre_down_and_up(view_size: int) -> None:
    rgba = _rgba("crate.png")  # 719 px: shrunk for 64, enlarged for 512 (the object is smaller than 512)
    view = recentre(rgba[..., :3], rgba[..., 3], view_size=view_size, margin=0.1)
    rows = np.flatnonzero((view[..., 3] >= 128).any(axis=1))
    cols = np.flatnonzero((view[..., 3] >= 128).any(axis=0))
    span = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    assert span == pytest.approx(0.8 * view_size, abs=2)
    assert (rows[0] + rows[-1]) / 2 == pytest.approx((view_size - 1) / 2, abs=1.5)
    assert (cols[0] + cols[-1]) / 2 == pytest.approx((view_size - 1) / 2, abs=1.5)


def test_hidden_backdrop_colour_cannot_bleed() -> None:
    """The RGB under transparent pixels has no influence on the prepared view (premultiplied resampling,
    background filled from the object's own colours)."""
    rgba = _rgba("extinguisher.png").copy()
    outside = rgba[..., 3] == 0
    views = []
    for colour in ([0, 255, 0], [255, 0, 255]):
        rgba[outside, :3] = colour
        views.append(recentre(rgba[..., :3], rgba[..., 3], view_size=512, margin=0.1))
    np.testing.assert_array_equal(views[0], views[1])
    background = views[0][..., 3] == 0
    assert background.any() and not (views[0][background] == [0, 255, 0, 0]).all(axis=1).any()


# --- prepare_views -------------------------------------------------------------------------------------


def test_alpha_picture() -> None:
    views = _prepare("lantern.png")
    front = views.front
    assert front.mask_method == "alpha" and front.source == "input" and front.azimuth == 0.0
    assert front.rgba.shape == (512, 512, 4)
    rows = np.flatnonzero(front.mask.any(axis=1))
    assert (rows[0], rows[-1]) == (51, 460)  # the tall lantern spans 0.8 of the view, centred
    assert views.sources[0].mask_source == "alpha" and views.sources[0].format == "PNG"
    assert views.info["background_removal"] == {"setting": "auto", "per_view": {"front": "alpha"}}


def test_mask_wins_over_alpha() -> None:
    alpha = _rgba("lantern.png")[..., 3] >= 128
    half = alpha.copy()
    half[:, :360] = False  # only the right half of the lantern
    views = _prepare("lantern.png", mask=_png(half.astype(np.uint8) * 255))
    assert views.front.mask_method == "mask" and views.sources[0].mask_source == "mask"
    cols = np.flatnonzero(views.front.mask.any(axis=0))
    rows = np.flatnonzero(views.front.mask.any(axis=1))
    assert (rows[0], rows[-1]) == (51, 460) and cols[-1] - cols[0] < 0.6 * (rows[-1] - rows[0])


def test_mask_size_mismatch_names_the_mask_field() -> None:
    with pytest.raises(InputError) as info:
        _prepare("lantern.png", mask=_png(np.pad(np.full((10, 10), 255, np.uint8), 5)))
    assert info.value.field == "mask_base64" and "mask is 20x20 but the image is 719x719" in info.value.reason


def test_remove_background_false_keeps_the_whole_photo() -> None:
    views = _prepare("earphone.jpg", remove_background=False)
    assert views.front.mask_method == "none"
    rows = np.flatnonzero(views.front.mask.any(axis=1))
    cols = np.flatnonzero(views.front.mask.any(axis=0))
    assert rows[-1] - rows[0] + 1 == pytest.approx(409.6, abs=1.5)  # the 370x500 frame itself is the object
    assert cols[-1] - cols[0] + 1 == pytest.approx(409.6 * 370 / 500, abs=1.5)


def test_remove_background_false_still_uses_alpha() -> None:
    assert _prepare("extinguisher.png", remove_background=False).front.mask_method == "alpha"


def test_remove_background_true_cuts_inside_the_alpha() -> None:
    views = _prepare("extinguisher.png", remove_background=True)
    assert views.front.mask_method == "grabcut"
    assert views.info["background_removal"]["backend"] == "grabcut"
    reference = _prepare("extinguisher.png").front.mask
    assert (views.front.mask & reference).sum() / (views.front.mask | reference).sum() > 0.9


@pytest.mark.parametrize(("name", "low", "high"), [("chair_wood.jpg", 0.12, 0.45), ("earphone.jpg", 0.4, 0.8)])
def test_photos_give_one_main_object(name: str, low: float, high: float) -> None:
    views = _prepare(name)
    front = views.front
    assert front.mask_method == "grabcut" and views.sources[0].mask_source == "none"
    components, count = ndimage.label(front.mask)
    sizes = np.bincount(components.ravel())[1:]
    assert sizes.max() >= 0.99 * front.mask.sum()  # one main component (a few resampled edge pixels aside)
    rows = np.flatnonzero(front.mask.any(axis=1))
    cols = np.flatnonzero(front.mask.any(axis=0))
    frame = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    assert low < front.mask.sum() / frame < high  # a plausible share of the object's own box


def test_extra_views_each_with_its_azimuth() -> None:
    extra = {"left": ("views.left.base64", example_bytes("crate.png")),
             "right": ("views.right.url", example_bytes("earphone.jpg"))}
    views = _prepare("extinguisher.png", views=extra, view_size=128)
    assert list(views.views) == ["front", "left", "right"]
    assert [s.name for s in views.sources] == ["front", "left", "right"]
    assert views.views["left"].azimuth == 270.0 and views.views["right"].azimuth == 90.0
    assert views.views["right"].mask_method == "grabcut" and views.views["left"].mask_method == "alpha"
    assert all(v.rgba.shape == (128, 128, 4) for v in views.views.values())


def test_bad_extra_view_names_its_field() -> None:
    with pytest.raises(InputError) as info:
        _prepare("extinguisher.png", views={"back": ("views.back.url", b"<html>oops</html>")})
    assert info.value.field == "views.back.url" and "not a PNG, JPEG or WebP" in info.value.reason


def test_fully_transparent_picture() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_url", _png(rgba)), mask=None, views={})
    with pytest.raises(InputError) as info:
        prepare_views(request, raw, _ctx(), max_pixels=MAX)
    assert info.value.field == "image_url" and "fully transparent" in info.value.reason


def test_plain_photo_has_no_object_to_find() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (240, 240, 240)).save(buf, format="JPEG")
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_base64", buf.getvalue()), mask=None, views={})
    with pytest.raises(InputError) as info:
        prepare_views(request, raw, _ctx(), max_pixels=MAX)
    assert info.value.field == "image_base64" and "background removal found no object" in info.value.reason


def test_tiny_mask_names_the_mask_field() -> None:
    speck = np.zeros((719, 719), np.uint8)
    speck[300:302, 300:302] = 255  # 4 pixels: not empty, but no object either
    with pytest.raises(InputError) as info:
        _prepare("lantern.png", mask=_png(speck))
    assert info.value.field == "mask_base64" and "no object pixel" in info.value.reason


def test_progress_is_reported_between_pictures() -> None:
    log: list[tuple[str, float, str]] = []
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_base64", example_bytes("extinguisher.png")), mask=None,
                    views={"back": ("views.back.base64", example_bytes("extinguisher.png"))})
    prepare_views(request, raw, _ctx(log=log), view_size=64, max_pixels=MAX)
    fractions = [f for _, f, _ in log]
    assert [stage for stage, _, _ in log] == ["multiview"] * 3
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == pytest.approx(0.1)


def test_past_the_deadline_stops() -> None:
    ctx = _ctx()
    ctx = replace(ctx, deadline=Deadline(1.0, started=ctx.deadline.started - 5.0))
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_base64", example_bytes("earphone.jpg")), mask=None, views={})
    with pytest.raises(JobTimeout):
        prepare_views(request, raw, ctx, max_pixels=MAX)


# --- the segmentation model and generated views ----------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: threads only contend on a shared 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _manager(models_dir: Path) -> ModelManager:
    return ModelManager(Settings(models_dir=models_dir, device="cpu"))


def _generate(models_dir: Path) -> ViewSet:
    request = parse_request({"image_base64": "AAAA", "multiview": "zero123plus-v1.2", "seed": 5})
    raw = RawInputs(image=("image_base64", example_bytes("lantern.png")), mask=None, views={})
    return prepare_views(request, raw, _ctx(), view_size=64, max_pixels=MAX, models=_manager(models_dir))


def test_photo_is_cut_by_the_segmentation_model_when_installed(tmp_path: Path) -> None:
    install_tiny_segmentation(tmp_path)
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_base64", example_bytes("chair_wood.jpg")), mask=None, views={})
    views = prepare_views(request, raw, _ctx(), view_size=256, max_pixels=MAX, models=_manager(tmp_path))
    assert views.front.mask_method == "birefnet-lite"
    removal = views.info["background_removal"]
    assert removal["backend"] == "birefnet-lite" and removal["provider"] == "CPUExecutionProvider"
    assert removal["per_view"] == {"front": "birefnet-lite"}
    assert views.info["models"]["segmentation"]["repo_id"] == "onnx-community/BiRefNet_lite-ONNX"
    # The cut-out is the graph's decision (red minus blue over a threshold), recentred.
    rgb = _rgba("chair_wood.jpg")[..., :3]
    truth = recentre(rgb, expected_mask(rgb).astype(np.uint8) * 255, view_size=256, margin=0.1)[..., 3] >= 128
    assert (views.front.mask & truth).sum() / (views.front.mask | truth).sum() > 0.9


def test_alpha_still_wins_over_the_model_in_auto(tmp_path: Path) -> None:
    install_tiny_segmentation(tmp_path)
    request = parse_request({"image_base64": "AAAA"})
    raw = RawInputs(image=("image_base64", example_bytes("lantern.png")), mask=None, views={})
    views = prepare_views(request, raw, _ctx(), max_pixels=MAX, models=_manager(tmp_path))
    assert views.front.mask_method == "alpha" and "backend" not in views.info["background_removal"]


def test_mask_is_recorded_for_meta() -> None:
    mask = _png((_rgba("lantern.png")[..., 3] >= 128).astype(np.uint8) * 255)
    views = _prepare("lantern.png", mask=mask)
    assert views.info["mask"] == {"sha256": hashlib.sha256(mask).hexdigest(), "bytes": len(mask),
                                  "width": 719, "height": 719, "format": "PNG"}


def test_generated_views_with_their_cameras(tmp_path: Path, one_thread: None) -> None:
    install_tiny_zero123plus(tmp_path)
    views = _generate(tmp_path)
    synthesis = views.info["view_synthesis"]
    assert synthesis["model"] == "zero123plus-v1.2" and synthesis["seed"] == 5
    records = synthesis["views"]
    assert [r["name"] for r in records] == view_names(ZERO123PLUS_CAMERAS, {"front"})
    assert [(r["azimuth"], r["elevation"], r["fov"]) for r in records] == [
        (c.azimuth, c.elevation, c.fov) for c in ZERO123PLUS_CAMERAS]
    # Random weights paint noise: views where the cut-out finds nothing are dropped, and say so.
    kept = [r for r in records if "dropped" not in r]
    assert all(r["dropped"].startswith("background removal found no object") for r in records if r not in kept)
    assert list(views.views) == ["front"] + [r["name"] for r in kept]
    for record in kept:
        view = views.views[record["name"]]
        assert view.source == "generated" and view.rgba.shape == (64, 64, 4) and view.mask.any()
        assert (view.azimuth, view.elevation, view.fov) == (record["azimuth"], record["elevation"], 30.0)
        assert view.mask_method == "grabcut"
    assert synthesis["slots_filled"] == {k: v for k, v in {"left": 270.0, "right": 90.0}.items() if k in views.views}
    assert views.info["models"]["view_synthesis"]["repo_id"] == "sudo-ai/zero123plus-v1.2"
    assert views.info["background_removal"]["backend"] == "grabcut"
    again = _generate(tmp_path)
    assert all(np.array_equal(v.rgba, again.views[k].rgba) for k, v in views.views.items())


def test_user_views_win_over_generated_ones(tmp_path: Path, one_thread: None) -> None:
    install_tiny_zero123plus(tmp_path)
    request = parse_request({"image_base64": "AAAA", "multiview": "zero123plus-v1.2",
                             "views": {"right": {"base64": "AAAA"}}})
    raw = RawInputs(image=("image_base64", example_bytes("lantern.png")), mask=None,
                    views={"right": ("views.right.base64", example_bytes("crate.png"))})
    views = prepare_views(request, raw, _ctx(), view_size=64, max_pixels=MAX, models=_manager(tmp_path))
    assert views.views["right"].source == "input" and views.views["right"].azimuth == 90.0
    assert views.info["view_synthesis"]["views"][1]["name"] == "generated_az090_elm10"


def test_missing_view_synthesis_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        _generate(tmp_path)
    assert info.value.stage == "multiview" and "zero123plus-v1.2/model_index.json" in info.value.message


def test_view_synthesis_needs_the_model_manager() -> None:
    request = parse_request({"image_base64": "AAAA", "multiview": "zero123plus-v1.2"})
    raw = RawInputs(image=("image_base64", example_bytes("lantern.png")), mask=None, views={})
    with pytest.raises(ModelUnavailableError):
        prepare_views(request, raw, _ctx(), view_size=64, max_pixels=MAX)


def test_generated_views_fill_the_multiview_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  one_thread: None) -> None:
    """The stage's handling of what the sampler returns (cut-out, recentring, names, slots), with the grid
    replaced by real object pictures on Zero123++'s grey backdrop: random tiny weights paint noise."""
    from pipeline.shape_hunyuan import condition_images

    install_tiny_zero123plus(tmp_path)
    tiles = []
    for name in ("crate.png", "lantern.png", "extinguisher.png") * 2:
        rgba = np.asarray(Image.fromarray(_rgba(name)).resize((96, 96), Image.LANCZOS)).astype(np.float32)
        weight = rgba[..., 3:] / 255.0
        tiles.append(np.rint(rgba[..., :3] * weight + 127 * (1 - weight)).astype(np.uint8))
    monkeypatch.setattr(multiview, "sample_views", lambda *args, **kwargs: tiles)
    views = _generate(tmp_path)
    assert list(views.views) == ["front"] + view_names(ZERO123PLUS_CAMERAS, {"front"})
    assert views.info["view_synthesis"]["slots_filled"] == {"left": 270.0, "right": 90.0}
    assert views.views["right"].elevation == -10.0 and views.views["left"].elevation == 20.0
    assert all(v.mask.any() and v.rgba[0, 0, 3] == 0 for v in views.views.values())
    _, used = condition_images(views, multiview=True)
    assert used["views_used"] == ["front", "left", "right"] and used["views_missing"] == ["back"]
