"""No log line carries a request's payload, at any log level: neither ours nor the runpod SDK's."""
from __future__ import annotations

import asyncio
import base64
import logging
import os

import pytest

from tests.helpers import example_bytes
from utils import logs

PICTURE = base64.b64encode(example_bytes("extinguisher.png")).decode()


def test_redact_keeps_words_paths_and_digests() -> None:
    text = ("file:///srv/outputs/local_test/meta.json sha256 " + "ab12" * 16 + " job local_test | texture 73% "
            "baking ambient occlusion 16/64")
    assert logs.redact(text) == text
    assert logs.redact(f"x {{'image_base64': '{PICTURE}'}} y") == (
        f"x {{'image_base64': '<base64: {len(PICTURE):,} characters>'}} y")
    assert PICTURE[:200] not in logs.redact(f"data:image/png;base64,{PICTURE}")


def test_python_logging_never_prints_a_picture(caplog: pytest.LogCaptureFixture) -> None:
    logs.install()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("worker").debug("job input: %s", {"image_base64": PICTURE})
    assert "job input: {'image_base64': '<base64:" in caplog.text and PICTURE[:120] not in caplog.text


def test_the_runpod_sdk_debug_job_dump_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """runpod's local test run logs "Retrieved local job: {the whole job}" at DEBUG, its default level."""
    from runpod.serverless.modules import rp_local
    from runpod.serverless.modules.rp_logger import RunPodLogger

    logs.install()
    sdk_log = RunPodLogger()
    level = sdk_log.level
    sdk_log.level = "DEBUG"
    env = os.environ.pop("RUNPOD_ENDPOINT_ID", None)
    try:
        config = {"handler": lambda job: {"ok": True},
                  "rp_args": {"test_input": {"input": {"image_base64": PICTURE}}}}
        with pytest.raises(SystemExit) as exit_info:
            asyncio.run(rp_local.run_local(config))
    finally:
        sdk_log.level = level
        if env is not None:
            os.environ["RUNPOD_ENDPOINT_ID"] = env
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Retrieved local job: {'input': {'image_base64': '<base64:" in out
    assert PICTURE[:120] not in out
