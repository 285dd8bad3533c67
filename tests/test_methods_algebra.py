"""MEMIT and AlphaEdit satisfy their defining equations on tiny random models of every family.

* MEMIT, per edited layer l with keys K (in, n) and residual share R (out, n):
  Delta_l (lambda C + K K^T) = R K^T, the optimality condition of
  min ||Delta K - R||^2 + lambda tr(Delta C Delta^T); the first layer's R is exactly
  (z* - z) / (number of layers) and its keys are each request's keys averaged as kmeng01/memit
  does (per template group, then over the groups; tests/test_memit_reference.py);
* AlphaEdit: Delta_l (S P + L2 I) = R K^T P with S = K_p K_p^T + K K^T (the key memory of
  earlier batches plus this one), and Delta_l k0 = 0 for every preserved key with P k0 = 0;
* both: only the edited down-projections change, the update read back from the model's weights
  (through the module's own forward pass) is the stored one, and the model computes with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from auditor.engine import rome
from auditor.engine.alphaedit import projector
from auditor.engine.methods import block_outputs
from auditor.engine.registry import get_method
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest
from auditor.run.edit import Editor

TINY = {"layers": [0, 1], "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6,
        "context_n": 2, "context_len": 4}
REQUESTS = [
    EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="violin", target_true="trumpet"),
    EditRequest(prompt="{} was written in", subject="Hamlet", target_new="Latin", target_true="English"),
]
FAMILIES = ["llama", "gpt2", "gptj", "gpt_neox"]


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _check_weights(lm, before: dict, result) -> None:
    """Only the edited matrices moved, by exactly what the module's forward pass shows."""
    after = _params(lm.model)
    assert sorted(n for n in before if not torch.equal(before[n], after[n])) == sorted(result.params)
    for layer, name in zip(result.layers, result.params):
        part = result.delta.part(name)
        stored = part.dense().double()  # stored orientation
        observed = (after[name].double() - before[name].double())
        assert _rel(observed, stored) < 1e-3
        module = lm.spec.module(lm.model, layer)
        k = torch.randn(lm.spec.key_dim(lm.model, layer))
        with torch.no_grad():
            now = module(k[None, None])[0, 0].double()
        was = (lm.spec.as_out_in(before[name]).double() @ k.double())
        expected = lm.spec.as_out_in(stored) @ k.double()
        assert _rel(now - was - (module.bias.double() if getattr(module, "bias", None) is not None else 0), expected) < 1e-2


