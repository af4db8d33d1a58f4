"""Fixtures shared by the end-to-end tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a worker with local storage in a temp folder and no weights."""
    return {
        "STORAGE": "local",
        "LOCAL_OUTPUT_DIR": str(tmp_path / "outputs"),
        "MODELS_DIR": str(tmp_path / "models"),
        "MAX_SECONDS": "120",
        "PRELOAD_MODELS": "",
    }


@pytest.fixture
def local_services(local_env: dict[str, str]):
    from handler import build_services
    from utils.settings import Settings

    return build_services(Settings.from_env(local_env))
