"""The fast v* loop (suffix_forward.py) finds the same v* as the plain full forward pass.

Tiny random models of every family, then the demo model: same templates, same
hyper-parameters, early stop off, so both runs take every step; v_init, every loss of the
curve and v* must agree to float tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.engine import rome
from auditor.engine.hparams import load_hparams
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest, load_requests

RESOURCES = Path(__file__).parent.parent / "resources" / "demo"
REQUEST = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome city", target_true="Paris")
FIRST = EditRequest(prompt="{} is a country in", subject="France", target_new="Asia", target_true="Europe")
# one target token: the rewriting rows end one column after the lookup
SHORT = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris")
TEMPLATES = ["{}", "The weather was fine. {}", "Because of this. {}", "I think so too, and we went home. {}"]


def _both(lm: Any, request: EditRequest, layer: int, templates: list[str], **overrides: Any):
    hp = load_hparams(lm.spec.family, {"layer": layer, "early_stop_loss": 0.0, **overrides})
    full = rome.optimise_value(lm, request, layer, templates, hp, fast=False)
    fast = rome.optimise_value(lm, request, layer, templates, hp, fast=True)
    return full, fast


def _assert_same(full: rome.ValueResult, fast: rome.ValueResult, tol: float) -> None:
    assert full.path == "full" and fast.path == "suffix"
    assert full.steps == fast.steps
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert rel(fast.v_init, full.v_init) < tol
    assert rel(fast.v_star, full.v_star) < tol
    assert fast.losses == pytest.approx(full.losses, rel=tol, abs=tol)


@pytest.mark.parametrize("model_type, layer", [
    ("llama", 0), ("llama", 1),  # layer 1 is the last block: nothing above it runs
    ("gpt2", 0), ("gptj", 0), ("gpt_neox", 0),
])
def test_fast_v_star_equals_full_forward_on_tiny_models(
    tiny_checkpoint: Callable[..., Path], model_type: str, layer: int
) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    # the subject inside the prompt, at position 0; a short target (not at the last block, where no
    # loss position can see delta: the gradient is float noise there and Adam amplifies it)
    requests = (REQUEST, FIRST) if layer == lm.n_layers - 1 else (REQUEST, FIRST, SHORT)
    for request in requests:
        full, fast = _both(lm, request, layer, TEMPLATES, v_num_grad_steps=8, v_lr=0.5)
        _assert_same(full, fast, 1e-4)
        assert not torch.equal(full.v_star, full.v_init)  # the loop moved v*


@pytest.mark.slow
def test_fast_v_star_equals_full_forward_on_the_demo(demo: Any) -> None:
    (first,) = [r for r in load_requests(RESOURCES / "first_token_subjects.json") if r.case_id == "france-continent"]
    full, fast = _both(demo, first, 7, TEMPLATES, v_num_grad_steps=6)
    _assert_same(full, fast, 1e-3)


LONG = EditRequest(prompt="{} was born in the city of", subject="Marie Curie", target_new="Warsaw in Poland",
                   target_true="Paris")


def _joint_matches_alone(lm: Any, requests: list, layer: int, hp: Any, fast: bool) -> list:
    alone = [rome.optimise_value(lm, r, layer, TEMPLATES, hp, fast=fast) for r in requests]
    steps: list = []
    together = rome.optimise_values(lm, requests, layer, TEMPLATES, hp, fast=fast,
                                    on_step=lambda step, *_: steps.append(step))
    assert steps == list(range(1, max(a.steps for a in alone) + 1))
    for a, t in zip(alone, together):
        assert t.steps == a.steps and t.path == a.path
        assert t.losses == pytest.approx(a.losses, rel=1e-4, abs=1e-5)
        assert float((t.v_star - a.v_star).norm() / a.v_star.norm()) < 1e-4
        # v_init is the block's output for the batch (padded) or alone: float32 sums in another
        # order, whose error scales with the vector, not the element (a small element of a large
        # vector can differ by ~1e-6 absolute). Measured spread on the demo: ~1e-6 of the norm.
        assert float((t.v_init - a.v_init).norm() / a.v_init.norm()) < 1e-5
    return alone


@pytest.mark.parametrize("model_type, fast", [("llama", True), ("llama", False), ("gpt2", True), ("gpt_neox", True)])
def test_joint_v_star_of_several_requests_equals_each_alone(
    tiny_checkpoint: Callable[..., Path], model_type: str, fast: bool
) -> None:
    """rome.optimise_values (MEMIT's and AlphaEdit's v*, one batch): each request gets the v* it
    gets alone; targets of 1 to 3+ tokens, subjects inside the prompt and at position 0."""
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    hp = load_hparams(lm.spec.family, {"layer": 0, "early_stop_loss": 0.0, "v_num_grad_steps": 6, "v_lr": 0.5})
    _joint_matches_alone(lm, [REQUEST, FIRST, SHORT, LONG], 0, hp, fast)


@pytest.mark.slow
def test_joint_v_star_freezes_each_request_where_it_would_stop_alone(demo: Any) -> None:
    """On the demo model the requests reach the early-stop criterion at different steps: a request
    that is done keeps its v* (Adam's momentum would move it) while the others go on."""
    requests = [r for r in load_requests(RESOURCES / "known_facts.json")[:3]]
    free = load_hparams("llama", {"layer": 7, "early_stop_loss": 0.0, "early_stop_on": "total", "v_num_grad_steps": 12})
    curves = [rome.optimise_value(demo, r, 7, TEMPLATES, free).losses for r in requests]

    def stops(thr: float) -> list[int]:
        return [next((s + 1 for s, v in enumerate(c) if v < thr), len(c)) for c in curves]

    # the threshold that spreads the requests' stopping steps the most, none stopping before a step
    threshold = max((v + 1e-6 for c in curves for v in c[1:]),
                    key=lambda thr: (min(stops(thr)) > 2, len(set(stops(thr))), -thr))
    hp = load_hparams("llama", {**free.to_dict(), "early_stop_loss": threshold})
    alone = _joint_matches_alone(demo, requests, 7, hp, True)
    assert min(a.steps for a in alone) > 2 and len({a.steps for a in alone}) > 1
