"""utils/storage.py against a real folder and a real HTTP S3 endpoint (moto server on loopback)."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from pipeline.errors import InputError, StorageError
from tests.s3_fixtures import S3Server, s3_server  # noqa: F401  (s3_server is a fixture)
from utils.settings import Settings
from utils.storage import (
    LocalStorage,
    S3Storage,
    content_type_for,
    job_prefix,
    make_storage,
)

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.txt",
    "job/../../outside.txt",
    "job/./model.glb",
    "..",
    ".",
    "job\\model.glb",
    "job//model.glb",
    "job/",
    "job/model glb",
    "job/mod\u00e9l.glb",
    "job/model.glb\x00",
    "job/model.glb\n",
]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- keys, prefixes, content types


def test_job_prefix_joins_and_validates() -> None:
    assert job_prefix(None, "abc-123") == "abc-123"
    assert job_prefix("team/a", "sync-1.e1_x") == "team/a/sync-1.e1_x"
    assert job_prefix("/team/a/", "j") == "team/a/j"


@pytest.mark.parametrize("job_id", ["", ".", "..", "a/b", "a\\b", "a b", "x" * 129, "../../etc", "job\n"])
def test_job_prefix_rejects_bad_job_id(job_id: str) -> None:
    with pytest.raises(InputError) as err:
        job_prefix("ok", job_id)
    assert err.value.field == "id"


@pytest.mark.parametrize("prefix", ["a/../b", "..", "a/./b", "a\\b", "a//b", "a b", "caf\u00e9", "", "a\n"])
def test_job_prefix_rejects_bad_output_prefix(prefix: str) -> None:
    with pytest.raises(InputError) as err:
        job_prefix(prefix, "job")
    assert err.value.field == "output_prefix"


def test_content_types() -> None:
    assert content_type_for("j/model.glb") == "model/gltf-binary"
    assert content_type_for("j/textures/albedo.PNG") == "image/png"
    assert content_type_for("j/meta.json") == "application/json"
    assert content_type_for("j/views/front.jpg") == "image/jpeg"
    assert content_type_for("j/views/front.webp") == "image/webp"
    assert content_type_for("j/blob") == "application/octet-stream"


# ---------------------------------------------------------------- local folder


def test_make_storage_defaults_to_local(tmp_path: Path) -> None:
    settings = Settings.from_env({"LOCAL_OUTPUT_DIR": str(tmp_path / "out")})
    storage = make_storage(settings)
    assert storage.kind == "local"
    assert not (tmp_path / "out").exists()  # construction touches nothing
    storage.check()
    assert (tmp_path / "out").is_dir()


def test_local_put_and_fetch_by_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    src = tmp_path / "model.glb"
    src.write_bytes(b"glTF" + os.urandom(1000))

    url = storage.put_file("p/job1/model.glb", src, "model/gltf-binary")
    assert url == storage.url("p/job1/model.glb") == (tmp_path / "out/p/job1/model.glb").resolve().as_uri()
    assert url.startswith("file://")
    with urllib.request.urlopen(url) as response:
        assert response.read() == src.read_bytes()

    meta_url = storage.put_bytes("p/job1/meta.json", b'{"ok": true}', "application/json")
    with urllib.request.urlopen(meta_url) as response:
        assert response.read() == b'{"ok": true}'

    storage.put_bytes("p/job1/meta.json", b"{}", "application/json")  # overwrite
    assert (tmp_path / "out/p/job1/meta.json").read_bytes() == b"{}"
    assert _files_under(tmp_path / "out") == ["p/job1/meta.json", "p/job1/model.glb"]

    storage.delete("p/job1/meta.json")
    storage.delete("p/job1/meta.json")  # missing: no error
    assert _files_under(tmp_path / "out") == ["p/job1/model.glb"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_local_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root" / "out"
    storage = LocalStorage(root)
    src = tmp_path / "x.bin"
    src.write_bytes(b"x")
    for call in (
        lambda: storage.put_bytes(key, b"x", "text/plain"),
        lambda: storage.put_file(key, src, "text/plain"),
        lambda: storage.url(key),
        lambda: storage.delete(key),
    ):
        with pytest.raises(StorageError, match="invalid storage key"):
            call()
    assert _files_under(tmp_path / "root") == []


def test_local_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "out"
    outside = tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    storage = LocalStorage(root)
    with pytest.raises(StorageError, match="outside the output folder"):
        storage.put_bytes("link/model.glb", b"x", "model/gltf-binary")
    assert list(outside.iterdir()) == []


def test_local_missing_source_keeps_old_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "out")
    storage.put_bytes("j/model.glb", b"old", "model/gltf-binary")
    with pytest.raises(StorageError, match="could not read"):
        storage.put_file("j/model.glb", tmp_path / "missing.glb", "model/gltf-binary")
    assert (tmp_path / "out/j/model.glb").read_bytes() == b"old"
    # A key whose folder is taken by a file fails cleanly, leaving no temp file behind.
    with pytest.raises(StorageError, match="could not write"):
        storage.put_bytes("j/model.glb/inner.png", b"x", "image/png")
    assert _files_under(tmp_path / "out") == ["j/model.glb"]


def test_local_writes_are_atomic(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten only ever sees a whole version."""
    storage = LocalStorage(tmp_path / "out")
    versions = [bytes([i]) * (2 * 1024 * 1024) for i in range(1, 4)]
    digests = {hashlib.sha256(v).hexdigest() for v in versions}
    storage.put_bytes("j/model.glb", versions[0], "model/gltf-binary")
    target = tmp_path / "out/j/model.glb"
    seen: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(hashlib.sha256(target.read_bytes()).hexdigest())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            storage.put_bytes("j/model.glb", versions[i % 3], "model/gltf-binary")
    finally:
        done.set()
        thread.join()
    assert seen and set(seen) <= digests
    assert _files_under(tmp_path / "out") == ["j/model.glb"]  # no temp files left


