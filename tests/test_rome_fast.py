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

from auditor import rome
from auditor.checkpoint import load_model
from auditor.hparams import load_hparams
from auditor.requests import EditRequest, load_requests

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
