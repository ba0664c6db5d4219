#!/usr/bin/env bash
# Installs the Triton runtime into the checkout, for local meshes and tests:
#   .venv-triton  nvidia-pytriton (ships a CPU-only tritonserver; pins numpy<2), onnxruntime (runs ONNX models
#                 inside python-backend models) and onnx (tests build tiny ONNX graphs with it)
#   .triton/      bin/, backends/, caches/ copied out of the pytriton wheel, plus the python-backend stub for
#                 Python 3.11 in backends/python/
# Everything comes from PyPI through pip; nothing else is downloaded.
# Idempotent: rebuilt only when this script or deploy/local/constraints-triton.txt change.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
CONSTRAINTS=deploy/local/constraints-triton.txt
# The top-level pins; the constraints file pins everything they pull in.
# onnxruntime 1.20 is built against numpy 2 yet runs with numpy 1.x, which pytriton requires.
PACKAGES=(nvidia-pytriton==0.7.0 onnxruntime==1.20.1 onnx==1.17.0)

fresh() {  # fresh <stamp> <inputs...>: true when the stamp is newer than every input
  local stamp=$1; shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do [ "$f" -nt "$stamp" ] && return 1; done
  return 0
}

if ! fresh .venv-triton/.installed deploy/local/setup-triton.sh "$CONSTRAINTS"; then
  echo "setup: Triton environment (.venv-triton)"
  [ -x .venv-triton/bin/python ] || "$PY" -m venv .venv-triton
  .venv-triton/bin/python -m pip install -q --upgrade pip
  constraint_args=()
  [ -f "$CONSTRAINTS" ] && constraint_args=(-c "$CONSTRAINTS")
  .venv-triton/bin/python -m pip install -q "${constraint_args[@]}" "${PACKAGES[@]}"
  touch .venv-triton/.installed
fi

if ! fresh .triton/.installed .venv-triton/.installed; then
  echo "setup: tritonserver binaries (.triton)"
  SITE=$(.venv-triton/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  SRC="$SITE/pytriton/tritonserver"
  STUB="$SITE/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
  [ -x "$SRC/bin/tritonserver" ] || { echo "setup: no tritonserver in $SRC" >&2; exit 1; }
  [ -f "$STUB" ] || { echo "setup: no python-backend stub at $STUB" >&2; exit 1; }
  rm -rf .triton.tmp
  mkdir -p .triton.tmp
  cp -a "$SRC/bin" "$SRC/backends" "$SRC/caches" .triton.tmp/
  cp -a "$STUB" .triton.tmp/backends/python/
  # Where the libraries tritonserver links against live (LD_LIBRARY_PATH for the launcher).
  echo "$SITE/nvidia_pytriton.libs" > .triton.tmp/ld-library-path
  rm -rf .triton
  mv .triton.tmp .triton
  touch .triton/.installed
fi
