"""One ROME edit, one MEMIT batch, one causal trace on a model, with peak device memory and the
memory plan's prediction beside it: the timing half of ``bench/gpu_check.sh``.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` (reset before each step); on the CPU
(``--device cpu``, to check that the script runs) it is the process's peak RSS.

    python bench/gpu_timings.py demo --device cuda --dtype bfloat16 --memit-batch 100
    python bench/gpu_timings.py ./random-1b --device cuda --dtype bfloat16
    python bench/gpu_timings.py ./tiny --device cpu --memit-batch 3 --steps 2 --stats-tokens 256   # a check
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from auditor.measure.trace import Tracer
from auditor.model.checkpoint import load_model, resolve_checkpoint
from auditor.model.memory_plan import plan_memory
from auditor.model.requests import load_requests
from auditor.run.batch import edit_batch
from auditor.run.edit import Editor

REQUESTS = Path(__file__).resolve().parent.parent / "tests" / "data" / "counterfact_100.json"


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def timed(device: torch.device, fn) -> tuple[object, float, int]:
    reset(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t, peak_bytes(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--memit-batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=None, help="v* steps (default: the hyper-parameters')")
    p.add_argument("--stats-tokens", type=int, default=None, help="tokens behind C (default: the hyper-parameters')")
    args = p.parse_args()
    folder = resolve_checkpoint(args.model)
    device = torch.device(args.device)
    lm, load_s, load_peak = timed(device, lambda: load_model(folder, dtype=args.dtype, device=args.device))
    hp = {k: v for k, v in {"v_num_grad_steps": args.steps, "mom2_n_tokens": args.stats_tokens}.items() if v}
    requests = load_requests(REQUESTS)
    editor = Editor(lm)
    out: dict = {"model": args.model, "device": str(lm.device), "dtype": args.dtype, "load_s": load_s,
                 "load_peak": load_peak, "parameters": lm.n_parameters()}
    # statistics are computed (and cached) by a first edit, so that the timings below are the edit's own
    editor.edit(requests[0], hparams=hp, measure_ppl=False, dry_run=True)
    r, out["rome_s"], out["rome_peak"] = timed(device, lambda: editor.edit(requests[1], hparams=hp, measure_ppl=False))
    out["rome_status"] = r.status
    out["rome_plan_peak"] = plan_memory(folder, dtype=args.dtype, method="rome").peak
    batch = requests[2:2 + args.memit_batch]
    edit_batch(editor, batch[:1], method="memit", hparams=hp, measure_ppl=False, dry_run=True)  # C of each layer
    b, out["memit_s"], out["memit_peak"] = timed(
        device, lambda: edit_batch(editor, batch, method="memit", hparams=hp, measure_ppl=False))
    out["memit_status"], out["memit_batch"] = b.status, len(batch)
    out["memit_plan_peak"] = plan_memory(folder, dtype=args.dtype, method="memit", requests=len(batch)).peak
    req = requests[1]
    tr = Tracer(lm)
    _, out["trace_s"], out["trace_peak"] = timed(
        device, lambda: tr.trace(req.text, req.subject, req.target_true))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
