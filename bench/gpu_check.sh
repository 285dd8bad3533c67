#!/usr/bin/env bash
# The GPU path, checked on a machine with CUDA (issue 20): the test suite with the demo on the GPU,
# then one ROME edit, one MEMIT batch of 100 and one causal trace on the demo and on a
# Llama-3.2-1B-class model (random weights of that shape), each with its peak GPU memory and the
# memory plan's prediction. Everything goes to bench/results/gpu_check-<UTC time>.txt: commit it.
#
#   bash bench/gpu_check.sh                 # everything (about 30-60 minutes on one GPU)
#   SKIP_SUITE=1 bash bench/gpu_check.sh    # the timings only
#   PYTHON=/path/to/python bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD QT_QPA_PLATFORM=offscreen
mkdir -p bench/results
OUT=bench/results/gpu_check-$(date -u +%Y%m%dT%H%M%SZ).txt
WORK=${WORK:-$(mktemp -d)}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible to torch')"
{
  echo "# gpu_check $(date -u) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
} | tee "$OUT"

if [ -z "${SKIP_SUITE:-}" ]; then
  # the session's demo fixture (tests/conftest.py) loads on this device; slow tests included
  EDIT_AUDITOR_TEST_DEVICE=cuda "$PY" -m pytest -q -x -p no:cacheprovider 2>&1 | tail -5 | tee -a "$OUT"
fi

# a Llama-3.2-1B-class checkpoint of random weights (bench/model_shapes.py), made once
"$PY" - "$WORK/llama-3.2-1b" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
from pathlib import Path
from bench_scale import make_checkpoint
make_checkpoint("llama-3.2-1b", Path(sys.argv[1]))
PYEOF

for model in demo "$WORK/llama-3.2-1b"; do
  echo "## $model" | tee -a "$OUT"
  "$PY" bench/gpu_timings.py "$model" --device cuda --dtype bfloat16 --memit-batch 100 | tee -a "$OUT"
done
"$PY" bench/plan_table.py | tee -a "$OUT"
echo "wrote $OUT"
