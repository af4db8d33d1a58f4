"""Fetch model weights into MODELS_DIR: `python -m models.download NAME ... | --list | --all`.

Runs at image build time. Each file is fetched with `huggingface_hub.hf_hub_download` (progress bar,
resumes interrupted downloads) straight into `<MODELS_DIR>/<org>/<repo>/<subfolder>/`, then verified:
configs must parse and name what they build, safetensors must have a readable header whose tensors
exactly fill the file, and an LFS file's sha256 must equal the hub's ETag for it. A `.download.json` next
to the files records the revision, the commit it resolved to, and each file's size and sha256, so
`--verify` can re-check a folder later without a network.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from huggingface_hub import hf_hub_download
from huggingface_hub._local_folder import read_download_metadata  # what hf_hub_download(local_dir=...) records

from models.registry import MANIFEST, REGISTRY, ModelSpec, missing_files, model_dir, with_requirements

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_DIT_SECTIONS = ("model", "vae", "conditioner", "scheduler", "image_processor")

Fetch = Callable[..., str]


class VerificationError(RuntimeError):
    """A downloaded file is not what the model needs; the message names the file and the problem."""


def check_safetensors(path: Path) -> int:
    """Check that the header parses and the tensors exactly fill the file; return the tensor count."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise VerificationError(f"{path}: too short for a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise VerificationError(f"{path}: header length {header_len} runs past the end of the file (truncated?)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VerificationError(f"{path}: unreadable safetensors header ({exc})") from None
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        begin, stop = info["data_offsets"]
        count = 1
        for dim in info["shape"]:
            count *= dim
        if stop - begin != count * _DTYPE_BYTES.get(info["dtype"], 0):
            raise VerificationError(f"{path}: tensor {name!r} has {stop - begin} bytes for shape {info['shape']}")
        end = max(end, stop)
    if 8 + header_len + end != size:
        raise VerificationError(
            f"{path}: tensors end at byte {8 + header_len + end} but the file has {size} (truncated?)")
    return len(header)


def check_config(spec: ModelSpec, path: Path) -> None:
    """A YAML config must parse; a DiT config must describe all pipeline parts, a VAE config its target
    and params (what hy3dgen builds from)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{path}: not valid YAML ({exc})") from None
    needed = {"shape": _DIT_SECTIONS, "vae": ("target", "params")}.get(spec.kind, ())
    absent = [key for key in needed if not isinstance(config, dict) or key not in config]
    if absent:
        raise VerificationError(f"{path}: config lacks {', '.join(absent)}")


def sha256_of(path: Path, block: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_layout(spec: ModelSpec, models_dir: Path) -> list[str]:
    """Check every file of `spec` on disk (and against its manifest when there is one); return problems."""
    missing = missing_files(spec, models_dir)
    if missing:
        return [f"missing {name}" for name in missing]
    folder = model_dir(spec, models_dir)
    problems = []
    manifest_path = folder / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name in spec.files:
        path = folder / name
        try:
            if name.endswith(".safetensors"):
                check_safetensors(path)
            elif name.endswith((".yaml", ".yml")):
                check_config(spec, path)
        except VerificationError as exc:
            problems.append(str(exc))
            continue
        recorded = manifest.get("files", {}).get(name)
        if recorded and (recorded["bytes"] != path.stat().st_size or recorded["sha256"] != sha256_of(path)):
            problems.append(f"{path}: differs from the downloaded copy recorded in {MANIFEST}")
    return problems


def _check_against_hub(repo_root: Path, remote: str, digest: str) -> str | None:
    """The commit the hub served `remote` from; raises when an LFS file's sha256 is not the hub's ETag."""
    metadata = read_download_metadata(repo_root, remote)
    if metadata is None:
        return None
    etag = metadata.etag.strip('"')
    if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) and etag != digest:
        raise VerificationError(f"{remote}: sha256 {digest} differs from the hub's {etag} (corrupted download)")
    return metadata.commit_hash or None


def download_model(spec: ModelSpec, models_dir: Path, fetch: Fetch = hf_hub_download) -> Path:
    """Fetch exactly `spec.files` into model_dir(spec); verify them; write the manifest."""
    folder = model_dir(spec, models_dir)
    repo_root = Path(models_dir) / spec.org / spec.repo
    folder.mkdir(parents=True, exist_ok=True)
    records = {}
    for name in spec.files:
        remote = f"{spec.subfolder}/{name}" if spec.subfolder else name
        print(f"[{spec.name}] {spec.repo_id}@{spec.revision}: {remote}", flush=True)
        local = Path(fetch(repo_id=spec.repo_id, filename=remote, revision=spec.revision, local_dir=repo_root))
        expected = folder / name
        if local.resolve() != expected.resolve():
            raise VerificationError(f"{remote} landed at {local}, expected {expected}")
        digest = sha256_of(expected)
        commit = _check_against_hub(repo_root, remote, digest)
        records[name] = {"bytes": expected.stat().st_size, "sha256": digest, "commit": commit}
    problems = verify_layout(spec, models_dir)
    if problems:
        raise VerificationError("; ".join(problems))
    commits = sorted({record["commit"] for record in records.values() if record["commit"]})
    manifest = {"name": spec.name, "repo_id": spec.repo_id, "revision": spec.revision,
                "commit": commits[0] if len(commits) == 1 else None, "files": records}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def list_models(models_dir: Path) -> str:
    """One line per known model: name, kind, size, where, and whether it is present."""
    lines = [f"MODELS_DIR={models_dir}", f"{'name':<24} {'kind':<12} {'size':>8}  {'status':<18} location"]
    for spec in REGISTRY.values():
        missing = missing_files(spec, models_dir)
        status = "present" if not missing else f"missing {len(missing)}/{len(spec.files)} files"
        where = f"{spec.repo_id}/{spec.subfolder}@{spec.revision}"
        lines.append(f"{spec.name:<24} {spec.kind:<12} {spec.size_bytes / 1e9:>6.2f}GB  {status:<18} {where}")
    licences: dict[str, list[str]] = {}
    for spec in REGISTRY.values():
        licences.setdefault(spec.licence, []).append(spec.name)
    lines.append("licences (models/registry.py):")
    for licence, names in licences.items():
        lines += [f"  {licence}", f"      {', '.join(names)}"]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.download", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to fetch (with what they require)")
    parser.add_argument("--list", action="store_true", help="show the known models and which are present")
    parser.add_argument("--all", action="store_true", help="fetch every known model")
    parser.add_argument("--verify", action="store_true", help="check the named models on disk, fetch nothing")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: $MODELS_DIR or /models")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if not (args.list or args.all or args.names):
        parser.error("name at least one model, or use --list or --all")
    return args


def main(argv: list[str] | None = None, fetch: Fetch = hf_hub_download) -> int:
    args = _parse(argv)
    models_dir = args.models_dir or Path(os.environ.get("MODELS_DIR") or "/models")
    if args.list:
        print(list_models(models_dir))
        return 0
    names = list(REGISTRY) if args.all else args.names
    specs: list[ModelSpec] = []
    for name in names:
        specs += [spec for spec in with_requirements(name) if spec not in specs]
    failed = 0
    for spec in specs:
        if args.verify:
            problems = verify_layout(spec, models_dir)
        else:
            try:
                download_model(spec, models_dir, fetch=fetch)
                problems = []
            except VerificationError as exc:
                problems = [str(exc)]
        for problem in problems:
            print(f"[{spec.name}] {problem}", file=sys.stderr)
        failed += bool(problems)
        if not problems:
            print(f"[{spec.name}] ok: {model_dir(spec, models_dir)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
