"""pipeline.silhouette on the example pictures and on masks with known answers (disc, ring, blobs)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.context import Deadline, StageContext
from pipeline.errors import JobCancelled, JobTimeout, StageError
from pipeline.meshops import mesh_stats
from pipeline.silhouette import build_silhouette_mesh, sample_grid
from pipeline.types import MeshData, MeshResult, PreparedView
from tests.helpers import EXAMPLES

SIZE = 512
EXAMPLE_NAMES = ("lantern.png", "crate.png", "extinguisher.png")


def prepared_view(name: str, size: int = SIZE, margin: float = 0.1) -> PreparedView:
    """An example picture as the multiview stage prepares it: square RGBA, object centred with a margin."""
    rgba = np.asarray(Image.open(EXAMPLES / name).convert("RGBA"))
    rows, cols = np.nonzero(rgba[..., 3] >= 128)
    crop = Image.fromarray(rgba[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    scale = (1 - 2 * margin) * size / max(crop.size)
    crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return PreparedView(name="front", rgba=np.asarray(canvas), source="input", azimuth=0.0)


def mask_view(mask: np.ndarray) -> PreparedView:  # [N, N] bool
    rgba = np.zeros(mask.shape + (4,), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = np.where(mask, 255, 0)
    return PreparedView(name="front", rgba=rgba, source="input", azimuth=0.0)


def world_xy(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:  # pixel centres, [N, N] each
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    return centres[None, :].repeat(size, 0), centres[::-1, None].repeat(size, 1)


def ctx(seconds: float = 60.0, progress=None) -> StageContext:
    if progress is None:
        return StageContext(stage="mesh", deadline=Deadline(seconds))
    return StageContext(stage="mesh", deadline=Deadline(seconds), progress=progress)


def footprint(mesh: MeshData, size: int) -> np.ndarray:  # [size, size] bool
    """The mesh's orthographic projection onto the front view (triangles filled)."""
    cols = (mesh.vertices[:, 0] + 1) / 2 * size - 0.5
    rows = (1 - mesh.vertices[:, 1]) / 2 * size - 0.5
    image = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for tri in mesh.faces:
        draw.polygon([(cols[i], rows[i]) for i in tri], fill=1)
    return np.asarray(image, dtype=bool)


def downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    n = mask.shape[0] // factor
    return mask.reshape(n, factor, n, factor).mean(axis=(1, 3)) >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def examples() -> dict[str, tuple[PreparedView, MeshResult]]:
    out = {}
    for name in EXAMPLE_NAMES:
        view = prepared_view(name)
        out[name] = (view, build_silhouette_mesh(view, target_faces=20_000, ctx=ctx()))
    return out


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_example_meshes_are_closed_single_outward_and_on_budget(name: str, examples) -> None:
    _, result = examples[name]
    for mesh in (result.dense, result.mesh):
        stats = mesh_stats(mesh)
        assert stats["watertight"] and stats["manifold"], name
        assert stats["components"] == 1
        assert stats["volume"] > 0
        assert np.abs(mesh.vertices).max() <= 1.0
        assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert len(result.dense.faces) > 20_000
    assert 0.95 * 20_000 <= len(result.mesh.faces) <= 20_000
    assert result.model == {
        "name": "silhouette",
        "repo_id": None,
        "revision": None,
        "dtype": "float32",
        "device": "cpu",
        "settings": result.model["settings"],
    }
    assert result.model["settings"]["resolution"] == 160
    assert result.model["settings"]["profile"] == "medial-balls"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_outline_matches_the_silhouette(name: str, examples) -> None:
    view, result = examples[name]
    target = downsample(view.mask, 2)  # 256 x 256
    assert iou(footprint(result.mesh, 256), target) > 0.93
    assert iou(footprint(result.dense, 256), target) > 0.93


def test_different_pictures_give_different_meshes(examples) -> None:
    lantern = examples["lantern.png"][1].mesh
    crate = examples["crate.png"][1].mesh
    extinguisher = examples["extinguisher.png"][1].mesh
    assert iou(footprint(lantern, 128), footprint(extinguisher, 128)) < 0.7
    assert iou(footprint(crate, 128), footprint(lantern, 128)) < 0.7
    volumes = [mesh_stats(m)["volume"] for m in (lantern, crate, extinguisher)]
    assert len({round(v, 2) for v in volumes}) == 3


def test_depth_grows_with_distance_from_the_outline(examples) -> None:
    view, result = examples["extinguisher.png"]
    # Distance to the outline in world units at each front-facing vertex.
    sdf = sample_grid(view.mask, SIZE, 0) * (2.0 / SIZE)  # [ix, iy]
    front = result.dense.vertices[result.dense.vertices[:, 2] > 0]
    ix = np.clip(((front[:, 0] + 1) / 2 * SIZE).astype(int), 0, SIZE - 1)
    iy = np.clip(((front[:, 1] + 1) / 2 * SIZE).astype(int), 0, SIZE - 1)
    inside = np.maximum(sdf[ix, iy], 0.0)
    depth = front[:, 2]
    # The ball centred at a point reaches at least as high as that point's distance to the outline.
    assert np.all(depth >= inside - 0.03)
    bins = np.digitize(inside, [0.02, 0.05, 0.1, 0.15])
    means = [depth[bins == b].mean() for b in range(5)]
    assert means == sorted(means)
    assert means[-1] > 3 * means[0]  # the middle of the body is far thicker than its rim


