"""Bytes from what the user sent (CONTRACT.md section 1): http(s) and s3:// URLs, data: URIs, inline base64.

This is the worker's main attack surface, so every URL is held to these rules:
- only http, https, s3 and data:image/(png|jpeg|webp);base64 are accepted (no file://, ftp://, gopher://);
- an http(s) host is resolved once, every address it resolves to is checked, and the connection goes to a
  checked address (DNS rebinding cannot swap in another one); TLS still verifies the host name (SNI);
- redirects are followed by hand, at most MAX_REDIRECTS, each hop checked like the first;
- bodies are streamed and cut off past `settings.max_download_bytes`, within `settings.fetch_timeout_seconds`;
- error messages never show a URL's query string or user info (presigned URLs carry tokens there).

Address policy: private, loopback, link-local (169.254.169.254 included), shared (100.64/10), reserved and
documentation ranges are refused unless `settings.allow_private_urls`. The unspecified address (0.0.0.0, ::)
and multicast are refused always: no image server lives there, and on Linux 0.0.0.0 reaches the local host.
IPv6 addresses that embed an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) are judged by that IPv4 address too.
Environment proxies are ignored (a proxy would do its own, unchecked, DNS lookup).
"""
from __future__ import annotations

import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from botocore.exceptions import BotoCoreError, ClientError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from pipeline.errors import InputError
from utils.settings import Settings

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
_DATA_URI_RE = re.compile(r"^data:image/(png|jpeg|webp);base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"[ \t\r\n\f\v]+")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: fit for an error message."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url.split("?", 1)[0][:80]
    return shown[:200]


def decode_base64(data: str, *, field: str, max_bytes: int) -> bytes:
    """Strict base64 -> bytes. Whitespace is ignored and the urlsafe alphabet accepted; missing trailing
    padding is restored, but misplaced padding or characters outside the alphabet are refused.
    The size limit is checked from the text length before anything is decoded."""
    try:
        raw = data.encode("ascii")
    except UnicodeEncodeError:
        raise InputError(field, "not valid base64 (it contains non-ASCII characters)") from None
    text = _WHITESPACE.sub(b"", raw)
    if not text:
        raise InputError(field, "is empty")
    if len(text) // 4 * 3 > max_bytes + 2:  # 4 characters carry 3 bytes; +2 covers the padding slack
        raise InputError(
            field, f"is about {len(text) // 4 * 3:,} bytes; the limit is {max_bytes:,} bytes"
        )
    if len(text) % 4 == 1:
        raise InputError(field, "not valid base64 (its length is impossible: truncated?)")
    text = text.translate(_URLSAFE_TO_STANDARD) + b"=" * (-len(text) % 4)
    try:
        decoded = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as exc:
        raise InputError(field, f"not valid base64 ({exc})") from None
    if len(decoded) > max_bytes:
        raise InputError(field, f"is {len(decoded):,} bytes; the limit is {max_bytes:,} bytes")
    return decoded


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the one DNS lookup of a fetch hop)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def blocked_reason(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a fetch must not connect to `address`, or None when it may."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return blocked_reason(embedded, allow_private=allow_private)
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not publicly routable"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class _PinnedConnectionMixin:
    """An urllib3 connection that connects to pre-checked addresses instead of looking the host up again.
    `self.host` stays the URL's host name, so the Host header, SNI and certificate checks are unchanged."""

    pinned_addresses: tuple[str, ...] = ()
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        error: OSError | None = None
        for address in self.pinned_addresses:
            try:
                return create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {address} timed out") from exc
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"failed to connect: {error}")


def _pinned_pool_classes(addresses: tuple[str, ...]) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections go to `addresses` only."""
    attrs = {"pinned_addresses": addresses}
    http_conn = type("PinnedHTTPConnection", (_PinnedConnectionMixin, HTTPConnection), attrs)
    https_conn = type("PinnedHTTPSConnection", (_PinnedConnectionMixin, HTTPSConnection), attrs)
    return {
        "http": type("PinnedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("PinnedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class _PinnedAdapter(HTTPAdapter):
    """A requests transport adapter for one fetch hop, pinned to the addresses checked for it."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._addresses = addresses  # read by init_poolmanager, which HTTPAdapter.__init__ calls
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pool_classes(self._addresses)