@pytest.mark.parametrize("model_type", FAMILIES)
def test_memit_least_squares_optimality(tiny_checkpoint: Callable[..., Path], isolated_cache: Path,
                                        model_type: str) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    editor = Editor(lm)
    hp = {**TINY, "mom2_update_weight": 2.0}
    z_before = block_outputs(lm, 1, REQUESTS)
    hpo = get_method("memit").hparams(lm, hp)
    templates = editor.context_templates(hpo)
    # issue 19: MEMIT's default key is the reference's group mean (the bare prompt weighs 1/2, the
    # generated prefixes share the other half), no longer ROME's flat mean over the templates
    per = [rome.compute_keys(lm, r, 0, templates).per_template for r in REQUESTS]
    keys0 = torch.stack([(p[0] + p[1:].mean(0)) / 2 for p in per])  # (n, in)
    before = _params(lm.model)
    result = editor.edit_batch(REQUESTS, method="memit", hparams=hp, allow_collapse=True, measure_ppl=False)
    assert result.status == "applied", result.error
    v = result.vectors
    assert torch.allclose(v["K"][0].T.float(), keys0, atol=1e-5)  # the first layer's keys, as the reference
    assert torch.allclose(v["R"][0] * 2, (v["z_star"] - z_before).T.double(), atol=1e-5)  # half of z* - z
    for i, (layer, name) in enumerate(zip(result.layers, result.params)):
        K, R = v["K"][i], v["R"][i]
        C = editor.method_second_moment(hpo, layer).double()
        D = lm.spec.as_out_in(result.delta.part(name).dense()).double()  # (out, in)
        lhs, rhs = D @ (2.0 * C + K @ K.T), R @ K.T
        assert _rel(lhs, rhs) < 1e-8
        # the gradient of the objective vanishes: a nearby update is worse
        objective = lambda X: float(((X @ K - R) ** 2).sum() + 2.0 * torch.trace(X @ C @ X.T))  # noqa: E731
        assert objective(D) < objective(D + 1e-3 * torch.randn_like(D) * D.abs().mean())
        diag = result.diagnostics["layers"][i]
        assert diag["update_ratio"] == pytest.approx(float(D.norm()) / diag["weight_norm"], rel=1e-6)
    _check_weights(lm, before, result)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_alphaedit_projects_onto_the_null_space(tiny_checkpoint: Callable[..., Path], isolated_cache: Path,
                                                model_type: str) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    editor = Editor(lm)
    hpo = get_method("alphaedit").hparams(lm, TINY)
    C1 = editor.method_second_moment(hpo, 1).double()
    threshold = float(torch.linalg.eigvalsh(C1).median())  # half the key space is "preserved"
    hp = {**TINY, "nullspace_rule": "threshold", "nullspace_threshold": threshold, "L2": 0.1}
    first = editor.edit_batch(REQUESTS[:2], method="alphaedit", hparams=hp, allow_collapse=True, measure_ppl=False)
    assert first.status == "applied", first.error
    memory = {n: m.clone() for n, m in editor.key_memory.items()}
    assert sorted(memory) == sorted(first.params)
    before = _params(lm.model)
    second = editor.edit_batch(REQUESTS[2:], method="alphaedit", hparams=hp, allow_collapse=True, measure_ppl=False)
    assert second.status == "applied", second.error
    for i, (layer, name) in enumerate(zip(second.layers, second.params)):
        C = editor.method_second_moment(hpo, layer).double()
        P, null_dim = projector(C, threshold)
        assert 0 < null_dim < C.shape[0]
        K, R = second.vectors["K"][i], second.vectors["R"][i]
        D = lm.spec.as_out_in(second.delta.part(name).dense()).double()
        S = memory[name] + K @ K.T  # the first batch's keys, then this one's
        eye = torch.eye(C.shape[0], dtype=torch.float64)
        assert _rel(D @ (S @ P + 0.1 * eye), R @ K.T @ P) < 1e-8
        ev, U = torch.linalg.eigh(C)
        K0 = U[:, ev >= threshold]  # preserved directions: P K0 = 0
        assert float((D @ K0).norm()) < 1e-9 * float(D.norm()) * K0.shape[1] ** 0.5
        assert second.diagnostics["layers"][i]["null_space_dim"] == null_dim
        # through the weights: the preserved keys' outputs moved by no more than float32 rounding
        W_before, W_after = (lm.spec.as_out_in(t[name]).double() for t in (before, _params(lm.model)))
        moved = float(((W_after - W_before) @ K0).norm())
        assert moved < 1e-3 * float(((W_after - W_before) @ U).norm())
    _check_weights(lm, before, second)


def test_rome_behind_the_method_interface_is_rome(tiny_checkpoint: Callable[..., Path], isolated_cache: Path) -> None:
    """The interface's ROME gives the delta Editor.edit gives, and takes one request per update."""
    from auditor.run.batch import BatchFailed

    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    editor = Editor(lm)
    hp = {"layer": 1, "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 4, "context_n": 2,
          "context_len": 4}
    single = editor.edit(REQUESTS[0], hparams=hp, dry_run=True, measure_ppl=False)
    batch = editor.edit_batch(REQUESTS[:1], method="rome", hparams=hp, dry_run=True, measure_ppl=False)
    assert batch.status == single.status == "dry-run"
    assert batch.delta.content_hash() == single.delta.content_hash()
    assert batch.diagnostics["layers"][0]["denominator"] == pytest.approx(single.diagnostics["denominator"])
    with pytest.raises(BatchFailed, match="at most 1 request"):
        editor.edit_batch(REQUESTS[:2], method="rome", hparams=hp)
