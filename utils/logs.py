"""Log lines never carry a request's payload.

Pictures arrive inside the job as base64 (or `data:` URLs), hundreds of kilobytes each. The runpod SDK logs
the whole job at DEBUG (`rp_local`: "Retrieved local job: {...}", its default level unless RUNPOD_LOG_LEVEL
says otherwise) and our own messages could quote a field. `install()` redacts every long base64 run, at
every log level, in both places a line can come from:
- Python's `logging` (a record factory, so every logger and handler is covered, whatever configured them);
- the SDK's own `RunPodLogger`, which prints to stdout without `logging` (its singleton's `log` is wrapped).
What is left of a redacted run is its length: `<base64: 53,416 characters>`.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any

# 120+ characters of the base64 alphabet: a picture, never a word, a path (those have . _ - or spaces), a
# sha256 (64 hex digits) or a job id.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{120,}={0,2}")
_installed = False


def redact(text: str) -> str:
    """`text` with each long base64 run replaced by its length."""
    return BASE64_RUN.sub(lambda m: f"<base64: {len(m.group()):,} characters>", text)


def _redacting_factory(previous: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        if len(message) >= 120:
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return record

    return factory


def _redact_runpod_logger() -> None:
    # Only once the SDK is imported: importing it here would run its `logging.basicConfig` (rp_upload) before
    # the worker configures logging. The worker calls install() again after `import runpod`.
    module = sys.modules.get("runpod.serverless.modules.rp_logger")
    if module is None:
        return
    logger = module.RunPodLogger()  # a singleton: every SDK module logs through this one object
    if getattr(logger, "_redacting", False):
        return
    original = logger.log

    def log(message: Any, message_level: str = "INFO", job_id: str | None = None) -> None:
        original(redact(str(message)), message_level, job_id)

    logger.log = log  # type: ignore[method-assign]
    logger._redacting = True  # type: ignore[attr-defined]


def install() -> None:
    """Redact payloads from every log line of this process; call it again once the runpod SDK is imported
    (idempotent)."""
    global _installed
    if not _installed:
        _installed = True
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
    _redact_runpod_logger()
