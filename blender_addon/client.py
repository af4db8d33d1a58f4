"""One HTTP client for RunPod endpoints and the local server (they speak the same API). urllib only:
nothing here imports bpy or a third-party package, so it runs inside any Blender and in plain Python."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlparse
from urllib.request import Request, urlopen

RUNPOD_API = "https://api.runpod.ai/v2"
LOCAL_ENDPOINT_ID = "local"  # the local server accepts any endpoint id
USER_AGENT = "image-to-3d-blender/1.0"


class EndpointError(Exception):
    """Something the artist can act on; str(err) is shown in Blender as is."""


class EndpointUnreachable(EndpointError):
    """No HTTP answer at all (refused, reset, timed out): may pass, unlike an answer that says no."""


def remote_base_url(endpoint: str) -> str:
    """`https://api.runpod.ai/v2/<id>` from an endpoint id, or the endpoint URL as given (without /run...)."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise EndpointError("Set the RunPod endpoint id (or its URL) in the add-on preferences")
    if "://" not in endpoint:
        if not all(c.isalnum() or c in "-_" for c in endpoint):
            raise EndpointError(f"{endpoint!r} is not a RunPod endpoint id: use letters, digits, - and _ only")
        return f"{RUNPOD_API}/{endpoint}"
    return _endpoint_url(endpoint)


def local_base_url(server_url: str) -> str:
    """`<server>/v2/local` from the local server's URL (a URL that already names /v2/<id> is kept)."""
    server_url = server_url.strip()
    if not server_url:
        raise EndpointError("Set the local server URL in the add-on preferences, e.g. http://127.0.0.1:8000")
    if "://" not in server_url:
        server_url = "http://" + server_url
    url = _endpoint_url(server_url)
    return url if re.search(r"/v2/[^/]+$", urlparse(url).path) else f"{url}/v2/{LOCAL_ENDPOINT_ID}"


def _endpoint_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise EndpointError(f"{url!r} is not an http(s) URL")
    url = url.rstrip("/")
    for tail in ("/run", "/runsync", "/health"):
        if url.endswith(tail):
            url = url[: -len(tail)]
    return url


def network_allowed(url: str, online_access: bool) -> bool:
    """Blender's 'Allow Online Access' governs the internet; this machine (loopback) is always reachable."""
    if online_access:
        return True
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EndpointClient:
    """run / status / cancel / health against `<base>` = `https://api.runpod.ai/v2/<id>` or `<server>/v2/<id>`."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = (api_key or "").strip() or None
        self.timeout = timeout
        self._origin = _origin(self.base_url)

    # ------------------------------------------------------------ the endpoint API
    def run(self, job_input: dict[str, Any]) -> str:
        """Queue a job; return its id."""
        body = self._call("POST", "/run", {"input": job_input})
        job_id = body.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise EndpointError(f"The endpoint accepted the job but sent no job id: {_short(body)}")
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/status/{quote(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/cancel/{quote(job_id)}")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def download(self, url: str, dest: Path) -> int:
        """Save `url` to `dest` (atomically); return its size. The API key goes only to the endpoint's own
        host (the local server's /files/), never to S3 or anywhere else."""
        headers = {"User-Agent": USER_AGENT}
        if self.api_key and _origin(url) == self._origin:
            headers["Authorization"] = f"Bearer {self.api_key}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urlopen(Request(url, headers=headers), timeout=self.timeout) as response:
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
                size = 0
                with os.fdopen(fd, "wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
            os.replace(tmp, dest)
        except HTTPError as err:
            raise EndpointError(f"Downloading {_short_url(url)} failed: HTTP {err.code} {err.reason}") from None
        except (URLError, OSError) as err:
            raise EndpointError(f"Downloading {_short_url(url)} failed: {_reason(err)}") from None
        return size

    # ------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        try:
            with urlopen(Request(url, data=data, headers=headers, method=method), timeout=self.timeout) as response:
                raw = response.read()
        except HTTPError as err:
            raise EndpointError(self._http_message(err, path)) from None
        except (URLError, OSError) as err:
            raise EndpointUnreachable(
                f"Cannot reach the endpoint at {_short_url(self.base_url)}: {_reason(err)}. "
                "Is it running, and is the URL in the add-on preferences right?"
            ) from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise EndpointError(f"The endpoint answered {path} with something that is not JSON: {raw[:200]!r}") from None
        if not isinstance(body, dict):
            raise EndpointError(f"The endpoint answered {path} with {_short(body)} instead of a JSON object")
        return body

    def _http_message(self, err: HTTPError, path: str) -> str:
        detail = _error_detail(err)
        if err.code in (401, 403):
            return (f"The endpoint refused the API key (HTTP {err.code}). "
                    "Check the API key in the add-on preferences.")
        if err.code == 404 and path.startswith("/status/"):
            return "The endpoint no longer knows this job (its result expired, or the endpoint was restarted)."
        if err.code == 404:
            return (f"No endpoint at {_short_url(self.base_url)} (HTTP 404). "
                    "Check the endpoint id or server URL in the add-on preferences.")
        if err.code == 400:
            return f"The endpoint refused the request: {detail}"
        return f"The endpoint answered HTTP {err.code} to {path}: {detail}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urlparse(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme, (parsed.hostname or "").lower(), port


def _error_detail(err: HTTPError) -> str:
    try:
        raw = err.read()
    except OSError:
        return err.reason or "no details"
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode("utf-8", "replace") or str(err.reason)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return _short(body)


def _reason(err: BaseException) -> str:
    if isinstance(err, URLError):
        if not isinstance(err.reason, BaseException):
            return str(err.reason)
        err = err.reason
    if isinstance(err, TimeoutError):  # socket.timeout too (Blender 4.2+ runs Python 3.11)
        return "no answer in time"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


def _short_url(url: str) -> str:
    """Without the query string: presigned URLs carry credentials that do not belong in a message."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
