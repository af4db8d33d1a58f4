"""Where bundles go: a local folder (file:// URLs) or an S3-compatible bucket (presigned URLs).

Keys are relative to the storage root ("<output_prefix>/<job_id>/model.glb"); the storage adds
LOCAL_OUTPUT_DIR or S3_PREFIX. Every key is validated here, whoever built it, so nothing a user
sends can make the worker write outside its root.
"""
from __future__ import annotations

import io
import logging
import mimetypes
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from pipeline.errors import InputError, StorageError
from utils.settings import Settings

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 8 * MiB
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_MAX_KEY_LENGTH = 900  # S3 allows 1024 bytes; leave room for S3_PREFIX

_CONTENT_TYPES = {
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".bin": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
    ".obj": "model/obj",
    ".txt": "text/plain; charset=utf-8",
}


class Storage(Protocol):
    """A bundle destination. Keys are relative to the root; every method validates them."""

    kind: str  # "local" | "s3"

    def put_file(self, key: str, path: Path, content_type: str) -> str:
        """Store the file at `path` under `key`; return its fetchable URL."""
        ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` under `key`; return its fetchable URL."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; best effort, no error if it is missing."""
        ...

    def url(self, key: str) -> str:
        """A URL the client can GET: presigned for S3, file:// for local storage."""
        ...

    def object_key(self, key: str) -> str:
        """The key as stored: with S3_PREFIX in a bucket, relative to LOCAL_OUTPUT_DIR locally."""
        ...

    def check(self) -> None:
        """Start-up self-check: raise StorageError if the destination cannot be written."""
        ...


def content_type_for(key: str) -> str:
    """The MIME type a client expects for `key`, from its extension."""
    suffix = Path(key).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"


def _key_problem(key: object) -> str | None:
    """Why `key` is not a safe relative storage key, or None when it is."""
    if not isinstance(key, str) or not key:
        return "must be a non-empty string"
    if len(key) > _MAX_KEY_LENGTH:
        return f"must be at most {_MAX_KEY_LENGTH} characters"
    if "\\" in key:
        return "must not contain backslashes"
    if key.startswith("/"):
        return "must be relative, not start with '/'"
    if not _KEY_CHARS.fullmatch(key):
        return "may only contain A-Z a-z 0-9 . _ / -"
    segments = key.split("/")
    if any(s == "" for s in segments):
        return "must not contain empty path segments ('//' or a trailing '/')"
    if any(s in (".", "..") for s in segments):
        return "must not contain '.' or '..' path segments"
    return None


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe relative key, else raise StorageError."""
    problem = _key_problem(key)
    if problem is not None:
        raise StorageError(f"invalid storage key {key!r}: {problem}")
    return key


def job_prefix(output_prefix: str | None, job_id: str) -> str:
    """The key prefix of one job's bundle: "<output_prefix>/<job_id>" (or just the job id)."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or job_id in (".", ".."):
        raise InputError("id", "a job id must be 1-128 characters of A-Z a-z 0-9 . _ - (and not '.' or '..')")
    if output_prefix is None:
        return job_id
    prefix = output_prefix.strip("/") if isinstance(output_prefix, str) else output_prefix
    problem = _key_problem(prefix)
    if problem is not None:
        raise InputError("output_prefix", problem)
    return f"{prefix}/{job_id}"


# ---------------------------------------------------------------- local folder


class LocalStorage:
    """Bundles in a folder; writes are atomic (temp file + os.replace)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def object_key(self, key: str) -> str:
        return validate_key(key)

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = (self.root / key).resolve()
        # Defence in depth: a symlink inside the root must not lead outside it.
        if not path.is_relative_to(self.root):
            raise StorageError(f"invalid storage key {key!r}: it resolves outside the output folder")
        return path

    def _write(self, key: str, source: BinaryIO) -> str:
        path = self._path(key)
        tmp_name: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The temp file lives beside the target so os.replace is an atomic rename on one filesystem.
            with tempfile.NamedTemporaryFile(
                dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
            ) as tmp:
                tmp_name = tmp.name
                shutil.copyfileobj(source, tmp, length=MiB)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, 0o644)  # NamedTemporaryFile makes 0600; bundles are meant to be read
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as exc:
            raise StorageError(f"could not write {key!r} under {self.root}: {exc.strerror or exc}") from exc
        finally:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
        return path.as_uri()

    def put_file(self, key: str, path: Path, content_type: str) -> str:
        try:
            source = open(path, "rb")
        except OSError as exc:
            raise StorageError(f"could not read {str(path)!r} to store it as {key!r}: {exc.strerror or exc}") from exc
        with source:
            return self._write(key, source)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> str:
        return self._write(key, io.BytesIO(data))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc.strerror or exc)

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as exc:
            raise StorageError(f"the output folder {self.root} is not writable: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------- S3


def make_s3_client(
    settings: Settings,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    max_attempts: int = 5,
) -> BaseClient:
    """A boto3 S3 client for the configured endpoint, with standard retries and timeouts.

    Credentials come from the settings when given (AWS_* or RunPod's BUCKET_*), else from boto3's chain.
    """
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        signature_version="s3v4",  # R2 and newer AWS regions only accept SigV4 presigned URLs
        # MinIO, moto and most self-hosted endpoints have no per-bucket DNS names.
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        region_name=settings.aws_region,
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


class S3Storage:
    """Bundles in an S3-compatible bucket under S3_PREFIX; URLs are presigned GETs."""

    kind = "s3"

    def __init__(
        self,
        settings: Settings,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 5,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        if not settings.s3_bucket:
            raise StorageError("S3 storage needs a bucket: set S3_BUCKET (or BUCKET_NAME)")
        if settings.presign_seconds > MAX_PRESIGN_SECONDS:
            raise StorageError(
                f"PRESIGN_SECONDS={settings.presign_seconds} is longer than the {MAX_PRESIGN_SECONDS} s "
                "(7 days) that S3 presigned URLs may live"
            )
        prefix = settings.s3_prefix.strip("/")
        if prefix and _key_problem(prefix) is not None:
            raise StorageError(f"S3_PREFIX={prefix!r} {_key_problem(prefix)}")
        self.bucket = settings.s3_bucket
        self.prefix = prefix
        self.presign_seconds = settings.presign_seconds
        self.endpoint = settings.s3_endpoint_url or "AWS S3"
        self._secrets = tuple(s for s in (settings.aws_secret_access_key,) if s)
        self.client = make_s3_client(
            settings, connect_timeout=connect_timeout, read_timeout=read_timeout, max_attempts=max_attempts
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold, use_threads=True
        )

    def object_key(self, key: str) -> str:
        """The full object key in the bucket: S3_PREFIX/key."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, content_type: str) -> str:
        full = self.object_key(key)
        if not Path(path).is_file():
            raise StorageError(f"could not read {str(path)!r} to store it as {key!r}: no such file")
        try:
            self.client.upload_file(
                str(path), self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._error(f"could not upload {full!r} to bucket {self.bucket!r}", exc) from None
        return self.url(key)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> str:
        full = self.object_key(key)
        try:
            self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, full, ExtraArgs={"ContentType": content_type}, Config=self._transfer
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._error(f"could not upload {full!r} to bucket {self.bucket!r}", exc) from None
        return self.url(key)

    def delete(self, key: str) -> None:
        full = self.object_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (BotoCoreError, ClientError) as exc:
            log.warning("%s", self._error(f"could not delete {full!r} from bucket {self.bucket!r}", exc).message)

    def url(self, key: str) -> str:
        full = self.object_key(key)
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=self.presign_seconds
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"could not sign a URL for {full!r} in bucket {self.bucket!r}", exc) from None

    def check(self) -> None:
        """head_bucket: the bucket exists and these credentials may use it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"storage check of bucket {self.bucket!r} failed", exc) from None

    def _error(self, what: str, exc: BaseException) -> StorageError:
        """A readable StorageError: `what` (naming the bucket and key) and why, with any secret scrubbed out."""
        message = f"{what}: {self._reason(exc)}"
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StorageError(message)

    def _reason(self, exc: BaseException) -> str:
        # upload_file wraps a ClientError in S3UploadFailedError without `from`; the original is the context.
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and exc.operation_name == "HeadBucket"):
                return f"bucket {self.bucket!r} does not exist at {self.endpoint}"
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
                return f"{self.endpoint} rejected the credentials ({code}); check AWS_* / BUCKET_* keys"
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return "access denied; check the credentials and the bucket policy"
            return f"{code or status}: {error.get('Message') or 'the storage refused the request'}"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return (
                "no usable credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY)"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)):
            return f"could not reach the storage endpoint {self.endpoint} ({type(exc).__name__})"
        return f"{type(exc).__name__}: {exc}"


def make_storage(settings: Settings) -> Storage:
    """The storage the settings ask for. Cheap: nothing is checked over the network here."""
    if settings.storage == "s3":
        return S3Storage(settings)
    if settings.storage == "local":
        return LocalStorage(settings.local_output_dir)
    raise StorageError(f"STORAGE={settings.storage!r} must be 'local' or 's3'")
