"""After a revert, the later edits are re-measured and those whose efficacy changed are listed
(auditor/run/recheck.py, recorded in the revert's entry).

A dependent entry, built on purpose on a tiny random model (seeded): edit 1 makes the prompt prefer
the new target (efficacy 1); edit 2 asks for the same fact again with no v* step, so its own update
is almost nothing (v* = v_init) and its recorded efficacy 1 rests on edit 1. Reverting edit 1 takes
the answer away from edit 2's prompt although edit 2 stays applied: the revert lists it. Every later
edit is listed exactly when an independent re-measurement disagrees with its record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from auditor.measure import metrics
from auditor.model.requests import EditRequest
from auditor.run.recheck import recheck_later, recorded_efficacy
from auditor.run.workspace import Workspace

# layer 0, the subject last in the prompt: delta reaches the prediction directly (a tiny model's
# attention carries little); one template, so v* = v_init makes ROME's residual zero
HP = {"layer": 0, "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 20, "v_lr": 1.0, "context_n": 0}


def test_a_revert_lists_the_later_edit_that_depended_on_it(tiny_checkpoint: Callable[..., Path],
                                                            isolated_cache: Path, tmp_path: Path) -> None:
    ws = Workspace.init(tiny_checkpoint("llama"), tmp_path / "ws", device="cpu")
    fact = EditRequest(prompt="The capital of {}", subject="France", target_new="Rome", target_true="Paris")
    if metrics.success(ws.lm, [fact.text], "Rome", "Paris")[0]:  # the random model must not prefer it already
        fact = EditRequest(prompt=fact.prompt, subject="France", target_new="Paris", target_true="Rome")
    other = EditRequest(prompt="The instrument of {}", subject="Miles Davis", target_new="violin",
                        target_true="trumpet")
    first, e1 = ws.edit(fact, hparams=HP, allow_collapse=True, measure_ppl=False)
    again, e2 = ws.edit(fact, hparams={**HP, "v_num_grad_steps": 1}, allow_collapse=True, measure_ppl=False)
    third, e3 = ws.edit(other, hparams=HP, allow_collapse=True, measure_ppl=False)
    assert [r.status for r in (first, again, third)] == ["applied"] * 3
    assert recorded_efficacy(e1) == recorded_efficacy(e2) == [1.0]
    assert again.diagnostics["update_norm"] < 1e-4 * first.diagnostics["update_norm"]  # edit 2 adds ~nothing

    revert = ws.revert(e1.id)
    recheck = revert["diagnostics"]["recheck"]
    assert recheck["checked"] == [e2.id, e3.id] and recheck["requests"] == 2
    listed = {(c["entry"], c["recorded"], c["now"]) for c in recheck["changed"]}
    assert (e2.id, 1.0, 0.0) in listed
    for e, req in ((e2, fact), (e3, other)):  # independently: listed iff the record and the model disagree
        now = metrics.success(ws.lm, [req.text], req.target_new, req.target_true)[0]
        assert ((e.id, recorded_efficacy(e)[0], now) in listed) == (now != recorded_efficacy(e)[0])
    assert recheck_later(ws.lm, ws.ledger, e1.id) == recheck
    assert ws.verify()["ok"]
    ws.close()
