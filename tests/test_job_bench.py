"""bench/job_gpu.py, the end-to-end benchmark of record, runs its whole path on tiny weights on CPU."""
from __future__ import annotations

import json
from pathlib import Path

from bench import job_gpu


def test_job_benchmark_runs_a_fresh_worker_on_tiny_weights(tmp_path: Path) -> None:
    saved = tmp_path / "job.json"
    job_gpu.main(["--tiny", "--device", "cpu", "--pairs", "turbo", "--warm", "1", "--json", str(saved)])
    result = json.loads(saved.read_text())
    turbo = result["pairs"]["turbo"]
    assert result["gpu"] == "none (CPU)" and result["settings"]["tiny"]
    assert 0 < turbo["cold_s"] and 0 < turbo["warm_s"] <= turbo["first_s"] * 5
    assert turbo["faces"] <= 2000 and turbo["peak_rss_gib"] > 0
    for step in ("multiview.fetch", "mesh.sample", "mesh.decode", "mesh.extract", "mesh.cleanup", "texture.unwrap",
                 "texture.delight", "texture.diffusion", "texture.back_projection", "texture.normal_bake",
                 "texture.ao_bake", "texture.dilation", "export.maps_png", "export.glb", "upload.files"):
        assert turbo["steps"][step] >= 0, step
    assert turbo["stages"]["total"] > 0
    assert "| warm_s |" in job_gpu.markdown(result)
