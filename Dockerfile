# MiniSora CUDA image. The repo is mounted at /workspace at run time (see train.sh), not copied.
# torch==2.14.1 from PyPI on x86_64 Linux is a CUDA build: it carries its CUDA/cuDNN/NCCL libraries,
# so a slim base + the NVIDIA container toolkit on the host (`--gpus all`) is all a GPU run needs.
FROM python:3.11-slim

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg git build-essential \
    && rm -rf /var/lib/apt/lists/*

COPY requirements.txt /tmp/requirements.txt
RUN pip install --upgrade pip && pip install -r /tmp/requirements.txt
# Optional fused kernels for GPUs (Mamba selective scan); the code falls back to pure PyTorch without them.
ARG WITH_MAMBA_KERNELS=0
RUN if [ "$WITH_MAMBA_KERNELS" = "1" ]; then pip install --no-build-isolation mamba-ssm causal-conv1d; fi

WORKDIR /workspace
