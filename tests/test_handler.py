"""The handler as users drive it: bad inputs end as {"error": ...} naming the field; good ones make bundles."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler import run_job
from tests.helpers import example_b64, example_bytes, fast_request, file_url_path, png_b64, read_local_json


def _bomb_png(width: int = 50_000, height: int = 50_000) -> str:
    """A tiny PNG whose header claims a huge picture (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return base64.b64encode(bytes(data)).decode()


def _truncated_png() -> str:
    raw = example_bytes("extinguisher.png")
    return base64.b64encode(raw[: len(raw) // 2]).decode()


def _mask(shape: tuple[int, int], fill: int) -> str:
    return png_b64(np.full(shape, fill, dtype=np.uint8))


def _with_url(url: str) -> dict:
    request = fast_request()
    del request["image_base64"]
    return {**request, "image_url": url}


def _without_image() -> dict:
    request = fast_request()
    del request["image_base64"]
    return request


BAD_INPUTS = [
    ("not an object", ["image.png"], "input"),
    ("no image", _without_image(), "image_url"),
    ("two images", fast_request(image_url="https://example.com/a.png"), "image_base64"),
    ("bad base64", fast_request(image_base64="@@@not base64@@@"), "image_base64"),
    ("not an image", fast_request(image_base64=base64.b64encode(b"hello, this is text" * 10).decode()), "image_base64"),
    ("truncated png", fast_request(image_base64=_truncated_png()), "image_base64"),
    ("decompression bomb", fast_request(image_base64=_bomb_png()), "image_base64"),
    ("file url", _with_url("file:///etc/passwd"), "image_url"),
    ("loopback url", _with_url("http://127.0.0.1:9/a.png"), "image_url"),
    ("metadata url", _with_url("http://169.254.169.254/latest/meta-data/"), "image_url"),
    ("private url", _with_url("http://10.1.2.3/a.png"), "image_url"),
    ("ipv6 loopback", _with_url("http://[::1]/a.png"), "image_url"),
    ("gopher url", _with_url("gopher://example.com/a"), "image_url"),
    ("unknown field", fast_request(colour="red"), "colour"),
    ("too few faces", fast_request(target_faces=10), "target_faces"),
    ("texture size", fast_request(texture_size=999), "texture_size"),
    ("roughness range", fast_request(roughness=3), "roughness"),
    ("negative seed", fast_request(seed=-4), "seed"),
    ("unknown model", fast_request(shape_model="magic"), "shape_model"),
    ("mask size", fast_request(mask_base64=_mask((10, 10), 255)), "mask_base64"),
    ("empty mask", fast_request(mask_base64=_mask((256, 256), 0)), "mask_base64"),
    ("prefix traversal", fast_request(output_prefix="../../etc"), "output_prefix"),
    ("api version", fast_request(api_version="9.0"), "api_version"),
    ("bad view", fast_request(views={"left": {"base64": "%%%"}}), "views.left"),
]


@pytest.mark.parametrize(("label", "job_input", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_ends_as_named_error(local_services, label: str, job_input: object, field: str) -> None:
    result = run_job("bad-input", job_input, services=local_services)
    assert set(result) == {"error"}, result
    assert isinstance(result["error"], str)
    assert field in result["error"], result["error"]
    outputs = Path(local_services.settings.local_output_dir)
    assert not list(outputs.rglob("meta.json")), "a failed job must not leave meta.json"


def test_bad_job_id_is_refused(local_services) -> None:
    result = run_job("../escape", fast_request(), services=local_services)
    assert result == {"error": "input: id: the job id must be 1-128 characters of A-Z a-z 0-9 . _ -"}


def test_fast_job_makes_a_complete_bundle(local_services) -> None:
    stages: list[str] = []
    result = run_job(
        "job-1", fast_request(output_prefix="team/a"), services=local_services,
        progress=lambda stage, fraction, message: stages.append(stage),
    )
    assert "error" not in result, result
    assert set(result) == {"api_version", "job_id", "meta_url", "glb_url", "seconds"}
    assert result["job_id"] == "job-1"
    meta_path = file_url_path(result["meta_url"])
    assert meta_path.parent == Path(local_services.settings.local_output_dir).resolve() / "team/a/job-1"
    meta = read_local_json(result["meta_url"])
    from pipeline.meta import validate_meta

    validate_meta(meta)
    assert meta["job_id"] == "job-1"
    for stage in ("multiview", "mesh", "texture", "export", "upload"):
        assert stage in stages
    assert file_url_path(result["glb_url"]).stat().st_size > 1000


def test_time_cap_fails_with_error_json(local_env: dict[str, str]) -> None:
    from handler import build_services
    from utils.settings import Settings

    services = build_services(Settings.from_env({**local_env, "MAX_SECONDS": "1"}))
    # A large job that cannot finish in one second on any machine.
    job_input = fast_request(image_base64=example_b64("lantern.png"), target_faces=200_000, texture_size=4096)
    import time

    start = time.monotonic()
    result = run_job("slow-job", job_input, services=services)
    elapsed = time.monotonic() - start
    assert set(result) == {"error"}
    assert "time cap" in result["error"]
    assert elapsed < 6, f"the job stopped {elapsed:.1f} s after starting, cap was 1 s"
    job_dir = Path(local_env["LOCAL_OUTPUT_DIR"]) / "slow-job"
    error = json.loads((job_dir / "error.json").read_text())
    assert error["status"] == "failed" and "time cap" in error["error"]
    assert not (job_dir / "meta.json").exists()


def test_cancel_stops_a_running_job(local_services) -> None:
    cancel = threading.Event()

    def progress(stage: str, fraction: float, message: str) -> None:
        if stage == "mesh":
            cancel.set()

    result = run_job("cancelled", fast_request(), services=local_services, progress=progress, cancel=cancel)
    assert set(result) == {"error"} and "cancelled" in result["error"]


def test_test_input_file_hands_the_sdk_a_big_request(tmp_path: Path) -> None:
    """`--test_input_file job.json` becomes the SDK's `--test_input <text>`: sys.argv is a Python list, so a
    request far over Linux's 128 KiB argument cap goes through."""
    import runpod.serverless as sdk

    from handler import expand_test_input_file

    job = {"input": {"image_base64": "A" * 400_000, "shape_model": "silhouette"}}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    for argv in (["--test_input_file", str(path)], [f"--test_input_file={path}"]):
        expanded = expand_test_input_file(["--rp_log_level", "INFO", *argv])
        args, unknown = sdk.parser.parse_known_args(expanded)  # exactly how runpod.serverless.start reads argv
        assert json.loads(args.test_input) == job and args.rp_log_level == "INFO" and unknown == []
    assert expand_test_input_file(["--test_input", "{}"]) == ["--test_input", "{}"]


@pytest.mark.parametrize(("content", "reason"), [
    (None, "No such file"), ("not json", "not JSON"), ('{"image_base64": "AAAA"}', 'expected a job {"input"'),
])
def test_test_input_file_problems_are_named(tmp_path: Path, content: str | None, reason: str) -> None:
    from handler import expand_test_input_file

    path = tmp_path / "job.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=reason.replace("{", r"\{")):
        expand_test_input_file(["--test_input_file", str(path)])
