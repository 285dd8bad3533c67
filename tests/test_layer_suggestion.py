"""The layer suggested by causal tracing of the known facts: reported, cached, used without a file.

One suggestion of the demo model (ten known facts, MLP restorations at the subject's last token)
is computed once into a module-private cache folder and shared by the asserts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from auditor.engine.hparams import load_hparams
from auditor.measure.layer_suggestion import RANGE_FRACTION, default_facts, peak_band, suggest_layer
from auditor.model.requests import EditRequest
from auditor.run.edit import Editor


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("trace-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDIT_AUDITOR_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def suggestion(demo: Any, cache: Path) -> Any:
    return suggest_layer(demo)


def test_suggestion_is_reported_for_the_known_facts(demo: Any, suggestion: Any) -> None:
    facts = default_facts()
    assert len(facts) == 10 and len(suggestion.facts) == 10
    assert suggestion.used >= 8  # corrupting the subject lowers P(true answer) for nearly all of them
    assert 0 <= suggestion.low <= suggestion.layer <= suggestion.high < demo.n_layers
    assert "layer" in suggestion.summary() and str(suggestion.layer) in suggestion.summary()
    for rec, fact in zip(suggestion.facts, facts):
        assert rec["subject"] == fact["subject"] and fact["answer"].startswith(rec["answer_token"].strip())
        assert len(rec["mlp_effect"]) == demo.n_layers and np.isfinite(rec["mlp_effect"]).all()
        assert rec["clean_prob"] > rec["corrupted_prob"] or not rec["used"]
    # the suggestion is the peak of the mean normalised effect of the facts with a signal
    mean = np.mean([r["normalised"] for r in suggestion.facts if r["used"]], axis=0)
    np.testing.assert_allclose(suggestion.effect, mean)
    assert suggestion.layer == int(np.argmax(mean))
    band = mean[suggestion.low:suggestion.high + 1]
    assert (band >= RANGE_FRACTION * mean.max()).all()


def test_suggestion_is_cached_per_fingerprint(demo: Any, suggestion: Any, cache: Path) -> None:
    again = suggest_layer(demo)
    assert again.cached and not suggestion.cached
    assert again.layer == suggestion.layer and again.effect == suggestion.effect
    assert Path(again.file).parent == cache / "trace"
    other = suggest_layer(demo, default_facts()[:1], samples=2)  # other facts: another cache entry
    assert not other.cached and other.file != again.file


def test_peak_band() -> None:
    assert peak_band(np.array([0.1, 0.5, 0.9, 1.0, 0.85, 0.2, 0.95])) == (3, 2, 4)


def test_editor_uses_the_suggestion_when_the_family_has_no_file(demo: Any, suggestion: Any,
                                                                tmp_path: Path) -> None:
    editor = Editor(demo)
    assert editor.hparams().layer == load_hparams("llama").layer and editor.layer_suggestion is None
    editor.hparams_file = tmp_path / "llama.json"  # a family without a hyper-parameter file
    assert editor.hparams({"layer": 7}).layer == 7 and editor.layer_suggestion is None
    hp = editor.hparams()
    assert hp.layer == suggestion.layer
    assert editor.layer_suggestion.cached and editor.layer_suggestion.layer == suggestion.layer
    request = EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome",
                          target_true="Paris")
    result = editor.edit(request, dry_run=True, measure_ppl=False,
                         hparams={"mom2_adjustment": False, "v_num_grad_steps": 1, "context_n": 0})
    assert result.status == "dry-run" and result.layer == suggestion.layer