# ---------------------------------------------------------------- S3


def test_s3_objects_land_under_prefix_with_content_type(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    storage = make_storage(s3_server.settings(s3_prefix="bundles/v1"))
    assert storage.kind == "s3"
    storage.check()
    src = tmp_path / "albedo.png"
    src.write_bytes(os.urandom(5000))

    png_url = storage.put_file("p/job/textures/albedo.png", src, "image/png")
    storage.put_bytes("p/job/meta.json", b'{"a": 1}', "application/json")

    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_server.bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["bundles/v1/p/job/meta.json", "bundles/v1/p/job/textures/albedo.png"]
    head = client.head_object(Bucket=s3_server.bucket, Key="bundles/v1/p/job/textures/albedo.png")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == 5000
    head = client.head_object(Bucket=s3_server.bucket, Key="bundles/v1/p/job/meta.json")
    assert head["ContentType"] == "application/json"

    # The presigned URL is a plain HTTP GET that returns the exact bytes.
    assert "X-Amz-Expires=604800" in png_url and "X-Amz-Signature=" in png_url
    response = requests.get(png_url, timeout=10)
    assert response.status_code == 200
    assert response.content == src.read_bytes()
    assert response.headers["Content-Type"] == "image/png"

    storage.delete("p/job/meta.json")
    storage.delete("p/job/never-written.json")  # missing: no error
    listed = client.list_objects_v2(Bucket=s3_server.bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["bundles/v1/p/job/textures/albedo.png"]


def test_s3_large_file_goes_multipart_and_round_trips(s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    storage = make_storage(s3_server.settings(presign_seconds=3600))
    big = tmp_path / "model.glb"
    data = os.urandom(9 * 1024 * 1024 + 123)
    big.write_bytes(data)

    url = storage.put_file("job/model.glb", big, "model/gltf-binary")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="job/model.glb")
    assert head["ETag"].strip('"').endswith("-2")  # two parts of 8 MiB and the rest
    assert head["ContentType"] == "model/gltf-binary"
    assert "X-Amz-Expires=3600" in url
    response = requests.get(url, timeout=30)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()

    # Small files are one plain PUT.
    storage.put_bytes("job/meta.json", b"{}", "application/json")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="job/meta.json")
    assert "-" not in head["ETag"]


@pytest.mark.parametrize("key", ["../escape.glb", "/abs.glb", "a\\b.glb", "a/./b", ""])
def test_s3_rejects_bad_keys(s3_server: S3Server, key: str) -> None:  # noqa: F811
    storage = make_storage(s3_server.settings(s3_prefix="root"))
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.put_bytes(key, b"x", "text/plain")
    with pytest.raises(StorageError, match="invalid storage key"):
        storage.url(key)
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)


