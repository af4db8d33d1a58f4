"""The Dockerfile, read the way `docker build` reads it (no Docker engine here): a pinned base, COPY sources
that exist and are not excluded by .dockerignore, the same installs as scripts/setup.sh (which CI runs),
no compiler, the worker as CMD, and the `--build-arg MODELS=...` step run for real with a stand-in hub."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.registry import with_requirements
from tests.helpers import REPO
from utils.settings import DEFAULT_PAINT_MODEL, DEFAULT_SHAPE_MODEL

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SETUP = REPO / "scripts" / "setup.sh"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comment lines dropped (Dockerfile syntax)."""
    instructions: list[Instruction] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments may sit inside a continued instruction too
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


FINAL = stages(INSTRUCTIONS)[-1]


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults[name] = value.strip('"')
    return defaults


ARGS = arg_defaults(INSTRUCTIONS)


def env_defaults(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def run_commands() -> list[str]:
    return [ins.args for ins in FINAL if ins.keyword == "RUN"]


def shell_commands(command: str) -> list[list[str]]:
    """The simple commands of a shell line (split at && || ; outside quotes), as word lists."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def pip_installs() -> list[list[str]]:
    """Every `pip install ...` in the final stage, as argument lists with the build args filled in."""
    installs = []
    for command in run_commands():
        for words in shell_commands(expand(command, ARGS)):
            if "pip" in words and "install" in words:
                installs.append(words[words.index("install") + 1 :])
    return installs


# ---------------------------------------------------------------- base, CMD, ENV


def test_base_image_is_pinned_by_exact_tag():
    (first,) = [ins for ins in INSTRUCTIONS if ins.keyword == "FROM"]  # one stage: nothing compiles
    image = expand(first.args.split()[0], ARGS)
    name, _, tag = image.partition(":")
    assert tag and tag != "latest", image
    assert name == "nvidia/cuda"
    assert re.fullmatch(r"\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d\d\.04", tag), tag


def test_cmd_runs_the_handler():
    cmds = [ins for ins in FINAL if ins.keyword == "CMD"]
    assert len(cmds) == 1
    assert json.loads(cmds[0].args) == ["python", "-u", "handler.py"]
    assert not [ins for ins in FINAL if ins.keyword == "ENTRYPOINT"]


def test_runtime_defaults():
    env = env_defaults(FINAL)
    assert env["RUNPOD_LOG_LEVEL"] == "INFO"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["MODELS_DIR"] == "/models"
    # what the default request runs: the default shape model and the default paint model
    assert env["PRELOAD_MODELS"] == f"{DEFAULT_SHAPE_MODEL} {DEFAULT_PAINT_MODEL}"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")  # `python` in CMD is the venv's


# ---------------------------------------------------------------- installs: the same as CI


def setup_sh_worker_part() -> str:
    """scripts/setup.sh up to its --dev section: what every install (CI, developers) gets."""
    text = SETUP.read_text()
    return text.split("if [[ $DEV == 1 ]]", 1)[0]


def test_requirement_files_are_the_ones_setup_sh_installs():
    def files(installs: list[list[str]]) -> list[tuple[str, bool]]:
        found = []
        for words in installs:
            for i, word in enumerate(words):
                if word == "-r":
                    found.append((words[i + 1], "--no-deps" in words))
        return found

    setup_installs = []
    for line in setup_sh_worker_part().splitlines():
        if line.strip().startswith("pip_install "):  # setup.sh's pip install with one progress line per package
            setup_installs.append(shlex.split(line)[1:])
    assert files(pip_installs()) == files(setup_installs) == [
        ("requirements.txt", False),
        ("requirements-nodeps.txt", True),
    ]
    copied = " ".join(ins.args for ins in FINAL if ins.keyword == "COPY")
    assert "requirements.txt" in copied and "requirements-nodeps.txt" in copied


def test_torch_pin_equals_setup_sh():
    (setup_pin,) = set(re.findall(r"TORCH_SPEC:-torch==([0-9.]+)", setup_sh_worker_part()))
    assert ARGS["TORCH_VERSION"] == setup_pin
    torch_install = next(words for words in pip_installs() if any(w.startswith("torch==") for w in words))
    assert f"torch=={setup_pin}" in torch_install
    # torchvision 0.N pairs with torch 2.(N-15): 0.15 <-> 2.0, ..., 0.28 <-> 2.13.
    torch_minor = int(setup_pin.split(".")[1])
    assert f"torchvision=={ARGS['TORCHVISION_VERSION']}" in torch_install
    assert ARGS["TORCHVISION_VERSION"].startswith(f"0.{torch_minor + 15}.")


def test_requirements_are_constrained_to_the_installed_torch():
    installs = pip_installs()
    locked = next(words for words in installs if "requirements.txt" in words)
    constraint_file = locked[locked.index("-c") + 1]
    # the constraints file is written from TORCH_VERSION right after torch is installed
    writes = [c for c in run_commands() if constraint_file in c and "echo" in c]
    assert writes and f'echo "torch==${{TORCH_VERSION}}" > {constraint_file}' in writes[0]


def test_nothing_is_built_and_the_only_compiler_is_tritons():
    for words in pip_installs():
        if words[:2] == ["-q", "pip==24.3.1"]:
            continue  # pip itself (a wheel), before anything else
        assert "--only-binary=:all:" in words, words
    # torch.compile's Triton builds its kernel launchers at run time: a C compiler and Python's headers.
    triton_needs = {"gcc", "libc6-dev", "python3.11-dev"}
    compilers = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cmake|make|ninja-build|[\w.+-]+-dev)\b")
    installed = set()
    for command in run_commands():
        if "apt-get install" in command:
            found = {match.group(0) for match in compilers.finditer(command)}
            assert found <= triton_needs, command
            installed |= found
    assert installed == triton_needs


# ---------------------------------------------------------------- COPY and .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching (Go filepath.Match plus `**`), anchored at the context root."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignored(path: str, patterns: list[str] | None = None) -> bool:
    """Whether `path` (relative to the repo) is left out of the build context: a pattern matching the path
    or one of its parent folders excludes it; a later `!pattern` takes it back."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns if patterns is not None else dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern[1:] if negate else pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def test_ignore_matcher_follows_docker_rules():
    assert ignored("a/__pycache__/x.pyc", ["**/__pycache__/"])
    assert ignored("x.pyc", ["**/*.pyc"])
    assert ignored("tests/tools/node_modules/pkg/index.js", ["**/node_modules/"])
    assert not ignored("docs/x.md", ["*.md"])  # without **, a pattern is anchored at the root
    assert ignored("README.md", ["*.md"])
    assert not ignored("keep.md", ["*.md", "!keep.md"])


def copy_sources() -> list[str]:
    sources = []
    for ins in FINAL:
        if ins.keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            assert not ins.args.startswith("--from"), "single stage: nothing is copied from a build stage"
            sources += words[:-1]
    return sources


def test_every_copy_source_exists_and_reaches_the_build():
    sources = copy_sources()
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_the_worker_code_is_copied():
    """Every top-level package the worker imports, and the files it reads at run time, are in the image."""
    copied = {Path(s).parts[0].rstrip("/") for s in copy_sources()}
    for needed in ("handler.py", "serve.py", "test_input.json", "pipeline", "models", "utils", "localserver", "schemas"):
        assert needed in copied, needed
    sources = [REPO / "handler.py", REPO / "serve.py"]
    sources += [path for folder in ("pipeline", "models", "utils", "localserver") for path in (REPO / folder).rglob("*.py")]
    imported = {name for path in sources for name in re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M)}
    local = {name for name in imported if (REPO / name).is_dir() or (REPO / f"{name}.py").is_file()}
    modules = {name.removesuffix(".py") for name in copied}
    assert local <= modules, f"imported by the worker but not copied into the image: {local - modules}"


