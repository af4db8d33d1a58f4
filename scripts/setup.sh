#!/usr/bin/env bash
# Sets up the worker on a fresh machine: .venv with torch first, then the pinned requirements.
#   bash scripts/setup.sh          # the worker
#   bash scripts/setup.sh --dev    # + test tools: pytest, moto, Khronos glTF-Validator (npm), Blender (bpy venvs)
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0; add --index-url via TORCH_PIP_ARGS for CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (bpy and the pinned wheels)"'

step() { printf '\n==> %s\n' "$*"; }

step "virtual environment .venv"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip==24.3.1

step "torch first (${TORCH_SPEC:-torch==2.13.0})"
# shellcheck disable=SC2086
"${PIP[@]}" install -q "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_PIP_ARGS:-}
TORCH_VERSION=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
# Every later install is constrained to the torch we just installed, so nothing replaces it.
echo "torch==${TORCH_VERSION}" > .venv/constraints.txt

step "pinned requirements"
"${PIP[@]}" install -q -c .venv/constraints.txt -r requirements.txt
"${PIP[@]}" install -q --no-deps -r requirements-nodeps.txt

if [[ $DEV == 1 ]]; then
  step "test requirements"
  "${PIP[@]}" install -q -c .venv/constraints.txt -r requirements-dev.txt

  step "Khronos glTF-Validator (npm, pinned in tests/tools/package-lock.json)"
  (cd tests/tools && npm ci --no-audit --no-fund --loglevel=error)

  # The addon tests run in each: the newest Blender and 4.2 LTS, the oldest the addon supports.
  for pair in ".venv-blender:requirements-blender.txt" ".venv-blender-lts:requirements-blender-lts.txt"; do
    venv=${pair%%:*} requirements=${pair#*:}
    step "Blender as a Python module ($venv from $requirements; it pins its own numpy, so it lives apart)"
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check install -q -r "$requirements"
  done
fi

step "check"
.venv/bin/python -c 'import torch, numpy, trimesh, xatlas, pygltflib, runpod, boto3; print("torch", torch.__version__, "| numpy", numpy.__version__)'
echo "setup done"
