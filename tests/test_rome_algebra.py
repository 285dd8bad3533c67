"""The ROME algebra on tiny random models of every orientation: W' k* + b = v*, rank one, nothing else moves.

Also: a NaN during the v* optimisation stops the edit and leaves the weights as they were, and
the key statistics cache is reused and invalidated exactly when it must be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from auditor.engine.stats import second_moment
from auditor.model.checkpoint import fingerprint_model, load_model
from auditor.model.requests import EditRequest
from auditor.run.edit import Editor

TINY_HP = {"layer": 1, "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6,
           "context_n": 2, "context_len": 4}
REQUEST = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris",
                      paraphrases=["The capital city of France is"])


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gptj", "gpt_neox"])
@pytest.mark.parametrize("key_mode", ["consistent", "original"])
def test_update_writes_v_star_at_the_current_key(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path, model_type: str, key_mode: str
) -> None:
    lm = load_model(tiny_checkpoint(model_type), device="cpu")
    before = _params(lm.model)
    result = Editor(lm).edit(REQUEST, key_mode=key_mode, hparams=TINY_HP, allow_collapse=True, measure_ppl=False)
    assert result.status == "applied", result.error
    name = lm.spec.weight_name(1)
    after = _params(lm.model)

    # every other parameter is bitwise unchanged
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == [name]

    # W' - W has rank one (in whatever orientation it is stored)
    diff = (after[name] - before[name]).double()
    s = torch.linalg.svdvals(diff)
    assert s[0] > 0 and s[1] / s[0] < 1e-5

    # the real module maps the mode's current key to v* (checks orientation through forward())
    module = lm.spec.module(lm.model, 1)
    k_cur, v_star = result.vectors["k_cur"], result.vectors["v_star"]
    with torch.no_grad():
        out = module(k_cur[None, None, :])[0, 0]
    assert torch.linalg.vector_norm(out - v_star) / torch.linalg.vector_norm(v_star) < 1e-3

    assert result.diagnostics["denominator"] == pytest.approx(float(result.vectors["u"] @ k_cur), rel=1e-4)
    assert result.fingerprint_after == fingerprint_model(lm.model) != result.fingerprint_before


def test_original_and_consistent_use_different_keys(tiny_checkpoint: Callable[..., Path], isolated_cache: Path) -> None:
    lm = load_model(tiny_checkpoint("gpt2"), device="cpu")
    editor = Editor(lm)
    orig = editor.edit(REQUEST, key_mode="original", hparams=TINY_HP, dry_run=True, measure_ppl=False)
    cons = editor.edit(REQUEST, key_mode="consistent", hparams=TINY_HP, dry_run=True, measure_ppl=False)
    assert not torch.allclose(orig.vectors["k_cur"], cons.vectors["k_cur"])
    assert torch.equal(orig.vectors["u"], cons.vectors["u"])  # the left vector is shared
    assert orig.fingerprint_after == cons.fingerprint_after == orig.fingerprint_before


def test_nan_loss_stops_the_edit_and_keeps_the_weights(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path
) -> None:
    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    with torch.no_grad():  # a damaged weight after the edited layer: the v* loss is NaN at once
        lm.model.get_parameter("model.norm.weight")[3] = float("nan")
    fp = fingerprint_model(lm.model)
    result = Editor(lm).edit(REQUEST, hparams=TINY_HP, measure_ppl=False)
    assert result.status == "failed"
    assert "nan" in result.error.lower() or "not finite" in result.error
    assert fingerprint_model(lm.model) == fp == result.fingerprint_after


def test_layer_out_of_range_is_a_clear_error(tiny_checkpoint: Callable[..., Path], isolated_cache: Path) -> None:
    from auditor.engine.hparams import HParamsError

    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    with pytest.raises(HParamsError, match="layer 7 is out of range: the model has 2 layers"):
        Editor(lm).edit(REQUEST, hparams={**TINY_HP, "layer": 7})


def test_statistics_cache_reuse_and_invalidation(
    tiny_checkpoint: Callable[..., Path], isolated_cache: Path, tmp_path: Path
) -> None:
    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    args: dict[str, Any] = {"n_tokens": 2048, "seq_len": 64}
    C1, info = second_moment(lm, 1, **args)
    assert info["cached"] is False and C1.shape == (48, 48)
    C2, info = second_moment(lm, 1, **args)
    assert info["cached"] is True and torch.equal(C1, C2)
    assert second_moment(lm, 0, **args)[1]["cached"] is False  # another layer
    assert second_moment(lm, 1, n_tokens=1024, seq_len=64)[1]["cached"] is False  # another count
    other = tmp_path / "other.txt"
    other.write_text("A different corpus of plain English prose about rivers and mountains. " * 400)
    assert second_moment(lm, 1, text_path=other, **args)[1]["cached"] is False  # another corpus
    with torch.no_grad():  # editing the edited matrix itself cannot change its keys: C still valid
        lm.spec.weight(lm.model, 1).add_(0.5)
    assert second_moment(lm, 1, **args)[1]["cached"] is True
    with torch.no_grad():  # any weight the keys depend on: recomputed
        lm.model.get_parameter("model.layers.0.mlp.up_proj.weight")[0, 0] += 1e-3
    C3, info = second_moment(lm, 1, **args)
    assert info["cached"] is False and not torch.equal(C1, C3)
    files = list((isolated_cache / "stats").glob("*.safetensors"))
    assert len(files) == 5
