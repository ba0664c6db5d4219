#!/bin/sh
# tritonserver with the libraries and backends setup-triton.sh put in place; arguments pass through.
set -eu
root=/opt/modelmesh-py
export LD_LIBRARY_PATH="$(cat "$root/.triton/ld-library-path")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$root/.triton/bin/tritonserver" --backend-directory="$root/.triton/backends" "$@"
