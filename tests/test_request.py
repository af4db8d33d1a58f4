"""The request model: defaults, resolution and field-naming errors (CONTRACT.md section 1)."""
from __future__ import annotations

import pytest

from pipeline.errors import InputError
from pipeline.request import parse_request


def test_defaults_resolve_per_shape_model() -> None:
    req = parse_request({"image_url": "https://example.com/a.png"})
    assert req.shape_model == "hunyuan3d-2"
    assert req.texture_model == "hunyuan3d-paint"
    assert (req.target_faces, req.texture_size, req.seed) == (40_000, 2048, 0)
    assert (req.roughness, req.metallic, req.remove_background) == (0.8, 0.0, "auto")
    silhouette = parse_request({"image_url": "https://example.com/a.png", "shape_model": "silhouette"})
    assert silhouette.texture_model == "projection"


def test_resolved_parameters_leave_out_payloads() -> None:
    req = parse_request(
        {"image_base64": "AAAA", "views": {"left": {"base64": "AAAA"}, "back": {"url": "https://x/y.png"}}}
    )
    resolved = req.resolved()
    assert "image_base64" not in resolved
    assert resolved["views"] == {"left": "base64", "back": "url"}


def test_output_prefix_is_normalised() -> None:
    req = parse_request({"image_url": "https://x/y.png", "output_prefix": "/team//chairs/"})
    assert req.output_prefix == "team/chairs"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"image_url": "https://x/y.png", "colour": "red"}, "colour"),
        ({"image_url": "https://x/y.png", "target_faces": 999}, "target_faces"),
        ({"image_url": "https://x/y.png", "target_faces": 500_001}, "target_faces"),
        ({"image_url": "https://x/y.png", "texture_size": 1000}, "texture_size"),
        ({"image_url": "https://x/y.png", "texture_size": "2048"}, "texture_size"),
        ({"image_url": "https://x/y.png", "roughness": 1.5}, "roughness"),
        ({"image_url": "https://x/y.png", "metallic": -0.1}, "metallic"),
        ({"image_url": "https://x/y.png", "seed": -1}, "seed"),
        ({"image_url": "https://x/y.png", "seed": 1.5}, "seed"),
        ({"image_url": "https://x/y.png", "shape_model": "trellis"}, "shape_model"),
        ({"image_url": "https://x/y.png", "texture_model": "magic"}, "texture_model"),
        ({"image_url": "https://x/y.png", "multiview": "zero999"}, "multiview"),
        ({"image_url": "https://x/y.png", "texture": "yes"}, "texture"),
        ({"image_url": "https://x/y.png", "remove_background": "maybe"}, "remove_background"),
        ({"image_url": "https://x/y.png", "output_prefix": "a/../../etc"}, "output_prefix"),
        ({"image_url": "https://x/y.png", "output_prefix": "a b"}, "output_prefix"),
        ({"image_url": "https://x/y.png", "api_version": "2.0"}, "api_version"),
        ({"image_url": "https://x/y.png", "views": {"top": {"url": "https://x"}}}, "views.top"),
        ({"image_url": "https://x/y.png", "views": {"left": {}}}, "views.left"),
        ({"image_url": "https://x/y.png", "steps": 0}, "steps"),
        ({"image_url": "https://x/y.png", "octree_resolution": 4096}, "octree_resolution"),
        ({"image_url": 5}, "image_url"),
    ],
)
def test_bad_fields_are_named(raw: dict, field: str) -> None:
    with pytest.raises(InputError) as info:
        parse_request(raw)
    assert info.value.field == field
    assert f"{field}:" in str(info.value)


@pytest.mark.parametrize("raw", [{}, {"image_url": "https://x/a.png", "image_base64": "AAAA"}])
def test_exactly_one_image(raw: dict) -> None:
    with pytest.raises(InputError, match="exactly one of 'image_url' or 'image_base64'"):
        parse_request(raw)


@pytest.mark.parametrize("raw", [None, [], "image.png", 3])
def test_non_object_input(raw: object) -> None:
    with pytest.raises(InputError, match="input: must be a JSON object"):
        parse_request(raw)


def test_num_chunks_is_bounded_and_reaches_the_sampler_settings():
    from models.registry import get_spec
    from pipeline.shape_hunyuan import resolve_settings

    spec = get_spec("hunyuan3d-2")
    assert resolve_settings(parse_request({"image_url": "https://x/y.png"}), spec).num_chunks == 65_536
    request = parse_request({"image_url": "https://x/y.png", "num_chunks": 20_000})
    assert resolve_settings(request, spec).num_chunks == 20_000
    with pytest.raises(InputError, match="num_chunks"):
        parse_request({"image_url": "https://x/y.png", "num_chunks": 10})
