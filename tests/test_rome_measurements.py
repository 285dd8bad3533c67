"""Measurements that do not fool (issue 10, item 3).

* prefixed_efficacy is measured behind prefixes the v* optimisation never saw (a held-out seed);
* each metric key has one definition: CounterFact's efficacy needs a true target, EasyEdit's
  token accuracy has its own name;
* u = C^-1 k_bar gets a small ridge relative to C's mean eigenvalue; the token count and the
  condition numbers of C are recorded with every edit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.engine import rome
from auditor.engine.stats import conditioning, second_moment
from auditor.measure import metrics
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest, load_requests
from auditor.run.edit import HELD_OUT_N, Editor

RESOURCES = Path(__file__).parent.parent / "resources" / "demo"


@pytest.mark.slow
def test_prefixed_efficacy_uses_held_out_prefixes(demo: Any) -> None:
    editor = Editor(demo)
    hp = editor.hparams()
    used = editor.context_templates(hp)
    held = editor.held_out_templates(hp, used)
    assert len(held) == HELD_OUT_N and not set(held) & set(used)
    assert all(t.endswith(". {}") and t != "{}" for t in held)
    assert editor.held_out_templates(hp, used) == held  # seeded: the same prefixes every time


@pytest.mark.slow
def test_each_metric_has_one_definition(demo: Any) -> None:
    (known,) = [r for r in load_requests(RESOURCES / "known_facts.json") if r.case_id == "capital-france"]
    no_true = EditRequest(prompt=known.prompt, subject=known.subject, target_new=known.target_new)
    with_true = metrics.evaluate(demo, known, before_neighborhood=None, prefix_templates=["It was late. {}"])
    without = metrics.evaluate(demo, no_true, before_neighborhood=None, prefix_templates=["It was late. {}"])
    # CounterFact's efficacy (new beats true) exists only with a true target; the unedited model
    # knows the fact, so the new target loses
    assert with_true["efficacy"] == 0.0 and without["efficacy"] is None
    assert without["prefixed_efficacy"] is None and with_true["prefixed_n"] == 1
    # EasyEdit's token accuracy is its own key, the same with or without a true target
    acc = metrics.score(demo, [known.text], [known.target_new])[0].accuracy
    assert with_true["rewrite_accuracy"] == without["rewrite_accuracy"] == acc
    assert without["target_prob"] == pytest.approx(with_true["target_prob"], rel=1e-4)


def test_ridge_keeps_u_finite_when_c_holds_fewer_tokens_than_dimensions(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path
) -> None:
    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    C, info = second_moment(lm, 0, n_tokens=32, seq_len=16)  # 32 tokens, 48 key dimensions: C is singular
    assert info["tokens"] == 32 and C.shape == (48, 48)
    plain, ridged = conditioning(C, 0.0), conditioning(C, 1e-3)
    assert plain["condition"] > 1e6 or math.isinf(plain["condition"])
    assert ridged["condition_ridged"] < 1e5
    request = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris")
    keys = rome.compute_keys(lm, request, 0, ["{}", "It was late. {}"])
    u = rome.key_side(keys, rome.regularised(C, 1e-3), "consistent").u
    assert torch.isfinite(u).all()
    # the engine records the statistics' size and conditioning with the edit (a fresh cache here)
    res = Editor(lm).edit(request, hparams={"layer": 0, "mom2_n_tokens": 32, "mom2_seq_len": 16,
                                            "v_num_grad_steps": 2, "context_n": 1, "context_len": 3},
                          dry_run=True, measure_ppl=False, allow_collapse=True)
    st = res.diagnostics["stats"]
    assert st["tokens"] == 32 and st["tokens_per_dim"] == pytest.approx(32 / 48)
    assert st["ridge"] == 1e-3 and st["condition_ridged"] == pytest.approx(ridged["condition_ridged"])
    # a cached C reports its token count too
    assert second_moment(lm, 0, n_tokens=32, seq_len=16)[1] == {**info, "cached": True}
