"""Edits until each monitor threshold is crossed: a sequence run with the monitor watching, not stopping.

Applies the requests of ``--requests`` (default: the shipped RoundEdit hard cases) one after
another to a fresh workspace on the demo model, with ``--stop-on none`` so that the run goes on
past every threshold, and prints each step's monitored figures, then for every threshold the
number of edits at which it was first crossed (``-`` = never), the seconds per edit and the load
average (the machine is shared: say so with every figure).

    python bench/bench_sequence.py --n 20 --key-mode original
    python bench/bench_sequence.py --requests resources/demo/known_facts.json --n 10
    python bench/bench_sequence.py --method memit --batch-size 5     # once the method exists
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from auditor.model.requests import load_requests
from auditor.run.monitor import FIGURE_KEYS, Monitor, parse_stop_on
from auditor.run.sequence import run_sequence
from auditor.run.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
HARD = ROOT / "resources" / "hard" / "roundedit_hard_40.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=Path, default=HARD)
    ap.add_argument("--n", type=int, default=20, help="number of requests to apply")
    ap.add_argument("--method", default="rome")
    ap.add_argument("--key-mode", default="consistent", choices=("consistent", "original"))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--hparams", default=None, help="JSON overrides (e.g. fewer context templates)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    args = ap.parse_args()

    requests = load_requests(args.requests)[: args.n]
    stop_on, thresholds = parse_stop_on("none")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.init("demo", Path(tmp) / "ws", device=args.device)
        steps: list[dict] = []
        t0 = time.perf_counter()
        last = [t0]

        def on_step(rec: dict) -> None:
            now = time.perf_counter()
            rec["seconds"] = now - last[0]
            last[0] = now
            steps.append(rec)
            print(f"{rec['step']:>3} {rec['edits']:>3} {'/'.join(rec['status']):<9} "
                  + " ".join(f"{_f(rec.get(k)):>9}" for k in FIGURE_KEYS.values()) + f" {rec['seconds']:>7.1f}",
                  flush=True)

        print(f"{args.method}/{args.key_mode} on {args.requests.name}, {len(requests)} requests, device {ws.lm.device}")
        print(f"{'step':>3} {'n':>3} {'status':<9} " + " ".join(f"{k:>9}" for k in FIGURE_KEYS.values())
              + f" {'seconds':>7}")
        final = run_sequence(ws, requests, Monitor(thresholds=thresholds, stop_on=stop_on),
                             batch_size=args.batch_size, on_step=on_step, method=args.method,
                             key_mode=args.key_mode, allow_collapse=True,
                             hparams=json.loads(args.hparams) if args.hparams else None)
        ws.close()
    if args.out:
        args.out.write_text("".join(json.dumps(r, default=str) + "\n" for r in [*steps, final]))
    print("edits until each threshold is first crossed (- = never):")
    for name, key in FIGURE_KEYS.items():
        hit = next((s["edits"] for s in steps if thresholds.crossed(name, s.get(key))), None)
        print(f"  {name:<10} {key:<16} threshold {thresholds.value(name):<6g} {'-' if hit is None else hit}")
    secs = [s["seconds"] for s in steps]
    print(f"seconds per step: median {statistics.median(secs):.1f}, total {sum(secs):.0f}; "
          f"load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")


def _f(v: object) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