class Fetcher:
    """Gets the bytes behind a user-supplied URL or inline payload, under the rules in the module docstring.

    `s3_client_factory` returns a boto3 S3 client; without one, s3:// URLs are refused.
    """

    def __init__(self, settings: Settings, *, s3_client_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self._s3_client_factory = s3_client_factory
        self._s3_client: Any = None

    @property
    def max_bytes(self) -> int:
        return self.settings.max_download_bytes

    def fetch(self, url: str, *, field: str) -> bytes:
        """The bytes at `url`: https/http, s3://bucket/key or data:image/...;base64. InputError names `field`."""
        url = url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return self._fetch_data_uri(url, field)
        if scheme == "s3":
            return self._fetch_s3(url, field)
        if scheme in ("http", "https"):
            return self._fetch_http(url, field)
        shown = f"'{scheme}://'" if scheme else "no scheme"
        raise InputError(field, f"URL has {shown}; use https://, http://, s3://bucket/key or a data:image/ URI")

    def decode_inline(self, data: str, *, field: str) -> bytes:
        """An inline `*_base64` field: plain base64, or a data:image/...;base64 URI as browsers write it."""
        if data.lstrip()[:5].lower() == "data:":
            return self._fetch_data_uri(data.strip(), field)
        return decode_base64(data, field=field, max_bytes=self.max_bytes)

    def _fetch_data_uri(self, url: str, field: str) -> bytes:
        match = _DATA_URI_RE.match(url)
        if match is None:
            raise InputError(field, "data URI must be data:image/png, image/jpeg or image/webp with ;base64,")
        return decode_base64(url[match.end():], field=field, max_bytes=self.max_bytes)

    # --- s3 ---------------------------------------------------------------------------------------------

    def _fetch_s3(self, url: str, field: str) -> bytes:
        parts = urlsplit(url)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise InputError(field, f"S3 URL must look like s3://bucket/key, got {safe_url(url)}")
        if self._s3_client_factory is None:
            raise InputError(field, "s3:// URLs are not enabled on this worker (no S3 client configured)")
        where = f"s3://{bucket}/{key}"
        try:
            if self._s3_client is None:
                self._s3_client = self._s3_client_factory()
            response = self._s3_client.get_object(Bucket=bucket, Key=key)
            size = int(response.get("ContentLength") or 0)
            if size > self.max_bytes:
                response["Body"].close()
                raise InputError(field, f"{where} is {size:,} bytes; the limit is {self.max_bytes:,} bytes")
            body = response["Body"]
            try:
                return _read_limited(iter(lambda: body.read(CHUNK_BYTES), b""), field, self.max_bytes, where)
            finally:
                body.close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise InputError(field, f"{where} does not exist") from None
            if code == "NoSuchBucket":
                raise InputError(field, f"bucket {bucket!r} does not exist") from None
            if code in ("AccessDenied", "403", "AllAccessDisabled"):
                raise InputError(field, f"access to {where} was denied") from None
            raise InputError(field, f"S3 error {code or 'unknown'} reading {where}") from None
        except BotoCoreError as exc:
            raise InputError(field, f"could not read {where}: {type(exc).__name__}") from None

    # --- http(s) -----------------------------------------------------------------------------------------

    def _fetch_http(self, url: str, field: str) -> bytes:
        started = time.monotonic()
        for _ in range(MAX_REDIRECTS + 1):
            host, port = self._http_target(url, field)
            addresses = self._checked_addresses(host, port, url, field)
            with requests.Session() as session:
                session.trust_env = False  # no proxies or .netrc from the environment
                adapter = _PinnedAdapter(addresses)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                try:
                    response = session.get(
                        url,
                        stream=True,
                        allow_redirects=False,
                        timeout=(self.settings.fetch_timeout_seconds, self.settings.fetch_timeout_seconds),
                        headers={"Accept": "image/png, image/jpeg, image/webp", "Accept-Encoding": "identity"},
                    )
                except requests.ConnectTimeout:
                    raise InputError(field, f"timed out connecting to {host}") from None
                except requests.Timeout:
                    raise InputError(
                        field, f"{host} did not answer within {self.settings.fetch_timeout_seconds:g} s (timed out)"
                    ) from None
                except requests.exceptions.SSLError:
                    raise InputError(field, f"TLS certificate check failed for {host}") from None
                except requests.RequestException as exc:
                    raise InputError(field, f"could not fetch {safe_url(url)} ({type(exc).__name__})") from None
                with response:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        url = urljoin(url, location)
                        continue
                    if response.status_code >= 400:
                        raise InputError(field, f"HTTP {response.status_code} from {host} for {safe_url(url)}")
                    return self._read_http_body(response, field, url, started)
        raise InputError(field, f"more than {MAX_REDIRECTS} redirects starting at {safe_url(url)}")

    @staticmethod
    def _http_target(url: str, field: str) -> tuple[str, int]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InputError(field, f"malformed URL {safe_url(url)}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            # Reached through a redirect: the first hop's scheme was checked in fetch().
            raise InputError(field, f"redirect to a '{scheme}:' URL refused; only http(s) may be followed")
        if not parts.hostname:
            raise InputError(field, f"URL has no host: {safe_url(url)}")
        return parts.hostname, port or (443 if scheme == "https" else 80)

    def _checked_addresses(self, host: str, port: int, url: str, field: str) -> tuple[str, ...]:
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError):
            raise InputError(field, f"cannot resolve host {host!r}") from None
        if not addresses:
            raise InputError(field, f"cannot resolve host {host!r}")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
            reason = blocked_reason(address, allow_private=self.settings.allow_private_urls)
            if reason is not None:
                raise InputError(
                    field, f"{safe_url(url)} resolves to {address}, {reason}; the worker does not fetch from there"
                )
        return tuple(addresses)

    def _read_http_body(self, response: requests.Response, field: str, url: str, started: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise InputError(
                field, f"{safe_url(url)} is {int(declared):,} bytes; the limit is {self.max_bytes:,} bytes"
            )
        timeout = self.settings.fetch_timeout_seconds

        def chunks() -> Iterator[bytes]:
            # read1 returns what one socket read brings (iter_content would wait for a whole chunk): a server
            # that drips a byte a second cannot keep the download going past the total time bound.
            try:
                while True:
                    if time.monotonic() - started > timeout:
                        raise InputError(field, f"download from {safe_url(url)} took longer than {timeout:g} s")
                    chunk = response.raw.read1(CHUNK_BYTES)
                    if not chunk:
                        return
                    yield chunk
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise InputError(field, f"download from {safe_url(url)} failed ({type(exc).__name__})") from None

        return _read_limited(chunks(), field, self.max_bytes, safe_url(url))


def _read_limited(chunks: Iterator[bytes], field: str, max_bytes: int, where: str) -> bytes:
    """Join chunks, stopping with InputError as soon as they pass `max_bytes`."""
    parts: list[bytes] = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise InputError(field, f"{where} is larger than the limit of {max_bytes:,} bytes")
        parts.append(chunk)
    data = b"".join(parts)
    if not data:
        raise InputError(field, f"{where} is empty")
    return data
