"""AlphaEdit's null space is chosen by the energy it may hold, and what the update does is measured.

* ``nullspace_rule="energy"`` (an option; the default is the reference's threshold): P spans the most eigenvectors of C, smallest first,
  whose eigenvalues sum to at most ``nullspace_energy`` of tr(C); the recorded share
  tr(P C) / tr(C) is at most that fraction, and the rule is scale-free (C times any factor gives the
  same P), which an absolute eigenvalue threshold is not;
* ``held_out_change``: the relative change of each edited layer's output on held-out text keys
  (the perplexity sentences, which C never saw) is recorded for MEMIT and AlphaEdit alike, and is
  near zero for AlphaEdit, far below MEMIT's on the same requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.engine.alphaedit import energy_projector, projector
from auditor.engine.registry import get_method
from auditor.engine.stats import held_out_keys
from auditor.model.checkpoint import load_model
from auditor.model.requests import EditRequest
from auditor.run.edit import Editor

TINY = {"layers": [0, 1], "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6,
        "context_n": 2, "context_len": 4}
REQUESTS = [
    EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome", target_true="Paris"),
    EditRequest(prompt="{} plays the", subject="Miles Davis", target_new="violin", target_true="trumpet"),
]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fraction=st.floats(0.001, 0.5), scale=st.floats(1e-4, 1e4),
       dim=st.integers(2, 24))
def test_energy_projector_holds_at_most_the_fraction_and_is_scale_free(seed: int, fraction: float, scale: float,
                                                                       dim: int) -> None:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(dim, 4 * dim, generator=g, dtype=torch.float64) * torch.logspace(0, -3, dim, dtype=torch.float64)[:, None]
    C = X @ X.T / X.shape[1]
    P, d = energy_projector(C, fraction)
    held = float(torch.trace(P @ C) / torch.trace(C))
    assert held <= fraction + 1e-12
    ev = torch.linalg.eigvalsh(C).clamp(min=0)
    if d < dim:  # one more direction would exceed the fraction: P is the largest such space
        assert float(ev[: d + 1].sum() / ev.sum()) > fraction - 1e-12
    P2, d2 = energy_projector(C * scale, fraction)
    assert d2 == d and torch.allclose(P2, P, atol=1e-8)
    # the absolute threshold is not scale-free: scaling C moves how many directions fall below it
    t = float(ev[dim // 2])
    assert projector(C * 4, t)[1] <= projector(C, t)[1]


def test_alphaedit_records_its_null_space_and_a_near_zero_change_on_held_out_keys(
        tiny_checkpoint: Callable[..., Path], isolated_cache: Path) -> None:
    lm = load_model(tiny_checkpoint("llama"), device="cpu")
    assert get_method("alphaedit").hparams(lm, TINY).nullspace_rule == "threshold"  # the reference's, by default
    energy = {**TINY, "nullspace_rule": "energy", "nullspace_energy": 0.01}
    hpo = get_method("alphaedit").hparams(lm, energy)
    editor = Editor(lm)
    kh = {layer: held_out_keys(lm, layer) for layer in (0, 1)}  # before any edit
    memit = editor.edit_batch(REQUESTS, method="memit", hparams=TINY, dry_run=True, measure_ppl=False)
    alpha = editor.edit_batch(REQUESTS, method="alphaedit", hparams={**energy, "L2": 0.1}, allow_collapse=True,
                              measure_ppl=False)
    assert memit.status == "dry-run" and alpha.status == "applied", (memit.error, alpha.error)
    for i, (m, a) in enumerate(zip(memit.diagnostics["layers"], alpha.diagnostics["layers"])):
        C = editor.method_second_moment(hpo, a["layer"]).double()
        assert 0 < a["null_space_dim"] < C.shape[0]
        assert a["null_space_energy"] <= 0.01
        P, d = energy_projector(C, 0.01)
        assert d == a["null_space_dim"]
        assert a["null_space_energy"] == pytest.approx(float(torch.trace(P @ C) / torch.trace(C)), rel=1e-9)
        # the recorded change is the one the stored update makes on the held-out keys
        D = lm.spec.as_out_in(alpha.delta.part(a["param"]).dense()).double()
        W = lm.spec.as_out_in(lm.model.get_parameter(a["param"]).detach()).double() - D
        Kh = kh[a["layer"]]
        assert a["held_out_change"] == pytest.approx(float((D @ Kh).norm() / (W @ Kh).norm()), rel=1e-3)
        assert m["held_out_change"] > 0 and m["held_out_keys"] == a["held_out_keys"] == Kh.shape[1]
        assert a["held_out_change"] < 0.1 * m["held_out_change"]
        assert a["held_out_change"] < 1e-2
