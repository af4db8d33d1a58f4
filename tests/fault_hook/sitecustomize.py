"""Test-only fault injection for serve.py's worker processes (tests/test_reliability.py, bench/serve_faults.py).

Nothing in the project imports this. Putting this folder on PYTHONPATH makes Python import it at start-up in
every process of that environment; it then wraps `handler.run_job` when (and only if) a process imports
`handler` (serve.py's worker processes do; the server process does not), so that jobs with chosen seeds
really break inside the job's process:

  FAULT_ABORT_SEEDS=7,8   os.abort() (SIGABRT, as a native crash would) once the upload stage has stored its
                          first file: the bundle is half-written when the process dies
  FAULT_HANG_SEEDS=9      at the texture stage, sleep forever ignoring cancel (a hung native call)
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time


def _seeds(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").replace(",", " ").split()}


class _WrapHandler(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name != "handler":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            real_exec(module)
            _wrap(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _wrap(module) -> None:  # type: ignore[no-untyped-def]
    real_run_job = module.run_job
    abort, hang = _seeds("FAULT_ABORT_SEEDS"), _seeds("FAULT_HANG_SEEDS")

    def run_job(job_id, job_input, *, progress=None, **kwargs):  # type: ignore[no-untyped-def]
        seed = job_input.get("seed") if isinstance(job_input, dict) else None

        def faulty(stage: str, fraction: float, message: str) -> None:
            if progress is not None:
                progress(stage, fraction, message)
            if seed in abort and stage == "upload" and message.startswith("uploaded "):
                os.abort()
            if seed in hang and stage == "texture":
                while True:
                    time.sleep(3600)

        return real_run_job(job_id, job_input, progress=faulty, **kwargs)

    module.run_job = run_job


if _seeds("FAULT_ABORT_SEEDS") or _seeds("FAULT_HANG_SEEDS"):
    sys.meta_path.insert(0, _WrapHandler())
