"""MEMIT's defaults are the reference's (issue 19), checked against a re-implementation here.

Re-implemented from kmeng01/memit as plainly as possible, one request at a time, on a tiny random
model of every family:

* ``compute_ks.py``: a request's key is the mean of the keys within each template group, then the
  mean over the groups; the groups are ``[["{}"], [the generated prefixes]]``, so the bare prompt
  weighs 1/2 (the ``"flat"`` option weighs every template alike);
* ``compute_z.py``: z* = z + delta, delta added to the *block's* output (the residual stream) at the
  subject's last token of every template row, loss = NLL + KL + ``v_weight_decay`` ||delta|| / ||z||^2,
  Adam, ``||delta|| <= clamp_norm_factor * ||z||`` (0.75), stop once the *total* loss is below 5e-2.

The engine runs its own way (batched keys and v*, the suffix-only forward, delta added to the MLP
output); keys and z* must agree to float tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.engine import rome
from auditor.engine.methods import block_outputs
from auditor.engine.registry import get_method
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest
from auditor.run.edit import Editor
from v_reference import reference_loop

FAMILIES = ["llama", "gpt2", "gptj", "gpt_neox"]
TEMPLATES = ["{}", "The river ran high that spring. {}", "Because it was late. {}", "I think. {}"]
REQUESTS = [
    EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome city", target_true="Paris"),
    EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="violin", target_true="trumpet"),
]
# one layer, the last of two: its keys see the context in every family (GPT-J's layer-0 MLP input does not)
HP = {"layers": [1], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 10, "v_lr": 0.5,
      "context_templates": TEMPLATES}


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text)["input_ids"]


def _lookup(tok: Any, filled_template: str, subject: str) -> int:
    """kmeng01/memit ``find_fact_lookup_idx`` with ``subject_last``."""
    return len(_ids(tok, filled_template[: filled_template.index("{}")] + subject)) - 1


def _block(lm: Any, layer: int) -> torch.nn.Module:
    return lm.model.get_submodule(lm.spec.layers)[layer]


def reference_keys(lm: Any, req: EditRequest, layer: int) -> torch.Tensor:
    """compute_ks.py: per-group means of the down-projection's input, then their mean."""
    module = lm.spec.module(lm.model, layer)
    keys = []
    for t in TEMPLATES:
        filled = t.format(req.prompt)
        seen = {}
        h = module.register_forward_pre_hook(lambda _m, a: seen.update(k=a[0][0].clone()))
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([_ids(lm.tokenizer, filled.format(req.subject))]))
        h.remove()
        keys.append(seen["k"][_lookup(lm.tokenizer, filled, req.subject)])
    groups = [keys[:1], keys[1:]]  # [["{}"], the prefixes]
    return torch.stack([torch.stack(g).mean(0) for g in groups]).mean(0)


def reference_z(lm: Any, req: EditRequest, layer: int, hp: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """compute_z.py for one request: (z, z*, steps)."""
    tok = lm.tokenizer
    target = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    rows = [_ids(tok, t.format(req.prompt).format(req.subject)) + target[:-1] for t in TEMPLATES]
    rows.append(_ids(tok, f"{req.subject} is a"))
    lookups = [_lookup(tok, t.format(req.prompt), req.subject) for t in TEMPLATES] + \
        [_lookup(tok, "{} is a", req.subject)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    n_rw = len(TEMPLATES)
    targets = torch.full((n_rw, width), -100)
    for i, r in enumerate(rows[:n_rw]):
        targets[i, len(r) - len(target):len(r)] = torch.tensor(target)  # ex_len - len(target) : ex_len
    delta = torch.zeros(lm.model.config.hidden_size if hasattr(lm.model.config, "hidden_size")
                        else lm.model.config.n_embd, requires_grad=True)
    state: dict[str, Any] = {}

    def edit_output(_m, _a, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if "init" not in state:
            state["init"] = hidden[0, lookups[0]].detach().clone()
        hidden = hidden.clone()
        for i, idx in enumerate(lookups):
            hidden[i, idx, :] += delta
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
        # as compute_z.py: target token j sits at the position whose logits predict it
        log_probs = torch.log_softmax(logits[:n_rw], dim=2)
        lp = torch.gather(log_probs, 2, torch.where(targets != -100, targets, 0).unsqueeze(2)).squeeze(2)
        nll = (-(lp * (targets != -100)).sum(1) / len(target)).mean()
        return nll, torch.log_softmax(logits[n_rw, lookups[-1]][None], dim=1)

    handle = _block(lm, layer).register_forward_hook(edit_output)
    try:
        steps = reference_loop(hp, delta, state, forward)
    finally:
        handle.remove()
    return state["init"], (state["init"] + delta).detach(), steps


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_memit_keys_and_z_star_are_the_references(tiny_checkpoint: Callable[..., Path], isolated_cache: Path,
                                                  model_type: str) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    hp = get_method("memit").hparams(lm, HP)
    # the defaults the reference uses, from the family's file
    assert (hp.key_average, hp.z_norm, hp.clamp_norm_factor, hp.early_stop_on, hp.early_stop_loss) == \
        ("groups", "residual", 0.75, "total", 0.05)
    refs = [reference_z(lm, r, 1, hp) for r in REQUESTS]
    keys1 = torch.stack([reference_keys(lm, r, 1) for r in REQUESTS])  # (n, in)
    result = Editor(lm).edit_batch(REQUESTS, method="memit", hparams=HP, allow_collapse=True, measure_ppl=False)
    assert result.status == "applied", result.error
    v = result.vectors
    assert _rel(v["K"][0].T, keys1) < 1e-5
    flat = torch.stack([rome.compute_keys(lm, r, 1, TEMPLATES).mean for r in REQUESTS])
    assert _rel(flat, keys1) > 1e-3  # the check can tell the two averages apart
    bound = 0
    for i, (z, z_star, steps) in enumerate(refs):
        assert result.per_request[i]["v_steps"] == steps
        assert _rel(v["z_star"][i], z_star) < 1e-4
        shift = float((z_star - z).norm())
        assert shift <= 0.75 * float(z.norm()) * (1 + 1e-5)
        bound += shift > 0.75 * float(z.norm()) * (1 - 1e-4)
    assert bound  # the clamp was reached at least once: the test exercises it


def test_memit_options_keep_the_older_behaviour(tiny_checkpoint: Callable[..., Path], isolated_cache: Path) -> None:
    """key_average "flat" is every template alike; z_norm "mlp_output" clamps on ||v_init|| (ROME's)."""
    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    hp = {**HP, "key_average": "flat", "z_norm": "mlp_output", "clamp_norm_factor": 0.5, "v_lr": 2.0}
    z = block_outputs(lm, 1, REQUESTS)
    result = Editor(lm).edit_batch(REQUESTS, method="memit", hparams=hp, allow_collapse=True, measure_ppl=False)
    assert result.status == "applied", result.error
    flat = torch.stack([rome.compute_keys(lm, r, 1, TEMPLATES).mean for r in REQUESTS])
    assert _rel(result.vectors["K"][0].T, flat) < 1e-5
    for i, per in enumerate(result.per_request):
        assert per["shift_norm"] == pytest.approx(0.5 * per["v_init_norm"], rel=1e-4)  # clamp on the MLP output
        assert per["shift_norm"] < 0.5 * float(z[i].norm())  # not on the residual
