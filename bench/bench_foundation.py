"""Timings of the foundation on the demo model: load (first = GGUF conversion, then cached),
fingerprint, perplexity. Runs unchanged on a GPU (``--device auto`` picks CUDA when present).

    python bench/bench_foundation.py [--device auto|cpu|cuda:N] [--dtype float32] [--tokens N] [--json]

The first load uses an empty temporary cache (``EDIT_AUDITOR_CACHE``) so it always measures the
one-time conversion; the user's own cache is not touched.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from auditor.cli import print_json, print_table
from auditor.measure.perplexity import DEFAULT_SEQ_LEN, DEFAULT_TOKENS, PerplexityProbe
from auditor.model.checkpoint import fingerprint_model, load_model, resolve_device

CPU_SECONDS: list[float] = []  # process CPU time of each timed step (all threads), to read wall time under load


@contextmanager
def empty_cache() -> Iterator[str]:
    old = os.environ.get("EDIT_AUDITOR_CACHE")
    with tempfile.TemporaryDirectory(prefix="edit-auditor-bench-") as tmp:
        os.environ["EDIT_AUDITOR_CACHE"] = tmp
        try:
            yield tmp
        finally:
            if old is None:
                os.environ.pop("EDIT_AUDITOR_CACHE", None)
            else:
                os.environ["EDIT_AUDITOR_CACHE"] = old


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall-clock seconds; the process CPU seconds go to :data:`CPU_SECONDS`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    CPU_SECONDS.append(time.process_time() - c0)
    return result, time.perf_counter() - t0


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = resolve_device(args.device)
    load = lambda: load_model("demo", dtype=args.dtype, device=device)  # noqa: E731
    rows = []
    with empty_cache():
        _, first = timed(load, device)
        rows.append({"step": "load demo, first (GGUF conversion)", "seconds": first, "value": ""})
        lm, cached = timed(load, device)
        rows.append({"step": "load demo, cached", "seconds": cached, "value": ""})
    fp, fp_s = timed(lambda: fingerprint_model(lm.model), device)
    rows.append({"step": "fingerprint", "seconds": fp_s, "value": fp[:23]})
    probe, tok_s = timed(lambda: PerplexityProbe(lm, n_tokens=args.tokens, seq_len=args.seq_len), device)
    rows.append({"step": f"perplexity: tokenize {probe.n_tokens} tokens", "seconds": tok_s, "value": ""})
    for i in range(args.repeat):
        ppl, ppl_s = timed(probe.compute, device)
        rows.append({"step": f"perplexity {probe.n_tokens} tokens, run {i + 1}", "seconds": ppl_s, "value": ppl})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS)
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    parser.add_argument("--repeat", type=int, default=2, help="perplexity runs (the first may warm up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rows = [{**r, "cpu_seconds": c} for r, c in zip(run(args), CPU_SECONDS)]
    header = {"device": str(resolve_device(args.device)), "dtype": args.dtype, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    if args.json:
        print_json({**header, "rows": rows})
        return
    print_table(header)
    print()
    print_table([{**r, "seconds": f"{r['seconds']:.2f}", "cpu_seconds": f"{r['cpu_seconds']:.2f}"} for r in rows],
                columns=("step", "seconds", "cpu_seconds", "value"))
    print("\nseconds: wall clock; cpu_seconds: CPU time of this process over all its threads")


if __name__ == "__main__":
    main()
