#!/usr/bin/env bash
# The GPU path, checked on a machine with CUDA (issue 20): one ROME edit, one MEMIT batch of 100
# and one causal trace on the demo and on a Llama-3.2-1B-class model (random weights of that
# shape), each with its peak GPU memory and the memory plan's prediction; the plan's table; then
# the test suite with the demo on the GPU. The figures come first: on a lent machine (the `device`
# tool: 15 minutes for everything, 10 a command) the suite is cut at SUITE_TIMEOUT seconds.
# The report goes to $OUT (the device tool brings it back) or bench/results/: commit it under
# bench/results/.
#
#   bash bench/gpu_check.sh                        # everything
#   SKIP_SUITE=1 bash bench/gpu_check.sh           # the figures only
#   SUITE_TIMEOUT=240 bash bench/gpu_check.sh      # the suite for at most 4 minutes (default 300)
#   PYTHON=/path/to/python bash bench/gpu_check.sh
#
# On a lent machine: bench/gpu_kit.sh first (here), which brings the demo and the two wheels that
# machine lacks. The script's own check, on a CPU, with small settings (tests/test_gpu_check.py):
#
#   DEVICE=cpu SHAPE=smollm2-135m MEMIT_BATCH=3 TIMING_ARGS="--steps 2 --stats-tokens 256" SKIP_SUITE=1 \
#       bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} QT_QPA_PLATFORM=offscreen PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llama-3.2-1b}
MEMIT_BATCH=${MEMIT_BATCH:-100}
REPORTS=${OUT:-bench/results}
mkdir -p "$REPORTS"
REPORT=$REPORTS/gpu_check-$(date -u +%Y%m%dT%H%M%SZ).txt
WORK=${WORK:-$(mktemp -d)}

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible to torch')"
fi
{
  echo "# gpu_check $(date -u) on $(hostname), device $DEVICE"
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" -c "import sys, torch, transformers, accelerate; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$REPORT"

# a checkpoint of random weights of $SHAPE (bench/model_shapes.py) with the demo's tokenizer
"$PY" - "$WORK/$SHAPE" "$SHAPE" <<'PYEOF'
import sys
sys.path.insert(0, "bench")
from pathlib import Path
from bench_scale import make_checkpoint
make_checkpoint(sys.argv[2], Path(sys.argv[1]))
PYEOF

for model in demo "$WORK/$SHAPE"; do
  echo "## $model" | tee -a "$REPORT"
  # shellcheck disable=SC2086
  "$PY" bench/gpu_timings.py "$model" --device "$DEVICE" --dtype bfloat16 --memit-batch "$MEMIT_BATCH" \
    ${TIMING_ARGS:-} 2>&1 | grep -v "^Loading weights\|it/s\]$" | tee -a "$REPORT"
done
"$PY" bench/plan_table.py 2>&1 | tee -a "$REPORT"

if [ -z "${SKIP_SUITE:-}" ]; then
  # the session's demo fixture (tests/conftest.py) loads on this device; without PySide6 (a lent
  # GPU machine has none) the window's tests are left out
  ignore=()
  if ! "$PY" -c "import PySide6, pyqtgraph, pytestqt" 2>/dev/null; then
    while IFS= read -r f; do ignore+=(--ignore "$f"); done < <(grep -l "PySide6\|pytestqt\|qtbot\|from ui\|import ui" tests/test_*.py)
    echo "## suite without the window's tests (${#ignore[@]} arguments: no PySide6 here)" | tee -a "$REPORT"
  fi
  set +e
  EDIT_AUDITOR_TEST_DEVICE=$DEVICE timeout "${SUITE_TIMEOUT:-300}" "$PY" -m pytest -q -p no:cacheprovider \
    "${ignore[@]}" 2>&1 | tail -40 | tee -a "$REPORT"
  echo "suite exit status ${PIPESTATUS[0]} (124: cut at ${SUITE_TIMEOUT:-300} s)" | tee -a "$REPORT"
  set -e
fi
echo "wrote $REPORT"
