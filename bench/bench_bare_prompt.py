"""Edits of prompts that begin with their subject, measured on the bare prompt (issue 10, item 4).

For each request of resources/demo/first_token_subjects.json (independent dry-run edits of the
demo model) and each key mode: efficacy on the bare prompt (CounterFact: new beats true),
prefixed efficacy behind held-out prefixes, the perplexity ratio, the denominator, the relative
update norm and whether the collapse guard flags the edit. Prints the load average.

    python bench/bench_bare_prompt.py --modes consistent,joint
    python bench/bench_bare_prompt.py --modes joint --hparams '{"joint_lambda": 0.1}' --n 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from auditor.model.checkpoint import load_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DEMO = Path(__file__).resolve().parent.parent / "resources" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="consistent,joint")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--hparams", default="{}", help="JSON overrides")
    args = ap.parse_args()
    lm = load_model("demo", device=args.device)
    editor = Editor(lm)
    requests = load_requests(DEMO / "first_token_subjects.json")[: args.n]
    hp = json.loads(args.hparams)
    print(f"{len(requests)} requests, hparams {hp}, load {os.getloadavg()[0]:.1f}")
    cols = ("efficacy", "prefixed_efficacy", "ppl_ratio", "denominator", "relative_update", "flagged", "seconds")
    for mode in args.modes.split(","):
        rows = []
        for req in requests:
            res = editor.edit(req, key_mode=mode, hparams=hp, dry_run=True)
            m, d = res.metrics, res.diagnostics
            row = {"efficacy": m.get("efficacy"), "prefixed_efficacy": m.get("prefixed_efficacy"),
                   "ppl_ratio": m.get("ppl_ratio"), "denominator": d.get("denominator"),
                   "relative_update": d.get("relative_update"), "flagged": res.collapse_risk,
                   "seconds": res.timings.get("total")}
            rows.append(row)
            print(f"{mode:<11}{req.case_id:<22}" + " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in row.items()) + f"  load {os.getloadavg()[0]:.1f}",
                  flush=True)
        mean = lambda k: statistics.mean(float(r[k]) for r in rows)  # noqa: E731
        print(f"{mode}: bare efficacy {mean('efficacy'):.2f}, prefixed {mean('prefixed_efficacy'):.2f}, "
              f"ppl ratio max {max(r['ppl_ratio'] for r in rows):.4f}, flagged {sum(r['flagged'] for r in rows)}, "
              f"relative update median {statistics.median(r['relative_update'] for r in rows):.4g}\n", flush=True)


if __name__ == "__main__":
    main()
