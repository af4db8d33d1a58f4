"""The generation flow that runs on a worker thread: submit, poll, download. No bpy here: it talks to the
main thread only through `events` (a queue the timer in runner.py drains)."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import EndpointClient, EndpointError, EndpointUnreachable, network_allowed

POLL_SECONDS = 1.0
POLL_RETRIES = 5  # consecutive unanswered status polls before giving up (a Wi-Fi blip should not lose the job)


@dataclass(frozen=True)
class Event:
    """kind: "progress" (stage, fraction, message), "job" (job_id), "done" (paths), "error" (message),
    "cancelled"."""

    kind: str
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    job_id: str = ""
    paths: dict[str, Path] = field(default_factory=dict)  # "glb", "meta"


class Cancelled(Exception):
    """The artist pressed Cancel."""


def generate(
    client: EndpointClient,
    job_input: dict[str, Any],
    dest_dir: Path,
    events: queue.Queue[Event],
    cancel: threading.Event,
    *,
    online_access: bool,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Run one job end to end; always ends by posting exactly one "done", "error" or "cancelled" event."""
    job_id = ""
    try:
        _require_network(client.base_url, online_access)
        events.put(Event("progress", stage="upload", message="Sending the picture"))
        job_id = client.run(job_input)
        events.put(Event("job", job_id=job_id))
        output = _wait(client, job_id, events, cancel, poll_seconds)
        paths = _download(client, output, dest_dir / job_id, events, online_access)
        events.put(Event("done", job_id=job_id, paths=paths, message="Imported"))
    except Cancelled:
        _cancel_remote(client, job_id)
        events.put(Event("cancelled", job_id=job_id, message="Cancelled"))
    except EndpointError as err:
        events.put(Event("error", job_id=job_id, message=str(err)))
    except Exception as err:  # anything else must still end the job in the UI, or it would spin forever
        events.put(Event("error", job_id=job_id, message=f"Unexpected error: {type(err).__name__}: {err}"))


def _wait(
    client: EndpointClient, job_id: str, events: queue.Queue[Event], cancel: threading.Event, poll_seconds: float
) -> dict[str, Any]:
    """Poll until the job ends; return its output (the contract's result)."""
    misses = 0
    while True:
        if cancel.is_set():
            raise Cancelled
        try:
            status = client.status(job_id)
            misses = 0
        except EndpointUnreachable:
            misses += 1
            if misses >= POLL_RETRIES:
                raise
            if cancel.wait(poll_seconds):
                raise Cancelled from None
            continue
        state = status.get("status")
        output = status.get("output")
        if state == "COMPLETED":
            return _result(output)
        if state == "FAILED":
            raise EndpointError(f"The job failed: {status.get('error') or 'the endpoint gave no reason'}")
        if state == "CANCELLED":
            raise EndpointError("The job was cancelled on the endpoint")
        if state == "TIMED_OUT":
            raise EndpointError("The job ran past the endpoint's execution timeout: "
                                "lower target faces or texture size, or raise the timeout")
        if state == "IN_QUEUE":
            events.put(Event("progress", stage="queue", message="Waiting for a worker"))
        elif state == "IN_PROGRESS":
            if isinstance(output, dict) and "stage" in output:
                events.put(Event("progress", stage=str(output["stage"]), fraction=float(output.get("progress") or 0),
                                 message=str(output.get("message") or "")))
            else:
                events.put(Event("progress", stage="running", message="Running"))
        else:
            raise EndpointError(f"The endpoint reported an unknown job status {state!r}")
        if cancel.wait(poll_seconds):
            raise Cancelled


def _result(output: Any) -> dict[str, Any]:
    if not output:
        raise EndpointError("The job COMPLETED without output: the worker's result did not reach the endpoint "
                            "(see the endpoint's logs)")
    if not isinstance(output, dict):
        raise EndpointError(f"The job's output is not a result object: {str(output)[:200]}")
    if "error" in output:
        raise EndpointError(f"The job failed: {output['error']}")
    missing = [k for k in ("glb_url", "meta_url") if not isinstance(output.get(k), str)]
    if missing:
        raise EndpointError(f"The job's result has no {' or '.join(missing)}: is the endpoint running this worker?")
    return output


def _download(
    client: EndpointClient, output: dict[str, Any], folder: Path, events: queue.Queue[Event], online_access: bool
) -> dict[str, Path]:
    paths = {}
    for name, key, filename in (("meta", "meta_url", "meta.json"), ("glb", "glb_url", "model.glb")):
        url = output[key]
        if url.startswith("file:"):
            raise EndpointError("The result points at files on the server's own disk (file:// URLs): "
                                "run the local server with serve.py, which serves them over HTTP")
        _require_network(url, online_access)
        events.put(Event("progress", stage="download", fraction=1.0, message=f"Downloading {filename}"))
        paths[name] = folder / filename
        client.download(url, paths[name])
    return paths


def _require_network(url: str, online_access: bool) -> None:
    if not network_allowed(url, online_access):
        raise EndpointError("Online access is off in Blender: turn on Preferences > System > Network > "
                            "Allow Online Access to reach " + (url.split("/")[2] if "//" in url else url))


def _cancel_remote(client: EndpointClient, job_id: str) -> None:
    if not job_id:
        return
    try:
        client.cancel(job_id)
    except EndpointError:
        pass  # the local side is cancelled either way; the remote job ends at its own time cap
