"""Seconds of a full causal trace (three kinds) of a 10-token prompt on the demo model.

Prints the time of the clean and corrupted runs (``prepare``), of each kind's restorations
(``--per-kind``) and of the full trace as the window and the command run it (one call, the three
kinds' restorations pooled into shared passes), for float32 and bfloat16 products, in wall-clock and in CPU seconds of this process (with one
thread, the CPU seconds are what the run would take alone on one core), with the load average, for the fast path (batched,
early blocks and positions skipped) and, with ``--naive``, for one restoration per forward pass
as the reference implementation does. Runs unchanged on a GPU (``--device auto``).

    python bench/bench_trace.py                   # 10 noise samples (the paper), float32 and bfloat16
    python bench/bench_trace.py --samples 5 --per-kind
    python bench/bench_trace.py --samples 5 --naive --precision float32
    OMP_NUM_THREADS=1 python bench/bench_trace.py   # on a machine shared by many processes
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from auditor.measure.trace import KINDS, Tracer
from auditor.model.checkpoint import load_model

PROMPT = "The Eiffel Tower is located in the city of"  # 10 tokens with the demo's tokenizer
SUBJECT = "The Eiffel Tower"


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run(tracer: Tracer, label: str, per_kind: bool) -> None:
    prep, wall, cpu = _timed(lambda: tracer.prepare(PROMPT, SUBJECT))
    print(f"{label}: {len(prep.tokens)} tokens, {tracer.lm.n_layers} layers, {tracer.samples} samples, "
          f"window {tracer.window}, products in {tracer.precision}; P({prep.answer!r}) clean "
          f"{prep.clean_prob:.3f}, corrupted {prep.corrupted_prob:.3f}")
    print(f"  {'':<44}{'wall s':>9}{'cpu s':>9}")
    print(f"  {'prepare (clean + corrupted runs)':<44}{wall:9.2f}{cpu:9.2f}   ({_load()})")
    if per_kind:
        total_wall, total_cpu = wall, cpu
        for kind in KINDS:
            _, wall, cpu = _timed(lambda: tracer.trace(PROMPT, SUBJECT, kinds=(kind,), prep=prep))
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
            print(f"  {kind + ' restorations':<44}{wall:9.2f}{cpu:9.2f}   ({_load()})")
        print(f"  {'three kinds one after another (the sum)':<44}{total_wall:9.2f}{total_cpu:9.2f}")
    # what the window and `edit-auditor trace` run: one call, the three kinds' restorations pooled
    _, wall, cpu = _timed(lambda: tracer.trace(PROMPT, SUBJECT))
    print(f"  {'FULL TRACE, one call (prepare + 3 kinds)':<44}{wall:9.2f}{cpu:9.2f}   ({_load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--naive", action="store_true", help="also time one restoration per forward pass")
    ap.add_argument("--precision", default="float32,bfloat16", help="restorations' products, comma-separated")
    ap.add_argument("--per-kind", action="store_true", help="also time each kind on its own")
    args = ap.parse_args()
    lm = load_model("demo", device=args.device, dtype="float32")
    print(f"device {lm.device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    for precision in args.precision.split(","):
        run(Tracer(lm, samples=args.samples, precision=precision), "batched", args.per_kind)
    if args.naive:
        run(Tracer(lm, samples=args.samples, batch_tokens=1, skip_blocks=False, skip_tokens=False), "naive",
            args.per_kind)


if __name__ == "__main__":
    main()
