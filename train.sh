#!/usr/bin/env bash
# Run a MiniSora command:  bash train.sh python <script>.py [flags...]
#
# - docker daemon reachable: runs in the `minisora` image (built by build.sh if missing) with all GPUs,
#   the repo mounted at /workspace (so data/ and runs/ are shared), ~/.cache/huggingface mounted, and
#   WANDB_API_KEY / WANDB_MODE / HF_TOKEN / HF_HUB_OFFLINE passed through.
# - otherwise: runs in the local .venv (bash build.sh first if needed).
# Commands run from the repo root, whatever the current directory. MINISORA_NO_DOCKER=1 forces the venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IMAGE="${MINISORA_IMAGE:-minisora}"
if [ $# -eq 0 ]; then
  echo "usage: bash train.sh <command ...>   e.g. bash train.sh python train_vqvae.py --help" >&2
  exit 2
fi

if [ "${MINISORA_NO_DOCKER:-0}" != "1" ] && command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
  docker image inspect "$IMAGE" >/dev/null 2>&1 || bash "$ROOT/build.sh"
  gpu_args=()
  if docker info 2>/dev/null | grep -qi nvidia || command -v nvidia-smi >/dev/null 2>&1; then gpu_args=(--gpus all); fi
  mkdir -p "$HOME/.cache/huggingface"
  tty_args=(); [ -t 0 ] && [ -t 1 ] && tty_args=(-it)
  exec docker run --rm "${tty_args[@]}" "${gpu_args[@]}" --shm-size 16G --ipc=host \
    -v "$ROOT":/workspace -w /workspace \
    -v "$HOME/.cache/huggingface":/root/.cache/huggingface \
    -e PYTHONUNBUFFERED=1 -e WANDB_API_KEY -e WANDB_MODE -e WANDB_ENTITY -e HF_TOKEN -e HF_HUB_OFFLINE \
    -e CUDA_VISIBLE_DEVICES \
    "$IMAGE" "$@"
fi

bash "$ROOT/build.sh" >&2
# shellcheck disable=SC1091
source "$ROOT/.venv/bin/activate"
cd "$ROOT"
export PYTHONUNBUFFERED=1
exec "$@"