def test_disc_gives_a_sphere_of_the_disc_radius() -> None:
    x, y = world_xy()
    result = build_silhouette_mesh(mask_view(x**2 + y**2 < 0.6**2), target_faces=5000, ctx=ctx())
    for mesh in (result.dense, result.mesh):
        radius = np.linalg.norm(mesh.vertices.astype(np.float64), axis=1)
        assert radius.mean() == pytest.approx(0.6, abs=0.01)
        assert np.abs(radius - 0.6).max() < 0.03
    assert mesh_stats(result.mesh)["euler"] == 2


def test_ring_stays_a_ring_and_pinholes_are_filled() -> None:
    x, y = world_xy()
    r = np.sqrt(x**2 + y**2)
    ring = build_silhouette_mesh(mask_view((r < 0.7) & (r > 0.35)), target_faces=5000, ctx=ctx()).mesh
    stats = mesh_stats(ring)
    assert stats["watertight"] and stats["components"] == 1
    assert stats["euler"] == 0  # a torus
    assert np.linalg.norm(ring.vertices[:, :2], axis=1).min() > 0.3

    pinhole = (r < 0.7) & ~((np.abs(x - 0.2) < 0.005) & (np.abs(y) < 0.005))
    assert (~pinhole & (r < 0.7)).sum() >= 4  # a few pixels: matting noise, not a real hole
    assert mesh_stats(build_silhouette_mesh(mask_view(pinhole), target_faces=5000, ctx=ctx()).mesh)["euler"] == 2


def test_only_the_largest_piece_is_kept() -> None:
    x, y = world_xy()
    blobs = ((x + 0.3) ** 2 + y**2 < 0.4**2) | ((x - 0.7) ** 2 + (y - 0.6) ** 2 < 0.15**2)
    mesh = build_silhouette_mesh(mask_view(blobs), target_faces=5000, ctx=ctx()).mesh
    assert mesh_stats(mesh)["components"] == 1
    np.testing.assert_allclose(mesh.bounds[:, :2], [[-0.7, -0.4], [0.1, 0.4]], atol=0.02)


def test_parts_thinner_than_the_grid_become_tubes() -> None:
    # Two discs joined by a bar 1/3 of a grid cell wide: the bar must survive and keep the object one piece.
    x, y = world_xy()
    cell = 2.0 / 160
    bar = (np.abs(y) < cell / 6) & (np.abs(x) < 0.5)
    dumbbell = ((x + 0.5) ** 2 + y**2 < 0.3**2) | ((x - 0.5) ** 2 + y**2 < 0.3**2) | bar
    mesh = build_silhouette_mesh(mask_view(dumbbell), target_faces=5000, ctx=ctx()).mesh
    stats = mesh_stats(mesh)
    assert stats["watertight"] and stats["manifold"] and stats["components"] == 1
    on_bar = np.abs(mesh.vertices[:, 0]) < 0.1
    assert on_bar.any()
    assert np.abs(mesh.vertices[on_bar, 1]).max() < 1.5 * cell  # a thin tube, not a slab
    assert np.abs(mesh.vertices[on_bar, 2]).max() < 1.5 * cell


def test_object_filling_the_frame_stays_in_the_unit_box() -> None:
    mesh = build_silhouette_mesh(mask_view(np.ones((256, 256), bool)), target_faces=5000, ctx=ctx()).mesh
    assert np.abs(mesh.vertices).max() <= 1.0
    assert np.abs(mesh.vertices[:, :2]).max() > 0.98
    assert mesh_stats(mesh)["watertight"]


def test_specks_are_too_small() -> None:
    x, y = world_xy()
    with pytest.raises(StageError, match="too few to mesh") as err:
        build_silhouette_mesh(mask_view((np.abs(x) < 0.005) & (np.abs(y) < 0.005)), target_faces=5000, ctx=ctx())
    assert err.value.stage == "mesh"


def test_empty_mask_is_a_stage_error() -> None:
    with pytest.raises(StageError, match="no object pixels") as err:
        build_silhouette_mesh(mask_view(np.zeros((64, 64), bool)), target_faces=5000, ctx=ctx())
    assert err.value.stage == "mesh"


def test_progress_is_reported_in_order_and_cancel_stops_the_build() -> None:
    seen: list[float] = []
    build_silhouette_mesh(
        prepared_view("extinguisher.png"),
        target_faces=3000,
        ctx=ctx(progress=lambda stage, fraction, message: seen.append(fraction)),
    )
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen) and len(seen) >= 5

    deadline = Deadline(60.0)

    def cancel_after_two(stage: str, fraction: float, message: str) -> None:
        if fraction > 0.2:
            deadline.cancel()

    cancelling = StageContext(stage="mesh", deadline=deadline, progress=cancel_after_two)
    with pytest.raises(JobCancelled):
        build_silhouette_mesh(prepared_view("extinguisher.png"), target_faces=3000, ctx=cancelling)
    with pytest.raises(JobTimeout):
        build_silhouette_mesh(prepared_view("extinguisher.png"), target_faces=3000, ctx=ctx(seconds=0.0))
