"""The GLB checks themselves: they fail loudly on bad files and on missing tools, never skip."""
from __future__ import annotations

from pathlib import Path

import pygltflib
import pytest

from pipeline.export import write_glb
from tests import gltf_checks
from tests.gltf_checks import check_blender_import, validate_gltf
from tests.spot_fixture import spot_textured, untextured


@pytest.fixture(scope="module")
def plain_glb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checks") / "plain.glb"
    write_glb(untextured(spot_textured(16)), path)
    return path


def test_validator_finds_errors(plain_glb: Path, tmp_path: Path) -> None:
    gltf = pygltflib.GLTF2().load(str(plain_glb))
    position = gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION]
    position.max = [value + 1.0 for value in position.max]  # bounds that the data does not reach
    broken = tmp_path / "broken.glb"
    gltf.save_binary(str(broken))
    with pytest.raises(AssertionError, match="ACCESSOR_MAX_MISMATCH"):
        validate_gltf(broken)


def test_validator_fails_on_a_file_that_is_not_gltf(tmp_path: Path) -> None:
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a glb at all")
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        validate_gltf(junk)


def test_missing_node_or_package_fails_with_the_install_command(
    plain_glb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gltf_checks, "TOOLS", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="npm ci --prefix tests/tools"):
        validate_gltf(plain_glb)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="node .*not on PATH"):
        validate_gltf(plain_glb)


def test_missing_blender_fails_with_the_setup_command(
    plain_glb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLENDER_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(pytest.fail.Exception, match="pip install bpy"):
        check_blender_import(plain_glb)


def test_blender_import_of_a_broken_file_fails(tmp_path: Path) -> None:
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"glTF" + b"\0" * 40)
    with pytest.raises(pytest.fail.Exception, match="Blender could not import"):
        check_blender_import(junk)
