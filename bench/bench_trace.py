"""Seconds of a full causal trace (three kinds) of a 10-token prompt on the demo model.

Prints the time of the clean and corrupted runs (``prepare``), of each kind's restorations,
and of all three kinds batched together, with the load average, for the fast path (batched,
early blocks and positions skipped) and, with ``--naive``, for one restoration per forward pass
as the reference implementation does. Runs unchanged on a GPU (``--device auto``).

    python bench/bench_trace.py                   # 10 noise samples, as the paper
    python bench/bench_trace.py --samples 5 --naive
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from auditor.checkpoint import load_model
from auditor.trace import KINDS, Tracer

PROMPT = "The Eiffel Tower is located in the city of"  # 10 tokens with the demo's tokenizer
SUBJECT = "The Eiffel Tower"


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(tracer: Tracer, label: str) -> None:
    t0 = time.perf_counter()
    prep = tracer.prepare(PROMPT, SUBJECT)
    t_prep = time.perf_counter() - t0
    print(f"{label}: {len(prep.tokens)} tokens, {tracer.lm.n_layers} layers, {tracer.samples} samples, "
          f"window {tracer.window}; P({prep.answer!r}) clean {prep.clean_prob:.3f}, "
          f"corrupted {prep.corrupted_prob:.3f}")
    print(f"  prepare (clean + corrupted runs)   {t_prep:8.2f} s   ({_load()})")
    for kind in KINDS:
        t0 = time.perf_counter()
        tracer.trace(PROMPT, SUBJECT, kinds=(kind,), prep=prep)
        print(f"  {kind:<6} restorations              {time.perf_counter() - t0:8.2f} s   ({_load()})")
    t0 = time.perf_counter()
    tracer.trace(PROMPT, SUBJECT)
    print(f"  full trace, three kinds (with prepare) {time.perf_counter() - t0:6.2f} s   ({_load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--naive", action="store_true", help="also time one restoration per forward pass")
    args = ap.parse_args()
    lm = load_model("demo", device=args.device, dtype="float32")
    print(f"device {lm.device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    run(Tracer(lm, samples=args.samples), "batched")
    if args.naive:
        run(Tracer(lm, samples=args.samples, batch_tokens=1, skip_blocks=False, skip_tokens=False), "naive")


if __name__ == "__main__":
    main()
