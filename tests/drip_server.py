"""A slow-drip image server on loopback: it announces a 100 kB PNG, then sends one byte every 0.5 s (what a
stalled or hostile image URL does). Used by the reliability tests and bench/serve_faults.py."""
from __future__ import annotations

import http.server
import time
from typing import Any


def drip_handler(max_bytes: int) -> type[http.server.BaseHTTPRequestHandler]:
    """A request handler that drips at most `max_bytes` bytes, so the server always ends by itself."""

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(max_bytes):
                try:
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)

        def log_message(self, *args: Any) -> None:
            pass

    return Drip
