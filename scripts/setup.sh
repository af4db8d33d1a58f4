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

STARTED=$SECONDS
step() { printf '\n==> [%d:%02d] %s\n' $(((SECONDS - STARTED) / 60)) $(((SECONDS - STARTED) % 60)) "$*"; }
# One line per package fetched, so a long download is visibly moving (pip -q is silent for minutes); pip's
# errors and warnings still reach stderr unfiltered.
pip_lines() {
  awk '/^Collecting /{print "    " $0; fflush()}
       /^Installing collected packages/{n = split($0, a, ","); print "    installing " n " package(s) ..."; fflush()}'
}
pip_install() { "${PIP[@]}" install --progress-bar off "$@" | pip_lines; }

step "virtual environment .venv (the worker; a few minutes)"
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip==24.3.1

step "torch first (${TORCH_SPEC:-torch==2.13.0}; the largest download)"
# shellcheck disable=SC2086
pip_install "${TORCH_SPEC:-torch==2.13.0}" ${TORCH_PIP_ARGS:-}
# The installed version from its metadata: importing torch before numpy is installed warns "Failed to
# initialize NumPy".
TORCH_VERSION=$(.venv/bin/python -c 'from importlib.metadata import version; print(version("torch").split("+")[0])')
# Every later install is constrained to the torch we just installed, so nothing replaces it.
echo "torch==${TORCH_VERSION}" > .venv/constraints.txt

step "pinned requirements (requirements.txt, requirements-nodeps.txt)"
pip_install -c .venv/constraints.txt -r requirements.txt
pip_install --no-deps -r requirements-nodeps.txt

if [[ $DEV == 1 ]]; then
  step "test requirements (requirements-dev.txt)"
  pip_install -c .venv/constraints.txt -r requirements-dev.txt

  step "Khronos glTF-Validator (npm, pinned in tests/tools/package-lock.json)"
  (cd tests/tools && npm ci --no-audit --no-fund --loglevel=error)

  # The addon tests run in each: the newest Blender and 4.2 LTS, the oldest the addon supports.
  for pair in ".venv-blender:requirements-blender.txt" ".venv-blender-lts:requirements-blender-lts.txt"; do
    venv=${pair%%:*} requirements=${pair#*:}
    step "Blender as a Python module ($venv from $requirements, about 1 GB; it pins its own numpy, so it lives apart)"
    [[ -x $venv/bin/python ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip --disable-pip-version-check install --progress-bar off -r "$requirements" | pip_lines
  done
fi

step "check"
VERSIONS=$(.venv/bin/python -c 'import torch, numpy, trimesh, xatlas, pygltflib, runpod, boto3; print("torch", torch.__version__, "| numpy", numpy.__version__)')
echo "    $VERSIONS"
SIZES=".venv $(du -sh .venv | cut -f1)"
if [[ $DEV == 1 ]]; then
  for dir in .venv-blender .venv-blender-lts tests/tools/node_modules; do
    SIZES+=", $dir $(du -sh "$dir" | cut -f1)"
  done
fi
echo "setup done in $(((SECONDS - STARTED) / 60)) min $(((SECONDS - STARTED) % 60)) s: $([[ $DEV == 1 ]] && echo "worker + test tools" || echo "worker") ($VERSIONS): $SIZES"
