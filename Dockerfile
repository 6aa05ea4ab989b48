# syntax=docker/dockerfile:1
# The denoising service, two targets:
#   docker build --target gpu -t medical-denoise:gpu .   # CUDA runtime + onnxruntime-gpu (default target)
#   docker build --target cpu -t medical-denoise:cpu .   # python slim + onnxruntime (CPU)
# Both run as a non-root user, answer a HEALTHCHECK on /readyz, and serve the models baked in at
# /models; mount another folder there (-v "$PWD/models:/models:ro") to serve retrained ones
# without rebuilding. torch and the training code are never installed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- the project as a wheel (service code and the web viewer only) ---------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- CPU image ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DENOISE_MODELS_DIR=/models DENOISE_PROVIDERS=cpu
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin denoise
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/medical_denoise-*.whl)[cpu]"
COPY --chown=10001:10001 models /models
USER 10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
# Exec form: uvicorn (python -m app.server) is PID 1 and gets docker's / Kubernetes' SIGTERM
# itself. It stops accepting, lets requests in flight finish for up to 25 s, then drains the batch
# queues and exits; give the container a longer stop period (docker stop -t 30; Kubernetes' default
# is 30 s).
CMD ["python", "-m", "app.server", "--host", "0.0.0.0", "--port", "8000", \
     "--timeout-graceful-shutdown", "25"]

# --- GPU image (the default: last stage) -------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive PATH=/opt/venv/bin:$PATH \
    DENOISE_MODELS_DIR=/models DENOISE_PROVIDERS=cuda,cpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin denoise
# onnxruntime-gpu only: the CPU wheel installs the same module and must not sit beside it. Every
# package at the version deploy/gpu/constraints.txt locks (scripts/lock_gpu.py): onnxruntime-gpu
# built for this image's CUDA major (tests/deploy/test_gpu_runtime.py), the same build each time.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=bind,source=deploy/gpu/constraints.txt,target=/tmp/constraints.txt \
    pip install --constraint /tmp/constraints.txt "$(ls /wheels/medical_denoise-*.whl)[gpu]"
COPY --chown=10001:10001 models /models
USER 10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status != 200)"]
# Exec form: uvicorn (python -m app.server) is PID 1 and gets docker's / Kubernetes' SIGTERM
# itself. It stops accepting, lets requests in flight finish for up to 25 s, then drains the batch
# queues and exits; give the container a longer stop period (docker stop -t 30; Kubernetes' default
# is 30 s).
CMD ["python", "-m", "app.server", "--host", "0.0.0.0", "--port", "8000", \
     "--timeout-graceful-shutdown", "25"]
