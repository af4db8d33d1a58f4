"""pipeline.meshops on real meshes (bunny, fandisk, spot) and on shapes with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from pipeline.context import Deadline, StageContext
from pipeline.errors import JobTimeout
from pipeline.meshops import (
    clean_mesh,
    decimate,
    is_watertight,
    mesh_stats,
    normalize_to_unit_box,
    remove_floaters,
    smooth,
    vertex_normals,
)
from pipeline.types import MeshData
from tests.helpers import REPO

DATA = REPO / "tests" / "data"


def load(name: str) -> MeshData:
    tm = trimesh.load(DATA / name, process=False, force="mesh")
    return MeshData(vertices=np.asarray(tm.vertices, np.float32), faces=np.asarray(tm.faces, np.int32))


def sphere(subdivisions: int = 3, radius: float = 1.0, centre: tuple[float, float, float] = (0, 0, 0)) -> MeshData:
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return MeshData(
        vertices=(np.asarray(tm.vertices) + centre).astype(np.float32), faces=np.asarray(tm.faces, np.int32)
    )


def combine(*meshes: MeshData) -> MeshData:
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return MeshData(
        vertices=np.concatenate([m.vertices for m in meshes]),
        faces=np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(np.int32),
    )


def ctx(seconds: float = 60.0) -> StageContext:
    return StageContext(stage="mesh", deadline=Deadline(seconds))


@pytest.mark.parametrize(("name", "watertight"), [("stanford-bunny.obj", False), ("fandisk.obj", True)])
def test_decimate_real_meshes_keeps_watertight_status_and_bbox(name: str, watertight: bool) -> None:
    mesh = load(name)
    before = mesh_stats(mesh)
    assert before["watertight"] is watertight
    out = decimate(mesh, 5000, ctx=ctx())
    after = mesh_stats(out)
    assert 0.95 * 5000 <= after["faces"] <= 5000
    assert after["watertight"] is watertight
    assert after["winding_consistent"]
    assert out.vertices.dtype == np.float32 and out.faces.dtype == np.int32
    diagonal = np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])
    np.testing.assert_allclose(out.bounds, mesh.bounds, atol=0.01 * diagonal)
    # Every vertex is used: decimation leaves no orphans behind.
    assert len(np.unique(out.faces)) == len(out.vertices)


def test_decimate_in_rounds_reaches_the_target_and_keeps_the_volume() -> None:
    mesh = sphere(subdivisions=5)  # 20,480 faces
    out = decimate(mesh, 2000, ctx=ctx(), max_faces_per_round=5000)
    stats = mesh_stats(out)
    assert 0.95 * 2000 <= stats["faces"] <= 2000
    assert stats["watertight"]
    assert stats["volume"] == pytest.approx(mesh_stats(mesh)["volume"], rel=0.02)


@pytest.mark.parametrize(("subdivisions", "flatness", "target"), [(4, 0.05, 200), (5, 0.01, 500)])
def test_decimate_keeps_thin_closed_shapes_closed_and_on_target(
    subdivisions: int, flatness: float, target: int
) -> None:
    # fast-simplification alone pinches the first disc (non-manifold) and stops at 574 faces on the second;
    # decimate must still return a closed manifold within the budget.
    disc = sphere(subdivisions=subdivisions)
    disc = MeshData(vertices=(disc.vertices * [1, 1, flatness]).astype(np.float32), faces=disc.faces)
    stats = mesh_stats(decimate(disc, target))
    assert 0.95 * target <= stats["faces"] <= target
    assert stats["watertight"] and stats["manifold"] and stats["euler"] == 2


def test_decimate_is_a_no_op_below_the_target() -> None:
    mesh = sphere(subdivisions=2)  # 320 faces
    out = decimate(mesh, 1000)
    np.testing.assert_array_equal(out.faces, mesh.faces)
    np.testing.assert_array_equal(out.vertices, mesh.vertices)


def test_decimate_stops_at_the_deadline() -> None:
    with pytest.raises(JobTimeout):
        decimate(sphere(subdivisions=4), 500, ctx=ctx(seconds=0.0))


def test_clean_mesh_removes_floater_degenerate_and_duplicate_faces() -> None:
    body = sphere(subdivisions=4)  # 5,120 faces
    floater = sphere(subdivisions=1, radius=0.05, centre=(3, 0, 0))  # 80 faces, 1.6 % of the body
    mesh = combine(body, floater)
    n = len(body.vertices)
    junk = np.array(
        [
            [0, 0, 1],  # repeated corner
            list(body.faces[7]),  # duplicate face
            list(body.faces[9][[1, 2, 0]]),  # duplicate face, rotated corners
        ],
        dtype=np.int32,
    )
    orphan = np.array([[9.0, 9.0, 9.0]], np.float32)
    dirty = MeshData(
        vertices=np.concatenate([mesh.vertices, orphan]), faces=np.concatenate([mesh.faces, junk]).astype(np.int32)
    )
    assert not mesh_stats(dirty)["watertight"]

    out = clean_mesh(dirty)
    stats = mesh_stats(out)
    assert stats["faces"] == len(body.faces)
    assert stats["vertices"] == n
    assert stats["components"] == 1
    assert stats["watertight"]
    np.testing.assert_allclose(out.bounds, body.bounds, atol=1e-6)


def test_remove_floaters_drops_only_the_small_components() -> None:
    body, twin = sphere(subdivisions=4), sphere(subdivisions=4, centre=(3, 0, 0))
    floater = sphere(subdivisions=1, radius=0.05, centre=(-3, 0, 0))  # 80 faces, 1.6 % of the body
    out = remove_floaters(combine(body, floater, twin))
    kept = combine(body, twin)
    assert np.array_equal(out.faces, kept.faces) and np.array_equal(out.vertices, kept.vertices)
    assert np.array_equal(remove_floaters(kept).faces, kept.faces)  # nothing to drop: unchanged


def test_clean_mesh_stops_at_the_deadline() -> None:
    with pytest.raises(JobTimeout):
        clean_mesh(sphere(), ctx=ctx(seconds=0.0))


def test_clean_mesh_keeps_components_of_similar_size() -> None:
    twins = combine(sphere(), sphere(centre=(3, 0, 0)))
    assert mesh_stats(clean_mesh(twins))["components"] == 2


def test_clean_mesh_flips_an_inverted_mesh() -> None:
    mesh = sphere()
    inverted = MeshData(vertices=mesh.vertices, faces=mesh.faces[:, ::-1].copy())
    assert trimesh.Trimesh(inverted.vertices, inverted.faces, process=False).volume < 0
    out = clean_mesh(inverted)
    stats = mesh_stats(out)
    assert stats["volume"] == pytest.approx(mesh_stats(mesh)["volume"], rel=1e-5)
    assert stats["volume"] > 0


def test_clean_mesh_makes_mixed_winding_consistent_and_outward() -> None:
    mesh = sphere()
    rng = np.random.default_rng(0)
    flipped = rng.random(len(mesh.faces)) < 0.3
    faces = mesh.faces.copy()
    faces[flipped] = faces[flipped][:, ::-1]
    assert not mesh_stats(MeshData(mesh.vertices, faces))["winding_consistent"]
    stats = mesh_stats(clean_mesh(MeshData(mesh.vertices, faces)))
    assert stats["watertight"]
    assert stats["volume"] == pytest.approx(mesh_stats(mesh)["volume"], rel=1e-5)


def test_clean_mesh_welds_a_mesh_split_at_uv_seams() -> None:
    # spot as stored: 13 pieces split at texture seams; welded it is one closed surface.
    mesh = load("spot/spot_triangulated.obj")
    assert mesh_stats(mesh)["components"] == 13
    stats = mesh_stats(clean_mesh(mesh))
    assert stats["components"] == 1
    assert stats["watertight"]
    assert stats["euler"] == 2
    assert stats["faces"] == len(mesh.faces)


def test_clean_mesh_welds_a_triangle_soup() -> None:
    mesh = sphere(subdivisions=2)
    soup = MeshData(
        vertices=mesh.vertices[mesh.faces].reshape(-1, 3), faces=np.arange(3 * len(mesh.faces)).reshape(-1, 3)
    )
    out = clean_mesh(soup)
    assert len(out.vertices) == len(mesh.vertices)
    assert mesh_stats(out)["watertight"]


def test_smooth_keeps_volume_and_removes_noise() -> None:
    mesh = sphere(subdivisions=4)
    rng = np.random.default_rng(1)
    noisy = MeshData(
        vertices=(mesh.vertices * (1 + 0.02 * rng.standard_normal((len(mesh.vertices), 1)))).astype(np.float32),
        faces=mesh.faces,
    )
    out = smooth(noisy, iterations=10)
    radius_before = np.linalg.norm(noisy.vertices, axis=1)
    radius_after = np.linalg.norm(out.vertices, axis=1)
    assert radius_after.std() < 0.5 * radius_before.std()
    assert mesh_stats(out)["volume"] == pytest.approx(mesh_stats(noisy)["volume"], rel=0.02)
    np.testing.assert_array_equal(out.faces, noisy.faces)


def test_normalize_to_unit_box() -> None:
    mesh = load("fandisk.obj")  # bbox far from the origin
    out = normalize_to_unit_box(mesh, extent=0.9)
    assert np.abs(out.vertices).max() == pytest.approx(0.9, rel=1e-6)
    np.testing.assert_allclose(out.bounds.sum(0), 0.0, atol=1e-5)  # bbox centred
    size_in, size_out = np.ptp(mesh.vertices, 0), np.ptp(out.vertices, 0)
    np.testing.assert_allclose(size_out / size_in, size_out[0] / size_in[0], rtol=1e-4)  # uniform scale


def test_vertex_normals_are_area_weighted_and_unit() -> None:
    # A small triangle in the XY plane and a 4x larger one in the XZ plane share vertex 0.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, -2], [2, 0, 0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 4, 3]], np.int32)
    normals = vertex_normals(vertices, faces)
    expected = np.array([0.0, 4.0, 1.0]) / np.sqrt(17.0)  # area 0.5 * +Z plus area 2 * +Y
    np.testing.assert_allclose(normals[0], expected, atol=1e-6)
    np.testing.assert_allclose(normals[2], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(normals[3], [0, 1, 0], atol=1e-6)

    mesh = sphere()
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    sphere_normals = vertex_normals(mesh.vertices, mesh.faces)
    assert sphere_normals.shape == (len(mesh.vertices), 3)
    np.testing.assert_allclose(np.linalg.norm(sphere_normals, axis=1), 1.0, atol=1e-6)
    assert np.einsum("ij,ij->i", sphere_normals, radial).min() > 0.99


def test_mesh_stats_of_a_box() -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    stats = mesh_stats(MeshData(np.asarray(box.vertices, np.float32), np.asarray(box.faces, np.int32)))
    assert stats["vertices"] == 8 and stats["faces"] == 12
    assert stats["watertight"] and stats["manifold"] and stats["components"] == 1 and stats["euler"] == 2
    assert stats["volume"] == pytest.approx(1.0)
    np.testing.assert_allclose(stats["bbox"], [[-1, -0.5, -0.25], [1, 0.5, 0.25]])


@pytest.mark.parametrize("name", ["stanford-bunny.obj", "fandisk.obj", "spot/spot_triangulated.obj"])
def test_mesh_stats_agree_with_trimesh(name: str) -> None:
    mesh = load(name)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    stats = mesh_stats(mesh)
    assert stats["watertight"] == (tm.is_watertight and tm.is_winding_consistent)
    assert stats["winding_consistent"] == tm.is_winding_consistent
    assert stats["euler"] == tm.euler_number
    assert stats["components"] == len(tm.split(only_watertight=False))
    assert stats["area"] == pytest.approx(tm.area, rel=1e-5)
    if stats["watertight"]:
        assert stats["volume"] == pytest.approx(tm.volume, rel=1e-5)


@pytest.mark.parametrize("name", ["stanford-bunny.obj", "fandisk.obj", "spot/spot_triangulated.obj"])
def test_is_watertight_agrees_with_mesh_stats(name: str) -> None:
    mesh = load(name)
    opened = MeshData(vertices=mesh.vertices, faces=mesh.faces[1:])
    flipped = MeshData(vertices=mesh.vertices, faces=np.concatenate([mesh.faces[:1, ::-1], mesh.faces[1:]]))
    for case in (mesh, opened, flipped):
        assert is_watertight(case) == mesh_stats(case)["watertight"]
    assert not is_watertight(opened) and not is_watertight(flipped)


def test_mesh_stats_sees_a_pinched_vertex() -> None:
    # Two spheres glued at one vertex: every edge still has two faces, but the vertex has two fans.
    a, b = sphere(subdivisions=1), sphere(subdivisions=1, centre=(2, 0, 0))
    glued = combine(a, b)
    touching = len(a.vertices) + int(np.argmin(b.vertices[:, 0]))
    faces = glued.faces.copy()
    faces[faces == touching] = int(np.argmax(a.vertices[:, 0]))
    stats = mesh_stats(MeshData(glued.vertices, faces))
    assert stats["watertight"]
    assert not stats["manifold"]
    assert stats["components"] == 1


def test_composed_similarities_move_like_the_two_in_turn() -> None:
    from pipeline.meshops import apply_similarity, compose_similarities, unit_box_similarity

    mesh = load("fandisk.obj")
    first = unit_box_similarity(mesh.vertices, extent=0.9)
    then = (1.7, np.array([0.1, -0.2, 0.3]))
    np.testing.assert_allclose(apply_similarity(mesh, compose_similarities(first, then)).vertices,
                               apply_similarity(apply_similarity(mesh, first), then).vertices, atol=1e-6)
