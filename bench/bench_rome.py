"""Seconds per ROME edit of the demo model and their parts, with EasyEdit-equal settings and our defaults.

EasyEdit-equal (Yao et al. 2023, EasyEdit's ROME on Llama-style models): layer 7, 20 v* steps,
kmeng01/rome's 20 sampled prefixes plus "{}", identity covariance (mom2_adjustment false),
early stop on the total loss, the reference's KL direction. The recorded EasyEdit median on this
machine is 23.5 s per edit (issue 10; our round-one code: 19.0 s with the same settings).

Each configuration runs once with the v* loop's full forward pass (``v_fast`` off: round one)
and once with the suffix-only pass (suffix_forward.py), in the same process, so both see the
same machine load; the load average is printed with every row. Edits are dry runs (the weights
are restored), each measured as the Editor measures it (perplexity included).

    python bench/bench_rome.py                 # 8 known facts, both settings, both paths
    python bench/bench_rome.py --n 2 --threads 1   # on a crowded machine
    python bench/bench_rome.py --n 5 --settings easyedit --paths fast
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from auditor.model.checkpoint import load_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"
SETTINGS = {
    "easyedit": {"layer": 7, "v_num_grad_steps": 20, "context_style": "rome", "mom2_adjustment": False,
                 "early_stop_on": "total", "kl_direction": "reference"},
    "defaults": {},
}
PARTS = ("eval_before", "keys", "v", "v_setup", "update", "eval", "total")


def _load() -> str:
    return "load %.1f" % os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=8, help="known-fact requests per configuration (issue 10 measured EasyEdit on 8)")
    ap.add_argument("--settings", default="easyedit,defaults")
    ap.add_argument("--paths", default="full,fast", help="v* forward: full (round one), fast (suffix only)")
    ap.add_argument("--key-mode", default="consistent")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = load_model("demo", device=args.device)
    requests = load_requests(DEMO / "known_facts.json")[: args.n]
    print(f"device {lm.device}, torch threads {torch.get_num_threads()}, {len(requests)} requests, "
          f"key mode {args.key_mode}, {_load()}")
    print(f"{'config':<18}" + "".join(f"{p:>12}" for p in PARTS) + "  v* steps")
    editor = Editor(lm)
    totals: dict[tuple[str, str], list[float]] = {}
    paths = args.paths.split(",")
    for name in args.settings.split(","):
        editor.edit(requests[0], key_mode=args.key_mode, hparams=SETTINGS[name], dry_run=True)  # warm: templates, C
        for req in requests:
            for path in paths:  # interleaved, so both paths see the same load
                res = editor.edit(req, key_mode=args.key_mode, hparams={**SETTINGS[name], "v_fast": path == "fast"},
                                  dry_run=True)
                t = res.timings
                totals.setdefault((name, path), []).append(t["total"])
                print(f"{name + '/' + path:<18}" + "".join(f"{t.get(p, 0.0):>12.2f}" for p in PARTS)
                      + f"  {res.diagnostics.get('v_steps')} ({res.diagnostics.get('v_path')}) "
                      f"eff {res.metrics.get('efficacy')} {_load()}", flush=True)
    summary = [(name, path, statistics.median(v)) for (name, path), v in totals.items()]
    print()
    for name, path, med in summary:
        print(f"median seconds per edit {name}/{path}: {med:.2f}  (EasyEdit 23.5 s: x{23.5 / med:.2f})")
    print(_load())


if __name__ == "__main__":
    main()
