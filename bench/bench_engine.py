"""Per-phase times of ROME edits on the demo model: one edit, then a sequence of N edits.

Runs unchanged on a GPU (``--device auto`` picks CUDA when present). The sequence uses the
shipped demo requests (10 known facts, then 10 prompts that begin with their subject), applied
one after another in ``--key-mode`` (consistent by default), and prints the perplexity after
every edit: the butterfly-effect curve of Yang et al. 2024.

    python bench/bench_engine.py                  # one edit + 20 sequential edits
    python bench/bench_engine.py --n 5 --key-mode original
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from auditor.model.checkpoint import load_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"
PHASES = ("stats", "eval_before", "keys", "v", "update", "eval", "total")


def _row(label: str, timings: dict, extra: str = "") -> str:
    return f"{label:<22}" + "".join(f"{timings.get(p, 0.0):>12.2f}" for p in PHASES) + f"  {extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=20, help="length of the sequential run (max 20)")
    ap.add_argument("--key-mode", default="consistent", choices=("consistent", "original"))
    ap.add_argument("--json", type=Path, default=None, help="also write the raw records here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    lm = load_model("demo", device=args.device)
    load_s = time.perf_counter() - t0
    requests = load_requests(DEMO / "known_facts.json") + load_requests(DEMO / "first_token_subjects.json")
    print(f"device {lm.device} ({torch.cuda.get_device_name(lm.device) if lm.device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, load {load_s:.1f} s")
    print(f"{'seconds':<22}" + "".join(f"{p:>12}" for p in PHASES))

    editor = Editor(lm)
    first = editor.edit(requests[0], key_mode=args.key_mode, dry_run=True)
    print(_row("first edit (cold)", first.timings, f"stats cached: {first.diagnostics['stats'].get('cached')}, "
               f"v* steps {first.diagnostics['v_steps']}"))
    again = editor.edit(requests[0], key_mode=args.key_mode, dry_run=True)
    print(_row("same edit (warm)", again.timings, f"v* steps {again.diagnostics['v_steps']}"))
    if lm.device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(lm.device) / 2**20:.0f} MiB")

    records = []
    t_seq = time.perf_counter()

    def on_result(i: int, res) -> None:  # noqa: ANN001 - EditResult
        rec = res.record()
        records.append(rec)
        print(_row(f"seq {i + 1:>2} {rec['case_id'][:14]}", res.timings,
                   f"{rec['status']:<8} den {rec['denominator']:.3f} ppl {rec['ppl_after']:.2f} "
                   f"eff {rec['efficacy']}"), flush=True)

    editor.edit_many(requests[: args.n], key_mode=args.key_mode, allow_collapse=True, on_result=on_result)
    seq_s = time.perf_counter() - t_seq
    totals = [r["timings"]["total"] for r in records]
    print(f"\nsequence of {len(records)} edits: {seq_s:.1f} s, per edit median {statistics.median(totals):.1f} s; "
          f"perplexity {records[0]['ppl_before']:.2f} -> {records[-1]['ppl_after']:.2f}")
    print("perplexity after each edit: " + ", ".join(f"{r['ppl_after']:.2f}" for r in records))
    if args.json:
        args.json.write_text("\n".join(json.dumps(r, default=str) for r in records) + "\n")


if __name__ == "__main__":
    main()