def test_dockerignore_keeps_local_state_and_test_data_out():
    for path in (
        ".venv/bin/python",
        ".venv-blender/bin/python",
        ".venv-blender-lts/bin/python",
        "outputs/job/model.glb",
        "local_upload/x.glb",
        "tests/tools/node_modules/gltf-validator/index.js",
        "tests/data/stanford-bunny.obj",
        "bench/cpu_job.py",
        ".git/HEAD",
        "pipeline/__pycache__/run.cpython-311.pyc",
    ):
        assert ignored(path), path
    for path in ("handler.py", "pipeline/run.py", "requirements.txt", "examples/lantern.png", "schemas"):
        assert not ignored(path), path


# ---------------------------------------------------------------- --build-arg MODELS=...

FAKE_HUB = '''
"""Stand-in for the Hugging Face hub: hf_hub_download writes a small valid file where the real one would
land (local_dir/filename) and records the call; then `python -m models.download ...` runs for real."""
import json, os, runpy, sys
from pathlib import Path

import huggingface_hub
import numpy as np
import yaml
from safetensors.numpy import save_file

LOG = Path(os.environ["FAKE_HUB_LOG"])


def hf_hub_download(*, repo_id, filename, revision, local_dir):
    path = Path(local_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if filename.endswith(".safetensors"):
        save_file({"w": np.zeros((2, 2), dtype=np.float16)}, str(path))
    else:
        sections = ("model", "vae", "conditioner", "scheduler", "image_processor", "params")
        path.write_text(yaml.safe_dump({"target": "x.Y", **{s: {} for s in sections}}))
    with LOG.open("a") as log:
        log.write(json.dumps({"repo_id": repo_id, "filename": filename, "revision": revision,
                              "offline": os.environ.get("HF_HUB_OFFLINE")}) + "\\n")
    return str(path)


huggingface_hub.hf_hub_download = hf_hub_download
assert sys.argv[1] == "-m", sys.argv
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


def download_step() -> str:
    (command,) = [c for c in run_commands() if "models.download ${MODELS}" in c]
    return command


def run_download_step(tmp_path: Path, models: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the Dockerfile's download RUN line under sh as the builder would: ENV and ARG values in the
    environment, `python` on PATH (here: the test interpreter with the stand-in hub)."""
    shim = tmp_path / "fake_hub.py"
    shim.write_text(FAKE_HUB)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shim}" "$@"\n')
    python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(env_defaults(FINAL))  # HF_HUB_OFFLINE=1, MODELS_DIR, ... as in the image
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        MODELS_DIR=str(tmp_path / "models"),
        MODELS=models,
        FAKE_HUB_LOG=str(tmp_path / "calls.jsonl"),
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.run(["sh", "-c", download_step()], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    log = tmp_path / "calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_download_step_is_online_only_for_itself():
    assert "HF_HUB_OFFLINE=0 python -m models.download ${MODELS}" in download_step()
    assert env_defaults(FINAL)["HF_HUB_OFFLINE"] == "1"
    assert ARGS["MODELS"] == ""


@pytest.mark.parametrize("models", ["hunyuan3d-2", "hunyuan3d-2-turbo hunyuan3d-2mv"])
def test_build_arg_models_fetches_exactly_their_files(tmp_path, models):
    proc, calls = run_download_step(tmp_path, models)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    specs = []
    for name in models.split():
        specs += [spec for spec in with_requirements(name) if spec not in specs]
    expected = {(s.repo_id, f"{s.subfolder}/{f}", s.revision) for s in specs for f in s.files}
    assert {(c["repo_id"], c["filename"], c["revision"]) for c in calls} == expected
    assert len(calls) == len(expected)
    assert not any(c["filename"].endswith(".ckpt") for c in calls)
    assert {c["offline"] for c in calls} == {"0"}  # the image's HF_HUB_OFFLINE=1 is lifted for this step only
    for spec in specs:
        for name in spec.files:
            path = tmp_path / "models" / spec.org / spec.repo / spec.subfolder / name
            assert path.is_file() and path.stat().st_size > 0, path


def test_without_build_arg_nothing_is_fetched(tmp_path):
    proc, calls = run_download_step(tmp_path, "")
    assert proc.returncode == 0, proc.stderr
    assert calls == [] and not (tmp_path / "models").exists()


def test_unknown_model_fails_the_build(tmp_path):
    proc, calls = run_download_step(tmp_path, "hunyuan3d-7")
    assert proc.returncode != 0 and calls == []
    assert "unknown model" in proc.stderr
