"""Editing models held in bfloat16 and float16: keys, C and the update in float32 (float64 for
the solves), the delta applied in the weight's dtype, perplexity in float32.

Tiny random models of two orientations in both half dtypes, then one real edit of the demo
model loaded in bfloat16.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest, load_requests
from auditor.run.edit import Editor

RESOURCES = Path(__file__).parent.parent / "resources" / "demo"
TINY_HP = {"layer": 0, "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 5, "context_n": 2,
           "context_len": 4}
REQUEST = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_half_precision_edit_of_tiny_models(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path, model_type: str, dtype: str
) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu", dtype=dtype)
    name = lm.spec.weight_name(0)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    res = Editor(lm).edit(REQUEST, hparams=TINY_HP, allow_collapse=True)
    assert res.status == "applied", res.error
    assert res.dtype == dtype
    assert res.delta.left.dtype == res.delta.right.dtype == torch.float32  # computed in float32
    after = dict(lm.model.named_parameters())
    assert after[name].dtype == getattr(torch, dtype)  # applied in the weight's dtype
    assert [n for n in before if not torch.equal(before[n], after[n])] == [name]
    # the stored weight is the float32 sum rounded once to the half dtype
    expected = (before[name].float() + res.delta.dense()).to(getattr(torch, dtype))
    assert torch.equal(after[name].detach(), expected)
    # the real module maps k* close to v* (rounding W' to 8 or 11 mantissa bits costs a little)
    with torch.no_grad():
        out = lm.spec.module(lm.model, 0)(res.vectors["k_cur"][None, None, :].to(after[name].dtype))[0, 0].float()
    v = res.vectors["v_star"]
    assert float((out - v).norm() / v.norm()) < (0.05 if dtype == "bfloat16" else 0.01)
    for key in ("ppl_before", "ppl_after"):
        assert math.isfinite(res.metrics[key]) and res.metrics[key] > 1


@pytest.mark.slow
def test_demo_edit_in_bfloat16(demo_dir: Path) -> None:
    lm = load_model(demo_dir, device="cpu", dtype="bfloat16")
    (req,) = [r for r in load_requests(RESOURCES / "known_facts.json") if r.case_id == "capital-france"]
    res = Editor(lm).edit(req, dry_run=True)
    assert res.status == "dry-run", res.error
    assert res.metrics["efficacy"] == 1.0 and res.metrics["efficacy_before"] == 0.0
    assert res.metrics["ppl_ratio"] < 1.05
    assert not res.collapse_risk
    print(f"\nbfloat16 demo edit: {res.timings['total']:.1f} s, ppl {res.metrics['ppl_before']:.2f} -> "
          f"{res.metrics['ppl_after']:.2f}, denominator {res.diagnostics['denominator']:.3f}")
