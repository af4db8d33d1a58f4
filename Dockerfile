# syntax=docker/dockerfile:1
# The img2asset RunPod worker. Build, test and deploy: DEPLOYMENT_CHECKLIST.md.
#
#   docker build -t img2asset:1.0.0 .                                      # weights from a volume or the HF cache
#   docker build -t img2asset:1.0.0 --build-arg MODELS="hunyuan3d-2" .     # weights baked into the image
#
# Nothing is built at install time: every Python package is installed from a binary wheel
# (--only-binary=:all:). The image carries a C compiler and Python's headers for one run-time job only:
# Triton, behind torch.compile of the shape DiT (TORCH_COMPILE, on by default), builds its small kernel
# launchers with them when the worker warms up. torch's wheels carry their own CUDA user-space libraries and cuDNN, so the base
# is NVIDIA's small "base" flavour: it wires the host driver into the container (NVIDIA_* variables) and,
# through NVIDIA_REQUIRE_CUDA, refuses to start on a host whose driver is too old for its CUDA version.

# torch==2.13.0 on PyPI is built for CUDA 13.0 (cuda-toolkit 13.0.3, cuDNN 9.20 as wheels): host driver >= 580.
# For hosts with CUDA 12.x drivers, build with a matching pair, e.g.
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu22.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV DEBIAN_FRONTEND=noninteractive

# Python 3.11 from deadsnakes (22.04's own 3.11 is a release candidate), and the shared libraries the wheels
# load: libGL/libOpenGL/fontconfig/freetype/png for pymeshlab, glib for OpenCV, libgomp for OpenMP; gcc,
# libc6-dev and python3.11-dev for Triton's launchers (above).
# software-properties-common is only needed to add the PPA and is removed in the same layer.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc libc6-dev \
        libgl1 libopengl0 libglib2.0-0 libgomp1 libfontconfig1 libfreetype6 libpng16-16 \
    && apt-get purge -y --auto-remove software-properties-common gpg-agent \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The same installs as scripts/setup.sh (which CI runs): torch first, then the one lock file constrained to
# that torch, then hy3dgen without its unused gradio/rembg dependencies.
COPY requirements.txt requirements-nodeps.txt ./
RUN python -m pip install -q pip==24.3.1 \
    && python -m pip install --only-binary=:all: --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/venv/constraints.txt \
    && python -m pip install --only-binary=:all: -c /opt/venv/constraints.txt -r requirements.txt \
    && python -m pip install --only-binary=:all: --no-deps -r requirements-nodeps.txt

# Runtime defaults; every one can be overridden in the RunPod endpoint's environment (README: Configuration).
ENV PYTHONUNBUFFERED=1 \
    RUNPOD_LOG_LEVEL=INFO \
    HF_HUB_OFFLINE=1 \
    MODELS_DIR=/models \
    PRELOAD_MODELS="hunyuan3d-2 hunyuan3d-paint"

# Weights baked at build time (optional): --build-arg MODELS="hunyuan3d-2 hunyuan3d-2-turbo". Only the model
# registry is copied first, so code changes below do not re-download the weights.
COPY models/ models/
ARG MODELS=""
RUN if [ -n "${MODELS}" ]; then HF_HUB_OFFLINE=0 python -m models.download ${MODELS}; fi

COPY handler.py serve.py test_input.json ./
COPY pipeline/ pipeline/
COPY utils/ utils/
COPY localserver/ localserver/
COPY schemas/ schemas/
COPY scripts/make_request.py scripts/make_request.py
COPY examples/ examples/

# Fail the build, not the first job, when a wheel does not import on this base.
RUN python -c "import torch, torchvision, numpy, trimesh, xatlas, pygltflib, pymeshlab, cv2, runpod, boto3; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && python -c "from models.torchvision_compat import import_shapegen; import_shapegen()" \
    && python -m models.download --list

CMD ["python", "-u", "handler.py"]
