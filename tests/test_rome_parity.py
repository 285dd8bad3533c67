"""Parity with the reference: ``original`` mode equals ROME's equations, re-implemented here.

The re-implementation below is written from the paper (Meng et al. 2022, section 3.1 and
appendix) and the steps of kmeng01/rome (``compute_u.py``, ``compute_v.py``,
``rome_main.py``), as plainly as possible: one prompt at a time for the keys, one row per
(template, target token) pair for v* (the reference's layout, right-padded, full forward
every step), PyTorch's ``kl_div(log_init, log_new, log_target=True)``, early stop on the total
loss, the update ``u (v* - W k - b)^T / (u . k)`` in GPT-2's [in, out] orientation. The engine
runs its own way (batched keys, the suffix-only v* loop, rank-one Delta) on a tiny GPT-2 with
fixed seeds; key, u, v* and the update must agree to float tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.engine import rome
from auditor.engine.hparams import load_hparams
from auditor.engine.stats import second_moment
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest
from v_reference import reference_loop

LAYER = 0  # the first of two blocks: delta reaches the answer positions through block 1
TEMPLATES = ["{}", "The river ran high that spring. {}", "Because it was late. {}"]
REQUEST = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome city", target_true="Paris")
HP = {"layer": LAYER, "v_num_grad_steps": 12, "v_lr": 0.2, "v_weight_decay": 0.001, "clamp_norm_factor": 4.0,
      "kl_factor": 0.0625, "early_stop_loss": 0.05, "kl_direction": "reference", "early_stop_on": "total",
      "context_templates": TEMPLATES, "mom2_n_tokens": 2048, "mom2_seq_len": 64, "mom2_ridge": 0.0}


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text)["input_ids"]


def _last_subject_token(tok: Any, filled_template: str, subject: str) -> int:
    """kmeng01/rome ``repr_tools.get_word_idx_in_template`` with ``subtoken="last"``."""
    prefix = filled_template[: filled_template.index("{}")]
    return len(_ids(tok, prefix)) + (len(_ids(tok, prefix + subject)) - len(_ids(tok, prefix))) - 1


def _module_io(model: Any, tok: Any, text: str, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of the edited c_proj at token ``idx`` of ``text``, one prompt alone."""
    mod = model.transformer.h[LAYER].mlp.c_proj
    seen = {}
    h = mod.register_forward_hook(lambda _m, a, o: seen.update(i=a[0][0, idx].clone(), o=o[0, idx].clone()))
    with torch.no_grad():
        model(input_ids=torch.tensor([_ids(tok, text)]))
    h.remove()
    return seen["i"], seen["o"]


def reference_rome(model: Any, tok: Any, req: EditRequest, C: torch.Tensor, hp: Any) -> dict[str, torch.Tensor]:
    prompt, subject = req.prompt, req.subject
    # compute_u: the mean key over the context templates, u = C^-1 k_bar / ||C^-1 k_bar||
    keys = []
    for t in TEMPLATES:
        filled = t.format(prompt)
        keys.append(_module_io(model, tok, filled.format(subject), _last_subject_token(tok, filled, subject))[0])
    k_bar = torch.stack(keys).mean(0)
    u = torch.linalg.solve(C.double(), k_bar.double()).float()
    u = u / u.norm()

    # compute_v: one row per (template, target token), right-padded, the whole model every step
    target = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    rows, lookups, answers = [], [], []
    for t in TEMPLATES:
        filled = t.format(prompt)
        for i in range(len(target)):
            rows.append(_ids(tok, filled.format(subject)) + target[:i])
            lookups.append(_last_subject_token(tok, filled, subject))
            answers.append(target[i])
    rows.append(_ids(tok, "{} is a".format(subject)))
    lookups.append(_last_subject_token(tok, "{} is a", subject))
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    last = torch.tensor([len(r) - 1 for r in rows[:-1]])
    delta = torch.zeros(model.config.n_embd, requires_grad=True)
    state: dict[str, Any] = {}

    def edit_output(_m, _a, out):
        if "init" not in state:
            state["init"] = out[0, lookups[0]].detach().clone()
        for i, idx in enumerate(lookups):
            out[i, idx, :] += delta
        return out

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(input_ids=ids, attention_mask=mask).logits
        log_dist = torch.log_softmax(logits[torch.arange(len(last)), last], dim=1)
        nll = -log_dist[torch.arange(len(last)), torch.tensor(answers)].mean()
        return nll, torch.log_softmax(logits[-1, lookups[-1]][None], dim=1)

    handle = model.transformer.h[LAYER].mlp.register_forward_hook(edit_output)
    steps = reference_loop(hp, delta, state, forward)
    handle.remove()
    v_star = (state["init"] + delta).detach()

    # rome_main: right = (v* - W k - b) / (k . u) at the bare prompt; update u right^T, [in, out]
    k_bare, out_bare = _module_io(model, tok, req.text, _last_subject_token(tok, prompt, subject))
    right = (v_star - out_bare) / torch.dot(k_bare, u)
    return {"k_bar": k_bar, "k_bare": k_bare, "u": u, "v_star": v_star, "update": u[:, None] @ right[None, :],
            "steps": steps}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_original_mode_matches_the_reference_equations(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path
) -> None:
    lm = load_model(tiny_checkpoint("gpt2"), device="cpu")  # seeded random weights (conftest.save_tiny)
    hp = load_hparams("gpt2", HP)
    C, _ = second_moment(lm, LAYER, n_tokens=hp.mom2_n_tokens, seq_len=hp.mom2_seq_len)
    ref = reference_rome(lm.model, lm.tokenizer, REQUEST, C, hp)
    torch.manual_seed(0)
    out = rome.compute_rome(lm, REQUEST, hp, "original", C, TEMPLATES)

    assert len(lm.tokenizer(" Rome city", add_special_tokens=False)["input_ids"]) >= 2  # multi-token target
    assert out.diagnostics["v_steps"] == ref["steps"] and out.diagnostics["v_path"] == "suffix"
    assert _rel(out.keys.bare, ref["k_bare"]) < 1e-5
    assert _rel(out.keys.mean, ref["k_bar"]) < 1e-5
    assert _rel(out.delta.right, ref["u"]) < 1e-4
    assert _rel(out.v_star, ref["v_star"]) < 1e-4
    assert lm.spec.transposed and out.delta.dense().shape == ref["update"].shape  # GPT-2: [in, out]
    assert _rel(out.delta.dense(), ref["update"]) < 1e-4


def test_kl_direction_is_the_references_by_default_and_the_other_on_request() -> None:
    init = torch.log_softmax(torch.tensor([2.0, 0.5, -1.0]), 0)
    new = torch.log_softmax(torch.tensor([0.0, 1.5, -0.5]), 0)
    kl_new_init = float((new.exp() * (new - init)).sum())  # KL(P_new || P_init)
    kl_init_new = float((init.exp() * (init - new)).sum())
    assert kl_new_init != pytest.approx(kl_init_new)
    assert load_hparams("llama").kl_direction == "reference"
    assert float(rome._kl(new, init, "reference")) == pytest.approx(kl_new_init)
    assert float(rome._kl(new, init, "forward")) == pytest.approx(kl_init_new)
