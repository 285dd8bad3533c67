"""bench/gpu_check.sh, the script a lent GPU machine runs (issue 20), checked on the CPU with small
settings, so that a GPU lease is never spent finding a broken script: it times a ROME edit, a
MEMIT batch and a causal trace on the demo and on random weights of a shape, in bfloat16, with the
plan beside each peak, and prints the plan's table. (Its first CPU run found the causal trace of
a bfloat16 model broken: tests/test_trace.py now holds that.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_through_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SHAPE": "smollm2-135m", "MEMIT_BATCH": "2",
           "TIMING_ARGS": "--steps 1 --stats-tokens 256", "SKIP_SUITE": "1", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    reports = list((tmp_path / "out").glob("gpu_check-*.txt"))
    assert len(reports) == 1
    text = reports[0].read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [r["model"] for r in rows] == ["demo", str(tmp_path / "work" / "smollm2-135m")]
    for r in rows:
        assert r["dtype"] == "bfloat16" and r["device"] == "cpu" and r["memit_batch"] == 2
        assert r["rome_status"] in ("applied", "rejected") and r["memit_status"] in ("applied", "rejected")
        assert 0 < r["rome_plan_peak"] < r["memit_plan_peak"] and r["trace_s"] > 0
    assert "| llama-3.1-70b | bfloat16 | memit |" in text  # the plan's table
    assert not list(tmp_path.glob("out/*/")) and not (ROOT / "bench" / "results" / reports[0].name).exists()