def test_s3_failures_are_readable_and_never_leak_secrets(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.DEBUG, logger="utils.storage")
    secret = s3_server.secret_access_key
    errors: list[StorageError] = []

    missing = S3Storage(s3_server.settings(s3_bucket="no-such-bucket-here"), max_attempts=1)
    for call in (missing.check, lambda: missing.put_bytes("j/meta.json", b"{}", "application/json")):
        with pytest.raises(StorageError) as err:
            call()
        assert "no-such-bucket-here" in str(err.value) and "does not exist" in str(err.value)
        errors.append(err.value)
    src = tmp_path / "a.png"
    src.write_bytes(b"x" * 100)
    with pytest.raises(StorageError, match="no-such-bucket-here' does not exist") as err:
        missing.put_file("j/a.png", src, "image/png")
    errors.append(err.value)

    # The server goes away between two uploads of a job: the next one fails within seconds.
    storage = S3Storage(s3_server.settings(), connect_timeout=1, read_timeout=1, max_attempts=2)
    storage.put_bytes("j/first.json", b"{}", "application/json")
    s3_server.stop()
    started = time.monotonic()
    with pytest.raises(StorageError, match="could not reach the storage endpoint") as err:
        storage.put_file("j/a.png", src, "image/png")
    assert time.monotonic() - started < 10
    assert s3_server.bucket in str(err.value) and "j/a.png" in str(err.value)
    errors.append(err.value)
    storage.delete("j/first.json")  # best effort: logs, does not raise
    with pytest.raises(StorageError, match="could not reach the storage endpoint") as err:
        storage.check()
    errors.append(err.value)

    # An endpoint that accepts connections and never answers: the read timeout ends the upload.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # never accepted: the kernel completes the handshake, nobody replies
        endpoint = "http://127.0.0.1:%d" % hung.getsockname()[1]
        storage = S3Storage(s3_server.settings(s3_endpoint_url=endpoint), read_timeout=1, max_attempts=1)
        started = time.monotonic()
        with pytest.raises(StorageError, match="could not reach the storage endpoint") as err:
            storage.put_file("j/a.png", src, "image/png")
        assert time.monotonic() - started < 10
        errors.append(err.value)

    texts = [t for e in errors for t in (str(e), repr(e), e.describe())] + [r.getMessage() for r in caplog.records]
    assert any("could not delete" in t for t in texts)
    assert all(e.stage == "upload" for e in errors)
    assert not [t for t in texts if secret in t]


def test_s3_without_credentials_says_so(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    settings = s3_server.settings(aws_access_key_id=None, aws_secret_access_key=None)
    storage = S3Storage(settings, max_attempts=1)
    with pytest.raises(StorageError, match="no usable credentials"):
        storage.put_bytes("j/meta.json", b"{}", "application/json")


def test_s3_presign_longer_than_seven_days_is_refused(s3_server: S3Server) -> None:  # noqa: F811
    with pytest.raises(StorageError, match="PRESIGN_SECONDS"):
        make_storage(s3_server.settings(presign_seconds=8 * 24 * 3600))


def test_runpod_bucket_variables_make_working_s3_storage(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # Only RunPod's names are set: the credentials must come from Settings, not boto3's chain.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    settings = Settings.from_env(
        {
            "BUCKET_NAME": s3_server.bucket,
            "BUCKET_ENDPOINT_URL": s3_server.endpoint_url,
            "BUCKET_ACCESS_KEY_ID": s3_server.access_key_id,
            "BUCKET_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        }
    )
    storage = make_storage(settings)
    assert storage.kind == "s3"
    storage.check()
    url = storage.put_bytes(f"{job_prefix('runs', 'rp-1')}/meta.json", b'{"job": 1}', "application/json")
    assert requests.get(url, timeout=10).content == b'{"job": 1}'
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    assert keys == ["runs/rp-1/meta.json"]
    assert s3_server.secret_access_key not in repr(settings) + repr(storage)
