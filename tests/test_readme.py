"""The README's commands work as written, so the docs cannot rot.

Every ```bash block of README.md runs, in order, from the root of a fresh copy of the repository (the venvs
linked in), as one `bash -euo pipefail` script per block. A command that needs what a test machine does not
have (Docker, a RunPod endpoint, a GPU, weights from the network, minutes of installing) is skipped by the
SKIP list below, each rule with its reason; every other command must succeed. `a && b` chains are split, so
`bash scripts/setup.sh && .venv/bin/python handler.py` still runs the worker. The curl block runs against a
serve.py this test starts on a free port (the README's `127.0.0.1:8000` is rewritten to it).

Also checked here: the links of the Markdown documents lead to files that exist, the deployment checklist
defines every variable it uses, each licence appears as models/registry.py writes it, and the committed
preview pictures stay small.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from models.registry import HUNYUAN_LICENCE, REGISTRY
from tests.helpers import REPO
from tests.serve_process import running_server

README = REPO / "README.md"
DOCS = [README, REPO / "DEPLOYMENT_CHECKLIST.md", REPO / "blender_addon" / "README.md", REPO / "docs" / "CONTRACT.md",
        REPO / "BENCHMARKS.md", REPO / "examples" / "README.md"]
LINKED_IN = (".venv", ".venv-blender", ".venv-blender-lts", "tests/tools/node_modules")  # set-up's products
BLOCK_SECONDS = 600

# (pattern searched in one command, why it is not run here). Every rule must still match some command.
SKIP: list[tuple[str, str]] = [
    (r"^bash scripts/setup\.sh", "installs the venvs from the network (minutes, ~4 GB); these tests run in the "
                                 "set-up it made"),
    (r"^bash scripts/test\.sh$", "the whole suite (~25 min on 2 cores), which this test is part of"),
    (r"^docker ", "needs Docker and an NVIDIA GPU"),
    (r"\$RUNPOD_API_KEY|\$ENDPOINT_ID|api\.runpod\.ai", "needs a RunPod endpoint and its API key"),
    (r"models\.download (?!--list)", "downloads model weights from the Hugging Face hub (GBs)"),
    (r"serve\.py --host", "a server that runs until stopped (the curl block runs against one this test starts)"),
]
BLENDER_PYTHON = ".venv-blender/bin/python"


@dataclass
class Block:
    line: int  # of the ```bash fence in README.md
    commands: list[str]  # logical commands, `&&` chains split, comment lines dropped
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (command, reason)

    @property
    def runnable(self) -> list[str]:
        skipped = {command for command, _ in self.skipped}
        return [command for command in self.commands if command not in skipped]


def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the fence, code) of each ```bash block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def logical_commands(code: str) -> list[str]:
    """Lines joined where they end in a backslash; comment-only and blank lines dropped."""
    commands, current = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        commands.append((current + line).strip())
        current = ""
    if current:
        commands.append(current.strip())
    return commands


def split_and(command: str) -> list[str]:
    """`a && b` -> [a, b], at the top level only (not inside quotes or $( ... ))."""
    parts, start, depth, quote, i, end = [], 0, 0, "", 0, len(command)
    while i < len(command):
        c = command[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif command.startswith("$(", i):
            depth += 1
            i += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == "#" and (i == 0 or command[i - 1] in " \t") and not depth:
            end = i  # a trailing comment: nothing after it is a command
            break
        elif command.startswith("&&", i) and not depth:
            parts.append(command[start:i].strip())
            start = i + 2
            i += 1
        i += 1
    parts.append(command[start:end].strip())
    return [p for p in parts if p]


def parse(text: str) -> list[Block]:
    blocks = []
    for line, code in bash_blocks(text):
        block = Block(line, [part for command in logical_commands(code) for part in split_and(command)])
        for command in block.commands:
            for pattern, reason in SKIP:
                if re.search(pattern, command):
                    block.skipped.append((command, reason))
                    break
            else:
                if command.startswith(BLENDER_PYTHON) and not (REPO / BLENDER_PYTHON).exists():
                    block.skipped.append((command, "needs .venv-blender (bash scripts/setup.sh --dev)"))
        blocks.append(block)
    return blocks


def _copy_repo(dest: Path) -> Path:
    """The repository's files as git sees them (tracked and new, not ignored), with the venvs linked in."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO / rel
        if source.is_file() and not source.is_symlink():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    for rel in LINKED_IN:
        if (REPO / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to((REPO / rel).resolve(), target_is_directory=True)
    return dest


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("S3_", "AWS_", "BUCKET_", "RUNPOD_")) and k not in ("STORAGE", "LOCAL_OUTPUT_DIR",
                                                                                   "SERVE_TOKEN", "PRELOAD_MODELS")}
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1", "MAX_SECONDS": "300",
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", "HOME": str(home)})
    return env


