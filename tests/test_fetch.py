"""utils/fetch.py against a real HTTP server on loopback, a real S3 endpoint (moto), and hostile URLs.

Only DNS is ever patched (utils.fetch.resolve); every HTTP exchange is real.
"""
from __future__ import annotations

import base64
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.errors import InputError
from tests.helpers import example_bytes
from tests.s3_fixtures import S3Server, s3_server  # noqa: F401  (pytest fixture)
from utils import fetch as fetch_module
from utils.fetch import Fetcher, decode_base64, safe_url
from utils.settings import Settings

PNG = example_bytes("extinguisher.png")


class _Handler(BaseHTTPRequestHandler):
    """Routes: /img.png, /missing (404), /redirect?to=URL (302), /loop (redirects to itself),
    /big (declared length over the limit), /drip (chunked body over the limit, no length)."""

    hosts_seen: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self.hosts_seen.append(self.headers.get("Host", ""))
        parts = urlsplit(self.path)
        if parts.path == "/img.png":
            self._send(200, PNG)
        elif parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif parts.path == "/big":
            self._send(200, b"\0" * 5000)
        elif parts.path == "/drip":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(404, b"not here")

    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _fetcher(**overrides: object) -> Fetcher:
    return Fetcher(replace(Settings(), fetch_timeout_seconds=5.0, **overrides))


def _refused(fetcher: Fetcher, url: str, field: str = "image_url") -> InputError:
    with pytest.raises(InputError) as info:
        fetcher.fetch(url, field=field)
    assert info.value.field == field
    return info.value


# --- real fetches --------------------------------------------------------------------------------------


def test_fetch_from_local_server(server: str) -> None:
    assert _fetcher(allow_private_urls=True).fetch(f"{server}/img.png", field="image_url") == PNG


def test_http_404_names_status_and_hides_query(server: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True), f"{server}/missing.png?X-Amz-Signature=SECRET", "mask_url")
    assert "HTTP 404" in err.message and "127.0.0.1" in err.message
    assert "SECRET" not in err.message and "X-Amz" not in err.message


def test_redirect_is_followed(server: str) -> None:
    data = _fetcher(allow_private_urls=True).fetch(f"{server}/redirect?to=/img.png", field="image_url")
    assert data == PNG


def test_byte_limit_with_declared_length(server: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True, max_download_bytes=2000), f"{server}/big")
    assert "limit of 2,000 bytes" in err.message or "the limit is 2,000 bytes" in err.message


def test_byte_limit_while_streaming(server: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True, max_download_bytes=2500), f"{server}/drip")
    assert "larger than the limit of 2,500 bytes" in err.message


def test_too_many_redirects(server: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True), f"{server}/loop")
    assert "more than 5 redirects" in err.message


