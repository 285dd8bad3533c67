"""Asking the base and the edited model, and the default probes, on one real ROME edit of the demo model.

The edit request leaves every optional field empty (as a new user does); the default probes
(auditor.measure.default_probes) take the true target from the model's own answer, so efficacy,
generalization and locality are numbers, not dashes. :func:`auditor.run.ask.ask` then answers
with the base and the current model: they differ while the edit is in effect and agree after its
revert, and asking never changes the weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.measure.default_probes import (
    PARAPHRASE_PREFIXES,
    describe,
    first_words,
    with_default_probes,
)
from auditor.model.checkpoint import fingerprint_model
from auditor.model.requests import EditRequest, Probe
from auditor.run.ask import ask, weights_at
from auditor.run.workspace import Workspace

pytestmark = pytest.mark.slow

HPARAMS = {"context_templates": ["{}", "The following is a fact. {}"]}  # two templates: a faster edit
PROMPT = "The Eiffel Tower is located in the country of"
REQUEST = EditRequest(prompt="{} is located in the country of", subject="The Eiffel Tower", target_new="Italy")


@pytest.fixture(scope="module")
def ws(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    w = Workspace.init(demo_dir, tmp_path_factory.mktemp("ws-ask") / "workspace", device="cpu")
    w.measured, w.filled = with_default_probes(w.lm, REQUEST)
    w.first = w.edit(w.measured, hparams=HPARAMS, measure_ppl=False, note=describe(w.filled))
    yield w
    w.close()


def test_first_words_is_the_head_of_an_answer() -> None:
    assert first_words(" France. It is the most visited") == "France"
    assert first_words(" New York City, the largest city") == "New York City"
    assert first_words("\n\n") == ""


def test_default_probes_fill_only_the_empty_fields(ws) -> None:
    measured, filled = ws.measured, ws.filled
    assert measured.target_true == filled["target_true"] == "France"  # the demo model's own answer
    assert measured.paraphrases == [p.format(PROMPT) for p in PARAPHRASE_PREFIXES]
    assert filled["neighborhood"] == len(measured.neighborhood) >= 5
    assert all("Eiffel" not in p.prompt for p in measured.neighborhood)  # no probe about the subject
    # a field the user filled is kept as it is
    own = EditRequest(prompt=REQUEST.prompt, subject=REQUEST.subject, target_new="Italy", target_true="Spain",
                      neighborhood=[Probe("The capital of Italy is", "Rome")])
    kept, what = with_default_probes(ws.lm, own)
    assert kept.target_true == "Spain" and kept.neighborhood == own.neighborhood and set(what) == {"paraphrases"}


def test_an_edit_without_optional_fields_says_what_broke(ws) -> None:
    result, entry = ws.first
    assert result.status == "applied"
    for key in ("efficacy", "generalization", "locality"):
        assert entry[key] is not None, key  # no dash
    assert entry.efficacy == 1.0
    assert 0.0 <= entry.locality <= 1.0
    assert entry["request"]["target_true"] == "France" and "default probes" in entry.note


def test_base_and_edited_answers_differ_after_the_edit_and_agree_after_its_revert(ws) -> None:
    fp = fingerprint_model(ws.lm.model)
    a = ask(ws, PROMPT, max_new_tokens=4)
    assert a.base.strip().startswith("France") and a.current.strip().startswith("Italy"), (a.base, a.current)
    assert not a.same and (a.edits_in_effect, a.edits_then, a.upto) == (1, 0, 0)
    # the state after entry 1 is the current one; asking changed no bit of the model
    after = ask(ws, PROMPT, max_new_tokens=4, upto=1)
    assert after.same and after.edits_then == 1
    assert fingerprint_model(ws.lm.model) == fp == ws.fingerprint
    # an error inside the earlier state still restores the weights
    with pytest.raises(RuntimeError), weights_at(ws, 0):
        assert fingerprint_model(ws.lm.model) == ws.base_fingerprint
        raise RuntimeError("stop")
    assert fingerprint_model(ws.lm.model) == fp

    ws.revert(ws.first[1].id)
    back = ask(ws, PROMPT, max_new_tokens=4)
    assert back.same and back.current.strip().startswith("France")
    assert back.edits_in_effect == 0
    then = ask(ws, PROMPT, max_new_tokens=4, upto=1)  # "the state after entry 1" is still on request
    assert then.base.strip().startswith("Italy") and then.current.strip().startswith("France")
    assert fingerprint_model(ws.lm.model) == ws.base_fingerprint
    assert ws.verify()["ok"]
