"""Write a job JSON (`{"input": {...}}`) for a local picture, for `handler.py --test_input_file` or curl.

    python scripts/make_request.py examples/lantern.png --shape-model silhouette --texture-size 1024 -o job.json
    python handler.py --test_input_file job.json
    curl ... -d @job.json

Without -o the JSON goes to stdout. Standard library only: any python3 runs it.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path


def _b64(path: str, what: str) -> str:
    """The file's bytes as base64; a missing or unreadable file ends the script naming it."""
    try:
        return base64.b64encode(Path(path).read_bytes()).decode()
    except OSError as exc:
        raise SystemExit(f"make_request: cannot read the {what} {path!r}: {exc.strerror or exc}") from None


def build_request(args: argparse.Namespace) -> dict:
    job: dict = {"image_base64": _b64(args.image, "picture")}
    if args.mask:
        job["mask_base64"] = _b64(args.mask, "mask")
    views = {
        name: {"base64": _b64(path, f"{name} view")}
        for name, path in (("left", args.left), ("back", args.back), ("right", args.right))
        if path
    }
    if views:
        job["views"] = views
    for field in ("shape_model", "texture_model", "seed", "target_faces", "texture_size", "output_prefix"):
        value = getattr(args, field)
        if value is not None:
            job[field] = value
    if args.no_texture:
        job["texture"] = False
    return {"input": job}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the object's picture (PNG, JPEG or WebP)")
    parser.add_argument("--mask", help="a mask picture of the same size")
    parser.add_argument("--left", help="extra photo from the object's left")
    parser.add_argument("--back", help="extra photo from the back")
    parser.add_argument("--right", help="extra photo from the right")
    parser.add_argument("--shape-model", dest="shape_model")
    parser.add_argument("--texture-model", dest="texture_model")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--target-faces", dest="target_faces", type=int)
    parser.add_argument("--texture-size", dest="texture_size", type=int)
    parser.add_argument("--output-prefix", dest="output_prefix")
    parser.add_argument("--no-texture", action="store_true")
    parser.add_argument("-o", "--output", help="write the job JSON to this file instead of stdout")
    args = parser.parse_args(argv)
    text = json.dumps(build_request(args)) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({len(text) / 1024:.0f} KiB)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
