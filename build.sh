#!/usr/bin/env bash
# Build the MiniSora environment.
#   - docker daemon reachable  -> docker build -t ${MINISORA_IMAGE:-minisora} .
#   - otherwise                -> .venv with requirements.txt (idempotent: skipped when unchanged)
# Force the venv path with MINISORA_NO_DOCKER=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
IMAGE="${MINISORA_IMAGE:-minisora}"

if [ "${MINISORA_NO_DOCKER:-0}" != "1" ] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "[build.sh] docker daemon found: building image '$IMAGE'"
  exec docker build -t "$IMAGE" "$ROOT"
fi

PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[build.sh] .venv is up to date ($VENV)"
  exit 0
fi
echo "[build.sh] no docker daemon: installing requirements into $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
echo "$want" > "$STAMP"
echo "[build.sh] done: $VENV"
