"""MEMIT's lambda (``mom2_update_weight``) swept on held-out requests: efficacy against locality and
preservation cost, on the demo model with the family's other defaults (issue 19).

One batch of ``--n`` CounterFact requests taken from the *end* of tests/data/counterfact_100.json
(``--start``, default 90: requests the tests and the first 90 of the 100-edit bench do not tune on).
z* is optimised once (it does not depend on lambda: ``methods.target_shifts``); for each lambda the
layer loop solves, the update is applied, measured and undone. Per lambda it prints: efficacy,
generalization, locality (neighbourhood answers unchanged), the perplexity ratio, the share of
z* - z written (1 - the last layer's remaining residual over the first's), and the preservation
cost ``held_out_change`` (mean over layers of ||Delta Kh|| / ||W Kh|| on held-out text keys).

Why lambda differs per model: the share a layer writes depends on k^T (lambda C)^-1 k, and
k^T C^-1 k is about the key dimension d whatever the keys' scale (C is built from the same keys);
the reference's 15000 at d = 16384 (GPT-J) is about 1400 at the demo's d = 1536.

    python bench/sweep_memit_lambda.py --lambdas 100,1400,5000,15000 --n 10

``--method alphaedit --variants JSON`` sweeps AlphaEdit the same way, one row per override set
(e.g. the null space's energy share against the reference's absolute threshold):

    python bench/sweep_memit_lambda.py --method alphaedit --variants \
        '[{"nullspace_energy": 0.01}, {"nullspace_energy": 0.1}, {"nullspace_rule": "threshold"}]'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from auditor.engine.deltas import apply_delta
from auditor.engine.methods import MethodContext, target_shifts
from auditor.engine.registry import get_method
from auditor.measure import metrics
from auditor.model.checkpoint import load_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "counterfact_100.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lambdas", default="100,1400,5000,15000", help="MEMIT's lambda values (mom2_update_weight)")
    ap.add_argument("--method", default="memit", choices=("memit", "alphaedit"))
    ap.add_argument("--variants", default=None, help="JSON list of override dicts, one row each (instead of --lambdas)")
    ap.add_argument("--start", type=int, default=90)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--hparams", default="{}", help="JSON overrides of the family's MEMIT file")
    ap.add_argument("--ppl", action="store_true", help="also the perplexity ratio (slow on CPU: ME-PPL, 1000 sentences)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model("demo", device=args.device)
    editor = Editor(lm)
    method = get_method(args.method)
    hp = method.hparams(lm, json.loads(args.hparams))
    requests = load_requests(DATA)[args.start:args.start + args.n]
    print(f"loaded {time.perf_counter() - t0:.0f} s", flush=True)
    C = {layer: editor.method_second_moment(hp, layer) for layer in hp.layers}
    print(f"statistics {time.perf_counter() - t0:.0f} s", flush=True)
    ctx = MethodContext(templates=editor.context_templates(hp), second_moment=C.get,
                        held_out_keys=editor.held_out_keys)
    refs = [metrics.locality_reference(lm, r.neighborhood) for r in requests]
    ppl0 = editor.perplexity() if args.ppl else None
    print(f"references {time.perf_counter() - t0:.0f} s", flush=True)
    t1 = time.perf_counter()
    shifts = target_shifts(lm, requests, hp, ctx)
    t2 = time.perf_counter()
    z_prob = sum(d["target_prob_curve"][-1] for d in shifts[1]) / len(requests)
    print(f"setup {t1 - t0:.0f} s, z* {t2 - t1:.0f} s (mean P(target) at z*: {z_prob:.3f}), "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    variants = (json.loads(args.variants) if args.variants else
                [{"mom2_update_weight": float(x)} for x in args.lambdas.split(",")])
    for variant in variants:
        lam = json.dumps(variant)
        hpl = method.hparams(lm, {**json.loads(args.hparams), **variant})
        out = method.compute(lm, requests, hpl, ctx, shifts=shifts)
        names = out.delta.params
        saved = {n: lm.model.get_parameter(n).detach().clone() for n in names}
        apply_delta(lm.model, out.delta)
        editor.invalidate()
        ms = [metrics.evaluate(lm, r, before_neighborhood=ref) for r, ref in zip(requests, refs)]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        layers = out.diagnostics["layers"]
        row = {"lambda": lam, "efficacy": mean([m["efficacy"] for m in ms]),
               "generalization": mean([m["generalization"] for m in ms if m["generalization"] is not None]),
               "locality": mean([m["locality"] for m in ms if m["locality"] is not None]),
               "ppl_ratio": editor.perplexity() / ppl0 if args.ppl else float("nan"),
               "written": 1 - layers[-1]["residual_after"] / layers[0]["residual_before"],
               "held_out_change": mean([d["held_out_change"] for d in layers]),
               "update_ratio_max": max(d["update_ratio"] for d in layers),
               **{k: [d.get(k) for d in layers] for k in ("null_space_dim", "null_space_energy") if k in layers[0]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        with torch.no_grad():
            for n, w in saved.items():
                lm.model.get_parameter(n).copy_(w)
        editor.invalidate()
    print(f"\n{args.n} requests ({args.start}-{args.start + args.n - 1}), layers {hp.layers}, total "
          f"{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':>8}{'efficacy':>10}{'general.':>10}{'locality':>10}{'ppl x':>8}{'written':>9}{'held-out':>10}")
    for r in rows:
        print(f"{r['lambda']:>8}{r['efficacy']:>10.3f}{r['generalization']:>10.3f}{r['locality']:>10.3f}"
              f"{r['ppl_ratio']:>8.3f}{r['written']:>9.3f}{r['held_out_change']:>10.4f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
