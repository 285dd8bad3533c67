"""Calibrated thresholds on the demo model: long healthy runs go on, the collapse is stopped (issue 19).

1. ``calibrate`` the demo as the CLI does by default (no-op edits on the prompts, then healthy edits,
   of the shipped resources/demo/calibration_counterfact.json: CounterFact records 100-109 of the
   500-record sample, held out from the run's records 0-99; 1% false alarms per run of 100 edits),
   into a private cache folder (the user's
   cache and the test suite never see the calibration: the other cache entries are linked in);
2. the first-token original-key collapse (resources/demo/first_token_subjects.json, key mode
   ``original``, ``--allow-collapse`` so that the monitor, not the guard, has to catch it), on a
   fresh workspace with the calibrated guard and monitor (stop on every figure): must be stopped at
   its first bad edit;
3. ``--n`` consistent ROME edits of tests/data/counterfact_100.json in a row on another fresh
   workspace, the same way: must not be stopped;
4. ``--noop-check N`` no-op edits (records 0..N-1's prompts, each edited to the model's own answer:
   other prompts than the calibration's) in a row, the same way: the stated false-alarm rate (1% per
   100 edits) says they must not be stopped either.

``--reuse FILE`` takes the calibration from an earlier run's ``--out`` or a calibration file, its
limits set again from its samples by the current rules (``calibration.refit``; skips step 1), and
``--parts`` chooses the steps (default ``collapse,healthy,noop``), so a step can be run on its own.

Prints each step's figures with the load average and writes everything to ``--out`` (JSON).

    nice -n 10 python bench/bench_calibration.py --n 100 --out /tmp/bench_calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNTERFACT = ROOT / "tests" / "data" / "counterfact_100.json"
FIRST_TOKEN = ROOT / "resources" / "demo" / "first_token_subjects.json"
CALIBRATION = ROOT / "resources" / "demo" / "calibration_counterfact.json"  # held out from COUNTERFACT
SHOWN = ("ppl_ratio", "ppl_jump", "norm_ratio", "norm_jump", "cond_ratio", "ppl_trend", "retention")


def private_cache(tmp: Path) -> Path:
    """A cache folder whose entries (converted models, key statistics) are the user's, linked, and
    whose calibration folder is its own."""
    from auditor.model.checkpoint import cache_dir

    real, cache = cache_dir(), tmp / "cache"
    cache.mkdir()
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name != "calibration":
                (cache / entry.name).symlink_to(entry.resolve())
    os.environ["EDIT_AUDITOR_CACHE"] = str(cache)
    return cache


def line(rec: dict[str, Any], t0: float) -> str:
    def f(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "-"

    return (f"step {rec['step']:>3} edits {rec['edits']:>3} {','.join(rec['status'])[:9]:<9} "
            + " ".join(f"{k} {f(rec.get(k))}" for k in SHOWN)
            + f" crossed {[c['figure'] for c in rec.get('crossed', [])]} t {time.perf_counter() - t0:.0f}s"
            + f" load {os.getloadavg()[0]:.1f}")


def run(ws: Any, requests: list, label: str, *, stop_on: str = "all", **kwargs: Any) -> dict[str, Any]:
    from auditor.run.calibration import monitor_for
    from auditor.run.sequence import run_sequence

    monitor = monitor_for(ws.base_fingerprint, stop_on)
    print(f"\n== {label}: {len(requests)} requests, thresholds from {monitor.thresholds_source}", flush=True)
    steps: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def on_step(rec: dict[str, Any]) -> None:
        steps.append({k: rec.get(k) for k in ("step", "edits", "status", "crossed", "errors", *SHOWN)})
        print(line(rec, t0), flush=True)

    final = run_sequence(ws, requests, monitor, on_step=on_step, **kwargs)
    print(f"{label}: stopped {final['stopped']} at step {final.get('stopped_at_step')}: {final['reason']}; "
          f"{final['edits_applied']} edits applied in {final['seconds']:.0f} s, load {os.getloadavg()}", flush=True)
    return {"final": {k: v for k, v in final.items() if k not in ("crossed",)}, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="consistent CounterFact edits in a row (at most 100)")
    ap.add_argument("--noop", type=int, default=10, help="no-op calibration edits")
    ap.add_argument("--known", type=int, default=10,
                    help="healthy calibration edits: the first N of the shipped calibration requests")
    ap.add_argument("--audit", action="store_true",
                    help="keep the collateral audit on (off by default: it doubles the time per edit)")
    ap.add_argument("--noop-check", type=int, default=20, help="no-op edits in a row after the calibration")
    ap.add_argument("--parts", default="collapse,healthy,noop", help="which runs after the calibration")
    ap.add_argument("--reuse", type=Path, default=None, help="the calibration of an earlier --out JSON")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    load_start = os.getloadavg()
    out: dict[str, Any] = {"load_start": load_start, "n": args.n, "audit": args.audit}
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        private_cache(Path(tmp))
        from auditor.model.requests import load_requests
        from auditor.run import calibration

        # 1. calibrate
        t = time.perf_counter()
        if args.reuse:
            data = json.loads(args.reuse.read_text())
            cal = calibration.refit(calibration.Calibration.from_dict(data.get("calibration", data)))
            calibration.save(cal)
            print(f"calibration reused from {args.reuse} (limits refitted by the current rules): {cal.source}",
                  flush=True)
        else:
            cal = calibrate(args)
        out["calibration"] = cal.to_dict()
        out["calibration_seconds"] = time.perf_counter() - t
        for name, rec in cal.figures.items():
            print(f"  {name:<18} {rec['field']:<30} {rec.get('threshold', 'default')!s:<22} rule {rec['rule']} "
                  f"n {rec.get('n')} median {rec.get('median', rec.get('mu'))} worst {rec.get('worst_seen')}")
        if "collapse" in parts:
            out["collapse"] = collapse(args, Path(tmp))
        if "healthy" in parts:
            ws = fresh(args, Path(tmp) / "ws")
            assert ws.editor.thresholds_source == cal.source, ws.editor.thresholds_source
            out["healthy"] = run(ws, load_requests(COUNTERFACT)[: args.n], f"{args.n} consistent CounterFact edits",
                                 key_mode="consistent")
            ws.close()
        if "noop" in parts and args.noop_check:
            ws = fresh(args, Path(tmp) / "ws-noop")
            noops = [r for r in (calibration.noop_request(ws.lm, q)
                                 for q in load_requests(COUNTERFACT)[: args.noop_check]) if r is not None]
            out["noop"] = run(ws, noops, f"{len(noops)} no-op edits (the model's own answers)", key_mode="consistent")
            ws.close()
    out["load_end"] = os.getloadavg()
    summary = [f"{k} run stopped {out[k]['final']['stopped']} at step {out[k]['final'].get('stopped_at_step')} "
               f"({out[k]['final']['edits_applied']} applied; {out[k]['final']['reason']})"
               for k in ("collapse", "healthy", "noop") if k in out]
    print(f"\nSUMMARY: {'; '.join(summary)}; load start {load_start}, end {out['load_end']}", flush=True)
    if args.out:
        from auditor.files import write_file

        write_file(args.out, json.dumps(out, indent=1, default=str), what="bench --out")


# the imports are inside the functions: after private_cache() has set the cache folder

def fresh(args: argparse.Namespace, folder: Path) -> Any:
    from auditor.run.workspace import Workspace

    ws = Workspace.init("demo", folder, device=args.device)
    if not args.audit:
        ws.editor.collateral = None
    return ws


def calibrate(args: argparse.Namespace) -> Any:
    """Step 1: calibrate the demo into the private cache."""
    from auditor.model.checkpoint import load_model
    from auditor.model.requests import load_requests
    from auditor.run import calibration
    from auditor.run.edit import Editor

    editor = Editor(load_model("demo", device=args.device))
    if not args.audit:
        editor.collateral = None
    held_out = load_requests(CALIBRATION)[:args.known]
    print(f"calibrating: {args.noop} no-op + {len(held_out)} held-out CounterFact records ({CALIBRATION.name}), "
          f"load {os.getloadavg()}", flush=True)
    cal = calibration.calibrate(editor, held_out, n_noop=args.noop,
                                progress=lambda p: print(f"  {p.step + 1}/{p.total} {p.message} "
                                                         f"load {os.getloadavg()[0]:.1f}", flush=True))
    calibration.save(cal)
    del editor
    print(f"calibrated in {cal.seconds:.0f} s ({cal.edits['noop']} no-op, {cal.edits['healthy']} healthy, "
          f"skipped {cal.edits['skipped']})", flush=True)
    return cal


def collapse(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The first-token original-key collapse on a fresh workspace (must be stopped at its first edit)."""
    from auditor.model.requests import load_requests

    ws = fresh(args, tmp / "ws-collapse")
    out = run(ws, load_requests(FIRST_TOKEN), "first-token original-key collapse",
              key_mode="original", allow_collapse=True)
    entry = ws.ledger.get(out["final"]["rolled_back"][0]) if out["final"].get("rolled_back") else None
    if entry is not None:
        out["guard"] = {"collapse_reasons": entry["collapse_reasons"],
                        "diagnostics_thresholds_source": entry["diagnostics"].get("thresholds_source")}
        print(f"the collapsed edit's guard verdict: {out['guard']}", flush=True)
    ws.close()
    return out


if __name__ == "__main__":
    main()
