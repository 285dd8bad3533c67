"""ROME, MEMIT and AlphaEdit on the demo model: seconds per edit and quality after N sequential edits.

Every method applies the same CounterFact requests (tests/data/counterfact_100.json) one update
after another on its own copy of the demo model: ROME one request per update, MEMIT and AlphaEdit
``--batch-size`` requests per update. After 10, 50 and 100 edits (``--sizes``) it measures, over
*every* request edited so far: efficacy (new target beats the true one on the edit prompt),
generalization (paraphrases), locality (neighbourhood answers unchanged from the unedited model),
and the reference perplexity; the efficacy of the first 10 requests alone (the first batch:
does it still hold after the later ones?); and the preservation cost of everything edited so far,
``||(W - W0) Kh|| / ||W0 Kh||`` on held-out text keys Kh of the base model (stats.held_out_keys:
the perplexity sentences, which C never sees), the worst edited matrix. Seconds per edit are the
engine's compute time (statistics cached, evaluation excluded) divided by the edits. v* steps are
each family's shipped defaults unless ``--steps`` is given (the references' settings, issue 19).

    python bench/bench_methods.py                          # 10, 50, 100 edits, all three methods
    python bench/bench_methods.py --sizes 10 --methods memit,alphaedit --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from auditor.engine.methods import held_out_change
from auditor.engine.stats import held_out_keys
from auditor.measure import metrics
from auditor.model.checkpoint import load_model
from auditor.model.offload import read_param
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "counterfact_100.json"
FIXED_TEMPLATES = ["{}", "The following is a fact. {}", "I read that. {}"]


def quality(lm, editor: Editor, requests: list, refs: list) -> dict:
    """Efficacy, generalization, locality over ``requests`` and the perplexity, as the model is now."""
    eff, gen, loc = [], [], []
    for r, ref in zip(requests, refs):
        m = metrics.evaluate(lm, r, before_neighborhood=ref, prefix_template=None)
        eff.append(m["efficacy"])
        if m["generalization"] is not None:
            gen.append(m["generalization"])
        if m["locality"] is not None:
            loc.append(m["locality"])
    editor.invalidate()
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"efficacy": mean(eff), "generalization": mean(gen), "locality": mean(loc), "ppl": editor.perplexity()}


def preservation(lm, base: dict) -> float:
    """Worst ``||(W - W0) Kh|| / ||W0 Kh||`` over the matrices in ``base`` (name -> (W0, Kh))."""
    worst = 0.0
    for name, (W0, Kh) in base.items():
        W = lm.spec.as_out_in(read_param(lm.model, name)).double().cpu()
        worst = max(worst, held_out_change(W - W0, W0, Kh)["held_out_change"])
    return worst


def run(method: str, requests: list, sizes: list[int], args: argparse.Namespace) -> list[dict]:
    lm = load_model("demo", device=args.device)
    editor = Editor(lm)
    refs = [metrics.locality_reference(lm, r.neighborhood) for r in requests[:max(sizes)]]
    base = {}
    for layer in range(3, 7):  # ROME's layer 4, MEMIT's and AlphaEdit's 3-6 (the Llama files)
        name = lm.spec.weight_name(layer)
        base[name] = (lm.spec.as_out_in(read_param(lm.model, name)).double().cpu().clone(), held_out_keys(lm, layer))
    hp = {"v_num_grad_steps": args.steps} if args.steps else {}
    if args.fixed_templates:
        hp["context_templates"] = FIXED_TEMPLATES
    rows, done, compute = [], 0, 0.0
    ppl0 = editor.perplexity()
    step = 1 if method == "rome" else args.batch_size
    while done < max(sizes):
        chunk = requests[done:done + step]
        t = time.perf_counter()
        if method == "rome":
            res = editor.edit(chunk[0], hparams=hp, measure_ppl=False, allow_collapse=True)
            seconds = sum(res.timings.get(k, 0.0) for k in ("stats", "keys", "v", "update"))
        else:
            res = editor.edit_batch(chunk, method=method, hparams=hp, measure_ppl=False, allow_collapse=True)
            seconds = res.timings.get("stats", 0.0) + res.timings.get("compute", 0.0)
        if res.status != "applied":
            print(f"  {method}: update at {done} {res.status}: {res.error}", flush=True)
        compute += seconds
        done += len(chunk)
        print(f"  {method}: {done} edits, {time.perf_counter() - t:.1f} s this update", flush=True)
        if done in sizes:
            q = quality(lm, editor, requests[:done], refs[:done])
            first = sum(metrics.success(lm, [r.text], r.target_new, r.target_true)[0] for r in requests[:10]) / 10
            row = {"method": method, "edits": done, "s_per_edit": compute / done, **q, "ppl_ratio": q["ppl"] / ppl0,
                   "first10_efficacy": first, "preservation": preservation(lm, base), "load": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default="10,50,100", help="edit counts at which to measure (at most 100)")
    ap.add_argument("--methods", default="rome,memit,alphaedit")
    ap.add_argument("--batch-size", type=int, default=10, help="requests per MEMIT/AlphaEdit update")
    ap.add_argument("--steps", type=int, default=None, help="v* steps (z* for MEMIT/AlphaEdit); default: the family's")
    ap.add_argument("--fixed-templates", action="store_true", help="3 fixed context templates (faster)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    requests = load_requests(DATA)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    rows = []
    for method in args.methods.split(","):
        rows += run(method, requests, sizes, args)
    print(f"\n{'method':<10}{'edits':>6}{'s/edit':>9}{'efficacy':>10}{'general.':>10}{'locality':>10}{'ppl':>8}"
          f"{'ppl x':>8}{'first10':>8}{'preserv.':>10}{'load':>6}")
    for r in rows:
        print(f"{r['method']:<10}{r['edits']:>6}{r['s_per_edit']:>9.2f}{r['efficacy']:>10.3f}{r['generalization']:>10.3f}"
              f"{r['locality']:>10.3f}{r['ppl']:>8.2f}{r['ppl_ratio']:>8.3f}{r['first10_efficacy']:>8.2f}{r['preservation']:>10.4f}{r['load']:>6.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
