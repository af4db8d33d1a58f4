"""The server's side of the bundle rule "meta.json present means complete; a failed job leaves only error.json".

The pipeline keeps that rule itself when it can. When it cannot (its process was killed mid-upload, the
storage dropped the connection while it cleaned up, the server restarted under it), the server settles the
job's folder afterwards: everything but error.json is removed (unfinished S3 multipart uploads and local
".part" files included) and error.json is written if it is missing.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.errors import JobError
from pipeline.request import API_VERSION
from utils.storage import LocalStorage, S3Storage, Storage

log = logging.getLogger("serve.bundles")

META_KEY = "meta.json"
ERROR_KEY = "error.json"
SCHEMA_VERSION = "1.0"  # schemas/error.schema.json (pipeline.meta.SCHEMA_VERSION; that module imports torch)


def error_body(job_id: str, stage: str, message: str, seconds: float) -> dict[str, Any]:
    """An error.json body (schemas/error.schema.json), as pipeline.meta.build_error writes it."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"schema_version": SCHEMA_VERSION, "api_version": API_VERSION, "job_id": job_id, "created_at": now,
            "status": "failed", "stage": stage, "error": message, "timings": {"total": round(max(seconds, 0.0), 3)}}


def list_keys(storage: Storage, prefix: str) -> list[str]:
    """Every key under `prefix/` (relative to the storage root), hidden partial files included."""
    if isinstance(storage, LocalStorage):
        folder = storage.root / prefix
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(storage.root).as_posix() for p in folder.rglob("*") if p.is_file())
    if isinstance(storage, S3Storage):
        full = storage.object_key(prefix) + "/"
        strip = len(storage.object_key(prefix)) - len(prefix)
        keys: list[str] = []
        for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=full):
            keys += [item["Key"][strip:] for item in page.get("Contents", [])]
        return sorted(keys)
    raise TypeError(f"cannot list {type(storage).__name__}")


def _abort_multipart(storage: Storage, prefix: str) -> None:
    if not isinstance(storage, S3Storage):
        return
    full = storage.object_key(prefix) + "/"
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=full).get("Uploads", [])
    for upload in uploads:
        storage.client.abort_multipart_upload(Bucket=storage.bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _remove(storage: Storage, key: str) -> None:
    if isinstance(storage, LocalStorage):
        (storage.root / key).unlink(missing_ok=True)  # also ".<name>.*.part", which delete() would refuse
    else:
        storage.client.delete_object(Bucket=storage.bucket, Key=storage.object_key(key))


def settle_failed(storage: Storage, prefix: str, *, job_id: str, stage: str, message: str,
                  seconds: float) -> list[str]:
    """Leave only error.json under `prefix`; return the keys that had to be removed. Raises on storage errors
    (the caller logs them: the job's state stands either way)."""
    _abort_multipart(storage, prefix)
    keys = list_keys(storage, prefix)
    removed = [k for k in keys if k != f"{prefix}/{ERROR_KEY}"]
    for key in removed:
        _remove(storage, key)
    if f"{prefix}/{ERROR_KEY}" not in keys:
        body = (json.dumps(error_body(job_id, stage, message, seconds), indent=2) + "\n").encode()
        storage.put_bytes(f"{prefix}/{ERROR_KEY}", body, "application/json")
    if removed:
        log.warning("job %s: removed %d orphaned object(s) of its unfinished bundle: %s", job_id, len(removed),
                    ", ".join(removed[:8]))
    return removed


def settle_safely(storage: Storage, prefix: str, **kwargs: Any) -> str | None:
    """settle_failed, but a storage failure is returned as a message instead of raised."""
    try:
        settle_failed(storage, prefix, **kwargs)
    except JobError as exc:
        return exc.describe()
    except Exception as exc:  # noqa: BLE001 - boto errors, OSError: logged, never fatal to the server
        return f"{type(exc).__name__}: {exc}"
    return None


def write_probe(storage: Storage, prefix: str) -> None:
    """Start-up check: a write and a delete under the storage prefix really work (raises JobError if not)."""
    key = f"{prefix}/probe.txt"
    storage.put_bytes(key, b"serve.py start-up check\n", "text/plain")
    _remove(storage, key)
    if list_keys(storage, prefix):
        raise RuntimeError(f"the start-up probe {key} could not be deleted")
    if isinstance(storage, LocalStorage):
        for folder in (storage.root / prefix, (storage.root / prefix).parent):
            try:
                folder.rmdir()
            except OSError:
                pass


def local_folder(storage: Storage) -> Path | None:
    return storage.root if isinstance(storage, LocalStorage) else None
