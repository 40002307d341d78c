#!/usr/bin/env bash
# The one command on the GPU machine (after `make gpu-carry` here, call the device tool with carry ['.carry']):
#   bash bench/gpu/run.sh
# Installs TVM's runtime from .carry into /tmp, then runs bench/gpu/check.py; results land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
test -f .carry/gpu/manifest.json || { echo "run.sh: .carry/gpu is missing; run 'make gpu-carry' first" >&2; exit 2; }
PY="${PYTHON:-python3}"
site=$(mktemp -d /tmp/llmc-site.XXXX)
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  "$PY" -m pip install -q --no-index --no-deps --target "$site" .carry/whl/*.whl
else  # a CPU rehearsal with another Python: its own tvm_ffi, the carried TVM runtime
  echo "run.sh: $("$PY" -V) is not 3.12; using its installed tvm_ffi/ml_dtypes/tqdm" >&2
fi
tar -C "$site" -xzf .carry/tvm_rt.tgz
export PYTHONPATH="$site:$PWD"
out="${OUT:-/tmp/llmc-gpu-out}"
mkdir -p "$out"
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1
"$PY" -c "import tvm, sys; print('tvm', tvm.__version__, 'runtime-only' if 'tvm.relax' not in sys.modules else '')"
"$PY" bench/gpu/check.py --carry .carry/gpu --out "$out" "$@" 2>&1 | tee "$out/check.log"
