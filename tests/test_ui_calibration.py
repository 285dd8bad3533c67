"""The window and calibration (issue 19), offscreen on a tiny random Llama: the Thresholds row says
whether the open model is calibrated, Model ▸ Calibrate… runs in the worker and changes it, verdicts
name their thresholds' source, and a revert's re-check is shown in the audit trail's details."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from test_ui_sequence import window  # noqa: E402,F401 - the Sequence view's fixture: a window on a tiny Llama

from ui.app import process_until as spin  # noqa: E402

TINY_HP = {"mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6, "context_n": 2, "context_len": 4}
CAPITALS = [("France", "Rome"), ("Germany", "Oslo"), ("Italy", "Lima")]


def _requests():
    from auditor.model.requests import EditRequest

    return [EditRequest(prompt="The capital of {} is", subject=s, target_new=t, target_true="Paris", case_id=s.lower())
            for s, t in CAPITALS]


def _top_items(w) -> dict[str, str]:
    tree = w.audit.detail
    return {tree.topLevelItem(i).text(0): tree.topLevelItem(i).text(1) for i in range(tree.topLevelItemCount())}


def test_calibrate_from_the_window(window) -> None:
    from auditor.model.checkpoint import fingerprint_model
    from auditor.run import calibration
    from ui import settings

    w, ws = window, window.workspace
    fp = ws.base_fingerprint
    assert w.info["thresholds"].text().startswith("defaults (not calibrated")
    assert w.calibrate_action.isEnabled()
    titles = [a.text() for a in w.menuBar().actions()]
    assert "&Model" in titles
    model_menu = next(a.menu() for a in w.menuBar().actions() if a.text() == "&Model")
    assert w.calibrate_action in model_menu.actions()
    assert ws.editor.thresholds_source == "defaults"

    assert w.start_calibration(requests=_requests(), n_noop=1, hparams=TINY_HP)
    assert spin(lambda: not w.runner.busy, 600), w.last_error
    assert not w.last_error
    cal = calibration.load(fp)
    assert cal is not None and cal.edits["healthy"] == 3
    assert w.info["thresholds"].text().startswith("calibrated ") and "1% " not in w.info["thresholds"].text()
    assert "per 100 edits" in w.info["thresholds"].text() and "monitor:" in w.info["thresholds"].toolTip()
    assert ws.editor.thresholds_source == f"calibrated {fp}"
    assert ws.editor.guard.max_ppl_ratio == cal.guard["max_ppl_ratio"]
    # the Sequence view draws the calibrated limits (a figure the run stops on by default; the line
    # itself appears with the chart's first point, the empty chart's note names the limit)
    line = w.sequence_view.threshold_lines["norm_ratio"]
    assert w.sequence_view.threshold_shown["norm_ratio"]
    assert line.value() == pytest.approx(cal.monitor["max_norm_ratio"])
    # the model was put back and nothing was recorded
    assert fingerprint_model(ws.lm.model) == ws.fingerprint == fp and ws.ledger.entries() == []

    # the user's Settings stay on top of the calibration, and the source says so
    settings.put(settings.MIN_DENOMINATOR, 0.01)
    w.apply_guard()
    assert ws.editor.guard.min_denominator == 0.01
    assert ws.editor.thresholds_source == f"calibrated {fp}; set in Settings: min_denominator"


def test_verdict_source_and_revert_recheck_in_the_audit_trail(window) -> None:
    import torch

    w, ws = window, window.workspace
    first, second = _requests()[:2]
    with torch.enable_grad():
        _r1, e1 = ws.edit(first, hparams=TINY_HP, allow_collapse=True)
        _r2, e2 = ws.edit(second, hparams=TINY_HP, allow_collapse=True)
    w.state_changed()
    assert w.audit.select_entry(e2.id)
    assert _top_items(w)["Thresholds from"] == "defaults"

    w.revert(e1.id)
    assert spin(lambda: not w.runner.busy, 300), w.last_error
    revert = ws.ledger.entries()[-1]
    recheck = revert["diagnostics"]["recheck"]
    assert recheck["checked"] == [e2.id]
    assert w.audit.select_entry(revert.id)
    items = _top_items(w)
    changed = len(recheck["changed"])
    assert items["Re-checked after the revert"] == f"1 later entry re-measured, {changed} changed"
    tree = w.audit.detail
    item = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount())
                if tree.topLevelItem(i).text(0) == "Re-checked after the revert")
    assert item.child(0).text(1) == f"entry {e2.id}"
    assert item.childCount() == 1 + changed
