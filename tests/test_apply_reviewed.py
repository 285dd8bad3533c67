"""Issue 11, item 10: "Apply anyway" applies exactly the delta the user reviewed.

A real workspace on the demo model; the reviewed entry is a dry run recorded with a real rank-one
delta (as the engine records one), so no ROME computation is needed: the point is that nothing is
computed again. The window's button is exercised in test_ui.py's collapse test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_workspace import synthetic_result

from auditor.engine.deltas import apply_delta
from auditor.model.checkpoint import fingerprint_model
from auditor.run.reviewed import apply_reviewed
from auditor.run.workspace import Workspace, WorkspaceError


@pytest.fixture(scope="module")
def ws(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    w = Workspace.init(demo_dir, tmp_path_factory.mktemp("ws") / "workspace", device="cpu")
    yield w
    w.close()


def test_apply_anyway_applies_the_recorded_delta_bit_for_bit_and_links_it(ws: Workspace) -> None:
    result = synthetic_result(ws, 4, 31, status="dry-run")
    result.collapse_risk, result.collapse_reasons = True, ["denominator 0.07 < 0.5"]
    dry = ws.record(result)
    before = ws.fingerprint
    assert dry.fingerprint_before == dry.fingerprint_after == before  # the dry run left the weights
    # what the reviewed delta gives on these weights, computed here and undone (as a dry run does)
    weight = ws.lm.model.get_parameter(dry.param)
    snapshot = weight.detach().clone()
    apply_delta(ws.lm.model, result.delta)
    expected_fp, expected = fingerprint_model(ws.lm.model), weight.detach().clone()
    with torch.no_grad():
        weight.copy_(snapshot)

    entry = apply_reviewed(ws, dry.id, note="reviewed by the test")
    assert torch.equal(weight, expected) and entry.fingerprint_after == expected_fp == ws.fingerprint
    fresh = Workspace.open(ws.directory, device="cpu")  # base + the ledger's deltas: the same bits
    try:
        assert fresh.fingerprint == expected_fp
    finally:
        fresh.close()
    assert (entry.id, entry.status, entry.kind) == (dry.id + 1, "applied", "edit")
    assert entry.delta_hash == dry.delta_hash and entry.delta_file_sha256 == dry.delta_file_sha256
    assert entry["diagnostics"]["applies_entry"] == dry.id and entry.note == "reviewed by the test"
    assert entry.fingerprint_before == before != entry.fingerprint_after == fingerprint_model(ws.lm.model)
    assert entry.collapse_risk == 1 and entry["collapse_reasons"] == ["denominator 0.07 < 0.5"]
    assert entry.efficacy == dry.efficacy and entry["hparams"] == dry["hparams"]
    assert ws.replay()["match"] and ws.verify()["ok"]
    assert [e.id for e in ws.ledger.active()] == [entry.id]


def test_apply_anyway_is_refused_when_it_would_not_be_the_reviewed_edit(ws: Workspace) -> None:
    dry = ws.ledger.get(1)
    n = len(ws.ledger)
    with pytest.raises(WorkspaceError, match="the model changed since entry 1"):
        apply_reviewed(ws, dry.id)  # entry 2 applied it: the weights are no longer those reviewed
    with pytest.raises(WorkspaceError, match="only a dry run or a rejected edit"):
        apply_reviewed(ws, 2)  # already an applied edit
    assert len(ws.ledger) == n and ws.verify()["ok"]


def test_the_command_line_applies_a_reviewed_dry_run(ws: Workspace, capsys) -> None:
    import json

    from auditor.cli import main

    dry = ws.record(synthetic_result(ws, 5, 41, status="dry-run"))
    assert main(["apply-reviewed", "--workspace", str(ws.directory), str(dry.id), "--note", "cli",
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["applies_entry"] == dry.id and out["delta_hash"] == dry.delta_hash and out["status"] == "applied"
    entry = ws.ledger.get(out["id"])
    assert entry["diagnostics"]["applies_entry"] == dry.id and entry.note == "cli"
    assert out["ledger_head"] == ws.ledger.head_hash
    # applying it twice: the weights are no longer those it was reviewed on
    assert main(["apply-reviewed", "--workspace", str(ws.directory), str(dry.id), "--device", "cpu"]) == 2
    assert "the model changed since entry" in capsys.readouterr().err
