"""Build the Blender extension zip: dist/<id>-<version>.zip from blender_addon/ (plain Python, no Blender).

    python scripts/build_addon.py [--source blender_addon] [--out dist]

The layout is what `blender --command extension build` makes: blender_manifest.toml at the zip's root.
The zip is reproducible (sorted entries, fixed timestamps). Install it with Blender's
Edit > Preferences > Get Extensions > Install from Disk, or `blender --command extension install-file`.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALWAYS_EXCLUDED = ("__pycache__/", "*.pyc", ".*")
ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def _excluded(rel: Path, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        if pattern.endswith("/"):
            if any(fnmatch.fnmatch(part, pattern[:-1]) for part in rel.parts[:-1]):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in rel.parts):
            return True
    return False


def build(source: Path, out_dir: Path) -> Path:
    """Write the zip; return its path. Raises ValueError when the manifest lacks id or version."""
    manifest = tomllib.loads((source / "blender_manifest.toml").read_text(encoding="utf-8"))
    ext_id, version = manifest.get("id"), manifest.get("version")
    if not ext_id or not version:
        raise ValueError(f"{source / 'blender_manifest.toml'} must set id and version")
    patterns = ALWAYS_EXCLUDED + tuple(manifest.get("build", {}).get("paths_exclude_pattern", ()))
    files = sorted(p for p in source.rglob("*") if p.is_file() and not _excluded(p.relative_to(source), patterns))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ext_id}-{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "blender_addon")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    print(build(args.source, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
