"""Issue 18: the collateral audit (who else did an edit change?) on the real demo model.

* the shipped subject bank: at least 300 subjects in typed groups with templates; a user's bank;
  a bad bank is one clear error; the sample is deterministic (same seed, same list);
* the France -> Asia edit in ``joint`` key mode (the issue's case: it moved Spain, the
  Netherlands, Poland, Brazil) is flagged by the guard and not kept;
* a deliberately non-specific rank-one update keyed on the template's last token is flagged;
  the audit of one update is the same list twice;
* ROME (consistent), MEMIT and AlphaEdit on the shipped CounterFact requests: spill rate and
  preservation cost recorded in the ledger entry and the JSON line, within the guard's thresholds;
  ``edit-auditor audit WS ENTRY`` re-runs the audit with a larger sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from auditor.cli.parser import main
from auditor.engine import rome
from auditor.engine.deltas import Delta, apply_delta
from auditor.measure.collateral import CollateralAudit, CollateralConfig, summary
from auditor.measure.guard import CollapseGuard, collateral_reasons
from auditor.model.requests import EditRequest, load_requests
from auditor.model.subject_bank import BankError, load_bank
from auditor.run.edit import Editor
from auditor.run.workspace import Workspace

DATA = Path(__file__).parent / "data" / "counterfact_sample.json"
FAST = {"v_num_grad_steps": 15, "context_templates": ["{}", "The following is a fact. {}", "I read that. {}"]}
FRANCE = EditRequest(prompt="{} is a country in", subject="France", target_new="Asia", target_true="Europe")


# ------------------------------------------------------------------ the bank (fast)


def test_the_shipped_bank_has_300_typed_subjects_with_templates() -> None:
    bank = load_bank()
    assert len(bank.subjects) >= 300
    types = {g.type for g in bank.groups}
    assert {"country", "city", "person", "company", "product", "language", "landmark"} <= types
    for g in bank.groups:
        assert g.templates and all(t.count("{}") == 1 for t in g.templates), g.type
        assert len(g.subjects) >= 20, g.type
    assert bank.group_of(FRANCE).type == "country"
    angola = load_requests(DATA)[0]  # "{} is located in", relation P30
    assert bank.group_of(angola).type == "country"


def test_the_sample_is_deterministic_and_leaves_out_the_edited_subjects() -> None:
    bank = load_bank()
    a = bank.peers(FRANCE, 20, seed=0, exclude={"Spain"})
    assert a == bank.peers(FRANCE, 20, seed=0, exclude={"Spain"})
    assert a != bank.peers(FRANCE, 20, seed=1, exclude={"Spain"})
    assert len(set(a)) == 20 and "France" not in a and "Spain" not in a
    country = next(g for g in bank.groups if g.type == "country")
    assert set(a) <= set(country.subjects)


def test_a_users_bank_and_a_bad_one(tmp_path: Path) -> None:
    mine = tmp_path / "bank.json"
    mine.write_text(json.dumps({"groups": [{"type": "planet", "templates": ["{} orbits the"],
                                            "subjects": ["Mars", "Venus", "Jupiter"]}]}))
    bank = load_bank(mine)
    req = EditRequest(prompt="{} orbits the", subject="Mars", target_new="Moon")
    assert sorted(bank.peers(req, 5, seed=0)) == ["Jupiter", "Venus"]
    bad = tmp_path / "bad.json"
    for text in ("[1, 2]", "{\"groups\": [{\"subjects\": []}]}", "not json"):
        bad.write_text(text)
        with pytest.raises(BankError) as e:
            load_bank(bad)
        assert str(e.value).startswith(str(bad)) and "\n" not in str(e.value)
    with pytest.raises(BankError, match="cannot read"):
        load_bank(tmp_path / "absent.json")


# ------------------------------------------------------------------ single edits (slow)


@pytest.mark.slow
def test_the_joint_mode_france_to_asia_edit_is_flagged_and_not_kept(demo) -> None:
    editor = Editor(demo)
    weight = demo.model.get_parameter(demo.spec.weight_name(editor.hparams().layer)).detach().clone()
    result = editor.edit(FRANCE, key_mode="joint", hparams={"v_num_grad_steps": 15}, measure_ppl=False)
    report = result.metrics["collateral"]
    assert result.status == "rejected" and result.collapse_risk
    assert any(r.startswith("spill rate") for r in result.collapse_reasons), result.collapse_reasons
    assert report["spill_rate"] > CollapseGuard().max_spill_rate
    assert {"Spain", "Poland", "Netherlands", "Brazil"} & set(report["moved"]) or len(report["moved"]) >= 5
    moved = [r for r in report["rows"] if r["moved"]]
    assert all(r["p_after"] - r["p_before"] > 0.25 or r["answer_after"] != r["answer_before"] for r in moved)
    record = result.record()
    assert record["spill_rate"] == report["spill_rate"] and record["moved"] == report["moved"]
    assert record["preservation_cost"] == report["preservation_cost"]
    assert torch.equal(demo.model.get_parameter(demo.spec.weight_name(editor.hparams().layer)), weight)


@pytest.mark.slow
def test_a_rank_one_update_keyed_on_the_templates_last_token_is_flagged(demo, qtbot) -> None:
    """v* at the prompt's last token (kmeng01/rome's fact_token="last") written with ROME's update:
    it rewrites "... is a country in" for every subject; the audit must say so, twice the same."""
    editor = Editor(demo)
    hp = editor.hparams({"v_num_grad_steps": 15})
    C, _ = editor.second_moment(hp)
    last = len(rome.encode(demo, FRANCE.text)) - 1
    k = rome.module_inputs(demo, hp.layer, [FRANCE.text], [last])[0]
    v = rome.optimise_value(demo, FRANCE, hp.layer, ["{}"], hp, fact_token="last").v_star
    u = torch.linalg.solve(rome.regularised(C, hp.mom2_ridge), k.double()).float()
    u = u / u.norm()
    delta = Delta(param=demo.spec.weight_name(hp.layer), transposed=demo.spec.transposed,
                  left=((v - rome.module_output(demo, hp.layer, k)) / (u @ k)).cpu(), right=u.cpu())
    audit = CollateralAudit(demo, load_bank(), CollateralConfig())
    first = audit.prepare([FRANCE], delta, {hp.layer: C})
    again = audit.prepare([FRANCE], delta, {hp.layer: C})
    assert [(r.kind, r.subject, r.p_before) for r in first.rows] == [(r.kind, r.subject, r.p_before) for r in again.rows]
    assert first.preservation == again.preservation
    assert len([r for r in first.rows if r.kind == "swap"]) == 20
    apply_delta(demo.model, delta)
    try:
        report = audit.finish(first)
    finally:
        apply_delta(demo.model, delta, sign=-1)
    reasons = collateral_reasons(CollapseGuard(), report)
    assert any(r.startswith("spill rate") for r in reasons), report["spill_rate"]
    assert report["top_neighbour_key_ratio"] > 0.5 * report["edited_key_ratio"]
    # the window's table of the same report: every row, moved ones marked, sortable by number
    from PySide6.QtCore import Qt

    from ui.collateral_view import CollateralView

    view = CollateralView()
    qtbot.addWidget(view)
    view.show_report(report)
    assert view.table.rowCount() == len(report["rows"])
    assert sorted(view.moved_subjects()) == sorted(report["moved"])
    view.table.sortItems(6, Qt.SortOrder.DescendingOrder)  # P(new) after
    assert float(view.table.item(0, 6).text()) == pytest.approx(max(r["p_after"] for r in report["rows"]), abs=1e-3)


# ------------------------------------------------------------------ the methods, recorded (slow)


@pytest.fixture(scope="module")
def counterfact() -> list:
    return load_requests(DATA)


def _within(report: dict) -> None:
    guard = CollapseGuard()
    assert report["n_swaps"] >= 20 and report["statistics"] == "C"
    assert 0.0 <= report["spill_rate"] <= guard.max_spill_rate, report["moved"]
    assert 0.0 < report["preservation_cost"] <= guard.max_preservation_cost
    assert not collateral_reasons(guard, report)


@pytest.mark.slow
def test_rome_memit_alphaedit_record_spill_and_preservation_within_thresholds(
        demo_dir, counterfact: list, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = Workspace.init(demo_dir, tmp_path / "ws", device="cpu")
    result, entry = ws.edit(counterfact[0], measure_ppl=False)
    assert result.status == "applied", result.error
    _within(entry["metrics"]["collateral"])
    assert entry["metrics"]["collateral"]["spill_rate"] == result.record()["spill_rate"]
    rome_id, rome_cost = entry.id, entry["metrics"]["collateral"]["preservation_cost"]
    for method in ("memit", "alphaedit"):
        batch, entry = ws.edit_batch(counterfact, method=method, hparams=FAST, measure_ppl=False)
        assert batch.status == "applied", batch.error
        report = entry["metrics"]["collateral"]
        _within(report)
        assert sorted(report["preservation_cost_by_layer"]) == sorted(str(x) for x in batch.layers)
        assert report["n_swaps"] >= 20 and {r["request"] for r in report["rows"]} == {0, 1, 2}
        lines = batch.records(1)
        assert all(line["spill_rate"] == report["spill_rate"] for line in lines)
        assert batch.summary(1)["preservation_cost"] == report["preservation_cost"]
    ws.close()
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "ws"), str(rome_id), "--sample", "30", "--json", "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["entry_id"] == rome_id and again["active"] and again["n_swaps"] == 30
    # the same update against today's weights (MEMIT and AlphaEdit moved layer 4 by a few per cent since)
    assert again["preservation_cost"] == pytest.approx(rome_cost, rel=0.2)
    assert main(["audit", str(tmp_path / "ws"), "99"]) == 2


def test_the_summary_keeps_the_spill_apart_from_other_changed_answers() -> None:
    rows = [{"subject": "Spain", "moved": True, "toward_target": True},
            {"subject": "Belgium", "moved": True, "toward_target": False},
            {"subject": "Prague", "moved": False, "toward_target": False}]
    line = summary({"rows": rows, "spill_rate": 0.5, "n_swaps": 2, "preservation_cost": 0.007})
    assert "moved to the target: Spain;" in line and "other answers changed: Belgium;" in line
    assert line.startswith("spill rate 0.5 over 2 same-type swaps") and "Prague" not in line
    assert "moved to the target: none" in summary({"rows": [], "spill_rate": None})
