"""The collateral audit on the demo model: spill rate and preservation cost per method, and its cost.

Every method edits the same CounterFact requests (tests/data/counterfact_100.json) as dry runs on the
unedited demo model (ROME one request per update; MEMIT and AlphaEdit ``--batch-size`` per update);
every edit is audited (measure/collateral.py, default settings). It prints, per method: the spill
rate (mean and max over edits), the neighbour spill rate, the preservation cost
``tr(Delta C Delta^T) / tr(W C W^T)`` (median and max), how many edits the guard's collateral
thresholds flag, and the audit's seconds per edit against the edit's (the audit's share must stay
well under 25 %). It prints the load average: on a shared machine the seconds mean little alone.

    python bench/bench_collateral.py                      # 30 requests, rome, memit, alphaedit
    python bench/bench_collateral.py --n 3 --methods rome --steps 5     # a quick check
    python bench/bench_collateral.py --from-rows run.log   # summarise the --rows lines of a cut-short run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from auditor.measure.guard import CollapseGuard, collateral_reasons
from auditor.model.checkpoint import load_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "counterfact_100.json"


def audited(method: str, requests: list, args: argparse.Namespace, editor: Editor) -> list[dict]:
    """One row per update: its audit record, the edit's seconds without the audit, the audit's."""
    hp = {"v_num_grad_steps": args.steps} if args.steps else None
    out = []
    step = 1 if method == "rome" else args.batch_size
    for start in range(0, len(requests), step):
        chunk = requests[start:start + step]
        if method == "rome":
            res = editor.edit(chunk[0], hparams=hp, dry_run=True, measure_ppl=args.ppl)
        else:
            res = editor.edit_batch(chunk, method=method, hparams=hp, dry_run=True, measure_ppl=args.ppl)
        c = res.metrics["collateral"]
        out.append({"n": len(chunk), "spill": c["spill_rate"], "near": c["neighbour_spill_rate"],
                    "cost": c["preservation_cost"], "audit_s": c["seconds"],
                    "edit_s": res.timings["total"] - c["seconds"],
                    "flagged": bool(collateral_reasons(CollapseGuard(), c)), "moved": c["moved"]})
        if args.rows:
            print(json.dumps({"method": method, "first": args.skip + start, **out[-1]}), flush=True)
    return out


def summary(method: str, rows: list[dict]) -> dict:
    audit, edit = sum(r["audit_s"] for r in rows), sum(r["edit_s"] for r in rows)
    n = sum(r["n"] for r in rows)
    near = [r["near"] for r in rows if r["near"] is not None]
    return {"method": method, "requests": n, "updates": len(rows),
            "spill_mean": statistics.fmean(r["spill"] for r in rows), "spill_max": max(r["spill"] for r in rows),
            "neighbour_spill_mean": statistics.fmean(near) if near else None,
            "cost_median": statistics.median(r["cost"] for r in rows), "cost_max": max(r["cost"] for r in rows),
            "flagged": sum(r["flagged"] for r in rows),
            "audit_s_per_update": audit / len(rows), "edit_s_per_update": edit / len(rows),
            "audit_s_per_request": audit / n, "edit_s_per_request": edit / n,
            "audit_share": audit / edit if edit else None}


def rows_in(log: Path) -> dict[str, list[dict]]:
    """The per-update lines (``--rows``) of a run's output, by method."""
    out: dict[str, list[dict]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.startswith("{") and '"first"' in line:
            row = json.loads(line)
            out.setdefault(row.pop("method"), []).append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="requests per method (default 30)")
    ap.add_argument("--skip", type=int, default=0,
                    help="start at this request (a run in parts: each update is a dry run on the unedited "
                         "model, so parts summed with --from-rows equal one run)")
    ap.add_argument("--methods", default="rome,memit,alphaedit")
    ap.add_argument("--batch-size", type=int, default=5, help="requests per MEMIT/AlphaEdit update")
    ap.add_argument("--steps", type=int, default=None, help="v* steps (default: the hyper-parameters')")
    ap.add_argument("--no-ppl", dest="ppl", action="store_false",
                    help="skip the edits' perplexity (the default edit measures it, as the command line does)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows", action="store_true", help="also print one line per update")
    ap.add_argument("--from-rows", type=Path, default=None, metavar="LOG",
                    help="only summarise the --rows lines of an earlier run's output (one stopped early)")
    args = ap.parse_args()
    if args.from_rows:
        for method, rows in rows_in(args.from_rows).items():  # several logs: cat them into one
            print(json.dumps(summary(method, rows)))
        return
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}")
    requests = load_requests(DATA)[args.skip:args.skip + args.n]
    editor = Editor(load_model("demo", device=args.device))
    for method in args.methods.split(","):
        print(json.dumps(summary(method, audited(method, requests, args, editor))), flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
