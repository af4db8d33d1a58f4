"""A real S3 endpoint on loopback for tests: moto's HTTP server with one fresh bucket.

Use it with `from tests.s3_fixtures import s3_server` and a test argument `s3_server`.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_api._internal.models import moto_api_backend
from moto.server import ThreadedMotoServer

from utils.settings import Settings

REGION = "us-east-1"


@dataclass
class S3Server:
    """A running moto S3 server, one empty bucket on it, and the fake credentials it accepts."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    server: ThreadedMotoServer
    running: bool = field(default=True, repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment variables (CONTRACT.md section 4) pointing the worker at this bucket."""
        env = {
            "STORAGE": "s3",
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_REGION": REGION,
        }
        env.update(extra)
        return env

    def settings(self, **overrides: Any) -> Settings:
        """Settings for S3 storage on this bucket; keyword arguments replace fields."""
        return replace(Settings.from_env(self.env()), **overrides)

    def client(self) -> Any:
        """A plain boto3 client on the server, for checking what landed there."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=REGION,
        )

    def stop(self) -> None:
        """Stop the server (it closes its socket: connections are then refused)."""
        if self.running:
            self.server.stop()
            self.running = False


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Server]:
    """Start moto on 127.0.0.1 (free port), create a bucket, and set fake AWS credentials in os.environ."""
    # Keep boto3 away from any real profile, and requests/botocore away from any proxy.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "S3_PREFIX", "BUCKET_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    info = S3Server(
        endpoint_url=f"http://{host}:{port}",
        bucket=f"test-bucket-{uuid.uuid4().hex[:12]}",
        access_key_id="AKIATESTFAKEKEY00000",
        secret_access_key=f"fake-secret-{uuid.uuid4().hex}",
        server=server,
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", info.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", info.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    info.client().create_bucket(Bucket=info.bucket)
    try:
        yield info
    finally:
        info.stop()
        # moto keeps its state in this process (what POST /moto-api/reset does): the next test starts empty.
        moto_api_backend.reset()