def test_the_parser_splits_runs_and_skips() -> None:
    text = "x\n```bash\n# a comment\nbash scripts/setup.sh && .venv/bin/python handler.py   # run it\n" \
           "A=$(echo 'a && b' \\\n   | cat) && echo \"$A\"\ndocker build .\n```\n"
    [block] = parse(text)
    assert block.line == 2
    assert block.commands == ["bash scripts/setup.sh", ".venv/bin/python handler.py",
                              "A=$(echo 'a && b'     | cat)", 'echo "$A"', "docker build ."]
    assert [c for c, _ in block.skipped] == ["bash scripts/setup.sh", "docker build ."]
    assert block.runnable == [".venv/bin/python handler.py", "A=$(echo 'a && b'     | cat)", 'echo "$A"']


def test_a_failing_command_fails_its_block(tmp_path: Path) -> None:
    result = _run("true\nfalse\necho after", tmp_path, _env(tmp_path))
    assert result.returncode != 0 and "after" not in result.stdout
    result = _run("echo x | false | cat\necho after", tmp_path, _env(tmp_path))  # inside a pipe too
    assert result.returncode != 0 and "after" not in result.stdout


def test_every_readme_command_block_runs(tmp_path: Path) -> None:
    blocks = parse(README.read_text())
    assert blocks, "README.md has no ```bash block"
    for pattern, reason in SKIP:
        assert any(reason == r for b in blocks for _, r in b.skipped), f"stale SKIP rule {pattern!r}: matches nothing"
    root = _copy_repo(tmp_path / "repo")
    env = _env(tmp_path)
    report = []
    for block in blocks:
        for command, reason in block.skipped:
            report.append(f"README.md:{block.line}: skipped ({reason}): {command[:90]}")
        if not block.runnable:
            continue
        script = "\n".join(block.runnable)
        if "$BASE" in script:  # the endpoint API block: against a real serve.py, with a token
            with running_server(tmp_path / "serve", token="readme-token") as server:
                port = server.url.rsplit(":", 1)[1]
                result = _run(script.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), root,
                              {**env, "SERVE_TOKEN": "readme-token"})
        else:
            result = _run(script, root, env)
        assert result.returncode == 0, (
            f"README.md:{block.line}: a command block failed (exit {result.returncode}):\n{script}\n"
            f"--- output (end) ---\n{result.stdout[-6000:]}")
        report.append(f"README.md:{block.line}: ran {len(block.runnable)} command(s)")
    print("\n".join(report))
    # What the first screen promises: the bundle in ./outputs/local_test/, and the other picture's too.
    assert (root / "outputs" / "local_test" / "meta.json").is_file()
    assert (root / "job.json").stat().st_size > 128 * 1024  # over the argv cap: --test_input_file carried it


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=BLOCK_SECONDS)


# --- the other documents ----------------------------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_links_lead_to_files_that_exist(doc: Path) -> None:
    text = doc.read_text()
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", README.read_text(), flags=re.M)}
    for match in _LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (doc.parent / path).exists(), f"{doc.name}: link to {target}: no such file"
        if anchor and (not path or (doc.parent / path).resolve() == README.resolve()):
            assert anchor in anchors, f"{doc.name}: link to {target}: README.md has no such heading"
    assert "docs/LOCAL_AND_BLENDER.md" not in text or (REPO / "docs" / "LOCAL_AND_BLENDER.md").exists()


def test_the_checklist_defines_every_variable_it_uses() -> None:
    text = (REPO / "DEPLOYMENT_CHECKLIST.md").read_text()
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
    defined = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", text))  # export NAME=, NAME=..., deploy.env lines
    worker_settings = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", README.read_text()))  # the README's variables
    missing = used - defined - worker_settings - {"PWD", "HOME"}
    assert not missing, f"DEPLOYMENT_CHECKLIST.md uses variables it never defines: {sorted(missing)}"


def test_each_licence_is_shown_as_the_registry_writes_it() -> None:
    readme = README.read_text()
    for spec in REGISTRY.values():
        if spec.kind in ("shape", "paint", "segmentation", "multiview"):
            assert spec.licence in readme, f"README.md does not show {spec.name}'s licence as registry.py has it"
    assert HUNYUAN_LICENCE in (REPO / "DEPLOYMENT_CHECKLIST.md").read_text()
    for doc in DOCS:
        assert "Non-Commercial License" not in doc.read_text(), f"{doc.name}: a Hunyuan licence name of its own"


def test_preview_pictures_are_small() -> None:
    pictures = sorted((REPO / "docs" / "images").glob("*.png"))
    assert pictures
    for picture in pictures:
        assert picture.stat().st_size < 200 * 1024, f"{picture.name}: {picture.stat().st_size} bytes"
        assert f"docs/images/{picture.name}" in README.read_text(), f"{picture.name} is not shown in README.md"
