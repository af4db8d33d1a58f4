"""A local server that speaks RunPod's endpoint API, running the worker's handler on this machine.

    python serve.py [--host 127.0.0.1] [--port 8000] [--workers 1] [--token TOKEN] [--keep-seconds 3600]
                    [--public-url http://gpu-box:8000]

Then use it as a RunPod endpoint with any endpoint id: `POST http://127.0.0.1:8000/v2/local/run`, ...
(see localserver/app.py for the routes). Storage and models are configured by the same environment variables
as the worker (CONTRACT.md section 4); with local storage the bundles are also served under /files/.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from localserver.app import create_app
from localserver.jobs import JobQueue

log = logging.getLogger("serve")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the worker locally behind RunPod's endpoint API.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1,
                        help="jobs run at the same time (default 1: one job per GPU)")
    parser.add_argument("--token", default=os.environ.get("SERVE_TOKEN") or None,
                        help="require 'Authorization: Bearer TOKEN' on every request (default: $SERVE_TOKEN)")
    parser.add_argument("--keep-seconds", type=float, default=3600.0,
                        help="how long a finished job's status stays available")
    parser.add_argument("--public-url", default=None,
                        help="base URL of the /files/ links in results (default: the URL the client used)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.keep_seconds <= 0:
        parser.error("--keep-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    import handler  # the worker's own entry point: same validation, pipeline and storage as on RunPod

    services = handler.get_services()  # cold start (settings, storage, preloaded models) before serving
    settings = services.settings
    files_root = settings.local_output_dir.resolve() if settings.storage == "local" else None

    queue = JobQueue(handler.run_job, workers=args.workers, keep_seconds=args.keep_seconds)
    app = create_app(queue, token=args.token, files_root=files_root, public_url=args.public_url)
    queue.start()
    log.info("RunPod endpoint API at http://%s:%d/v2/<any id>/ (storage: %s%s, token %s)", args.host, args.port,
             settings.storage, f" {files_root}, served under /files/" if files_root else "",
             "required" if args.token else "not required")
    if not args.token and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without --token: anyone who can reach this port can run jobs", args.host)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        queue.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