def test_connection_goes_to_the_checked_address(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host name is looked up once per hop and the socket goes to that answer (no second lookup),
    while the Host header keeps the name."""
    port = int(server.rsplit(":", 1)[1])
    calls: list[str] = []

    def fake_resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(fetch_module, "resolve", fake_resolve)
    _Handler.hosts_seen.clear()
    data = _fetcher(allow_private_urls=True).fetch(f"http://images.invalid:{port}/img.png", field="image_url")
    assert data == PNG
    assert calls == ["images.invalid"]
    assert _Handler.hosts_seen == [f"images.invalid:{port}"]


def test_redirect_target_is_checked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second hop is resolved and checked anew: a name answering 0.0.0.0 (which on Linux reaches this
    very server) is refused even with private URLs allowed."""
    port = int(server.rsplit(":", 1)[1])
    real_resolve = fetch_module.resolve
    monkeypatch.setattr(
        fetch_module, "resolve", lambda host, p: ["0.0.0.0"] if host == "rebind.invalid" else real_resolve(host, p)
    )
    target = f"http://rebind.invalid:{port}/img.png"
    err = _refused(_fetcher(allow_private_urls=True), f"{server}/redirect?to={target}")
    assert "0.0.0.0" in err.message and "unspecified" in err.message


def test_redirect_to_other_scheme_is_refused(server: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True), f"{server}/redirect?to=file:///etc/passwd")
    assert "'file:'" in err.message


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """One private address among public ones is enough to refuse: a rebinding resolver cannot hide it."""
    monkeypatch.setattr(fetch_module, "resolve", lambda host, port: ["93.184.215.14", "10.0.0.1"])
    err = _refused(_fetcher(), "http://cdn.invalid/img.png")
    assert "10.0.0.1" in err.message and "private" in err.message


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name` (and its key), signed by itself: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:  # failed handshakes are expected
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a certificate for images.test: (port, cert path, SNI names seen)."""
    cert_path, key_path = _self_signed(tmp_path, "images.test")
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1], cert_path, names
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_to_pinned_address_keeps_sni_and_certificate_check(
    tls_server: tuple[int, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket goes to the checked address while TLS names the host: the certificate for images.test
    verifies (with the test's CA trusted), and an untrusted one is refused."""
    port, cert_path, names = tls_server
    monkeypatch.setattr(fetch_module, "resolve", lambda host, p: ["127.0.0.1"])
    url = f"https://images.test:{port}/img.png"
    err = _refused(_fetcher(allow_private_urls=True), url)
    assert "TLS certificate check failed for images.test" in err.message
    monkeypatch.setattr(requests.adapters, "DEFAULT_CA_BUNDLE_PATH", str(cert_path))
    assert _fetcher(allow_private_urls=True).fetch(url, field="image_url") == PNG
    assert names and set(names) == {"images.test"}


def test_silent_server_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # connections complete in the backlog, but nothing ever answers
    try:
        port = listener.getsockname()[1]
        fetcher = Fetcher(replace(Settings(), allow_private_urls=True, fetch_timeout_seconds=0.5))
        with pytest.raises(InputError) as info:
            fetcher.fetch(f"http://127.0.0.1:{port}/img.png", field="image_url")
        assert "timed out" in info.value.reason
    finally:
        listener.close()


# --- refused without any connection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/x.png", "loopback"),
        ("http://10.0.0.1/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/x.png", "loopback"),
        ("http://[::ffff:127.0.0.1]/x.png", "loopback"),
        ("http://[::ffff:169.254.169.254]/x.png", "link-local"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[fd00:ec2::254]/x.png", "private"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://localhost/x.png", "loopback"),
        ("http://2130706433/x.png", "loopback"),  # 127.0.0.1 written as one number
    ],
)
def test_private_addresses_are_refused(url: str, reason: str) -> None:
    err = _refused(_fetcher(), url)
    assert reason in err.message, err.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com:70/_x",
                                 "dict://127.0.0.1:11211/", "/etc/passwd", "example.com/a.png"])
def test_other_schemes_are_refused(url: str) -> None:
    err = _refused(_fetcher(allow_private_urls=True), url)
    assert "use https://" in err.message


def test_allow_private_still_refuses_unspecified_and_multicast() -> None:
    for url in ("http://0.0.0.0/x.png", "http://[::]/x.png", "http://224.0.0.1/x.png"):
        err = _refused(_fetcher(allow_private_urls=True), url)
        assert "unspecified" in err.message or "multicast" in err.message


def test_name_that_does_not_resolve() -> None:
    err = _refused(_fetcher(), "https://no-such-host.invalid/a.png")
    assert "cannot resolve" in err.message


def test_safe_url_strips_secrets() -> None:
    shown = safe_url("https://user:pw@bucket.s3.amazonaws.com:8443/a/b.png?X-Amz-Signature=abc#frag")
    assert shown == "https://bucket.s3.amazonaws.com:8443/a/b.png"


def test_resolve_returns_each_address_once() -> None:
    addresses = fetch_module.resolve("localhost", 80)
    assert addresses and len(addresses) == len(set(addresses))
    assert all(socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in addresses)


# --- data: URIs and base64 -------------------------------------------------------------------------------


def test_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert _fetcher().fetch(uri, field="image_url") == PNG
    assert _fetcher().decode_inline(uri, field="image_base64") == PNG


@pytest.mark.parametrize("uri", ["data:text/html;base64,PGgxPg==", "data:image/svg+xml;base64,PHN2Zz4=",
                                 "data:image/png,rawbytes"])
def test_data_uri_other_types_refused(uri: str) -> None:
    err = _refused(_fetcher(), uri)
    assert "data URI must be" in err.message


def test_base64_accepts_whitespace_urlsafe_and_missing_padding() -> None:
    data = bytes(range(256)) * 3 + b"\xfb\xff"
    standard = base64.b64encode(data).decode()
    wrapped = "\n".join(standard[i:i + 76] for i in range(0, len(standard), 76))
    assert decode_base64(wrapped, field="f", max_bytes=10_000) == data
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "-" in urlsafe or "_" in urlsafe
    assert decode_base64(urlsafe, field="f", max_bytes=10_000) == data


@pytest.mark.parametrize("text", ["abc$def", "ab=cd", "abcd=", "a", "abcde", "aGVsbG8=aGVsbG8=", "ÿÿÿÿ", "  "])
def test_bad_base64(text: str) -> None:
    with pytest.raises(InputError) as info:
        decode_base64(text, field="image_base64", max_bytes=10_000)
    assert info.value.field == "image_base64"
    assert "not valid base64" in info.value.reason or "is empty" in info.value.reason


def test_base64_size_checked_before_decoding() -> None:
    with pytest.raises(InputError) as info:
        decode_base64("!" * 4000, field="image_base64", max_bytes=1000)  # invalid too: the size is seen first
    assert "the limit is 1,000 bytes" in info.value.reason


# --- s3:// ----------------------------------------------------------------------------------------------


def _s3_fetcher(s3: S3Server, **overrides: object) -> Fetcher:
    return Fetcher(replace(Settings(), **overrides), s3_client_factory=s3.client)


def test_s3_fetch(s3_server: S3Server) -> None:  # noqa: F811
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="in/my img.png", Body=PNG)
    assert _s3_fetcher(s3_server).fetch(f"s3://{s3_server.bucket}/in/my img.png", field="image_url") == PNG


def test_s3_errors(s3_server: S3Server) -> None:  # noqa: F811
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="big.bin", Body=b"\0" * 3000)
    fetcher = _s3_fetcher(s3_server, max_download_bytes=2000)
    assert "does not exist" in _refused(fetcher, f"s3://{s3_server.bucket}/nope.png").message
    assert "does not exist" in _refused(fetcher, "s3://no-such-bucket-here/a.png").message
    assert "the limit is 2,000 bytes" in _refused(fetcher, f"s3://{s3_server.bucket}/big.bin").message
    assert "s3://bucket/key" in _refused(fetcher, f"s3://{s3_server.bucket}").message


def test_s3_without_client_is_refused() -> None:
    err = _refused(_fetcher(), "s3://bucket/key.png", "views.left.url")
    assert "not enabled" in err.message
