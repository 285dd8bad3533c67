"""Issue 18: the sequence monitor's cumulative spill over a fixed, seeded watch bank.

* the watch bank (measure/watch_bank.py) is deterministic (same requests and seed, same swaps),
  spread over the sequence's requests, and never watches a subject the sequence edits;
* ``--stop-on spill=X`` parses (default 0.5, a share: at most 1);
* on the real demo model: a template-keyed (``joint``) France -> Asia edit applied in a sequence
  (per-edit guard overridden) moves most of the watched countries, so the run stops on
  ``cumulative_spill`` and the step is rolled back; a specific edit (the capital of France ->
  Rome) in the same workspace records its cumulative spill (in the step's JSON line and the
  entry's monitor figures) under the threshold and is kept, although it changes other capitals'
  greedy answers (``cumulative_changed``, not a threshold).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.measure.watch_bank import WATCH_SIZE, build
from auditor.model.requests import EditRequest, load_requests
from auditor.model.subject_bank import load_bank
from auditor.run.monitor import FIGURE_KEYS, Monitor, MonitorError, Thresholds, parse_stop_on
from auditor.run.sequence import run_sequence
from auditor.run.workspace import Workspace

COUNTERFACT = Path(__file__).parent / "data" / "counterfact_100.json"
FRANCE = EditRequest(prompt="{} is a country in", subject="France", target_new="Asia", target_true="Europe",
                     case_id="france-asia")
CAPITAL = load_requests(Path(__file__).parent.parent / "resources" / "demo" / "known_facts.json")[0]  # France -> Rome
FAST = {"v_num_grad_steps": 15, "context_templates": ["{}", "The following is a fact. {}"]}


def test_the_watch_bank_is_seeded_spread_and_leaves_out_the_edited_subjects() -> None:
    bank, requests = load_bank(), load_requests(COUNTERFACT)[:8]
    first, again = build(bank, requests, seed=3), build(bank, requests, seed=3)
    assert [s.prompt for s in first.swaps] == [s.prompt for s in again.swaps]
    assert len(first.swaps) == WATCH_SIZE and len({(s.prompt, s.target_new) for s in first.swaps}) == WATCH_SIZE
    assert [s.prompt for s in build(bank, requests, seed=4).swaps] != [s.prompt for s in first.swaps]
    edited = {r.subject.lower() for r in requests}
    assert not edited & {s.subject.lower() for s in first.swaps}
    assert len({s.request for s in first.swaps}) >= 6  # spread over the requests, in their order
    assert [s.request for s in first.swaps] == sorted(s.request for s in first.swaps)
    for s in first.swaps:
        req = requests[s.request]
        assert s.prompt == req.prompt.replace("{}", s.subject) and s.target_new == req.target_new
    one = build(bank, [FRANCE])  # a single request: all 20 swaps are its type's (countries)
    assert len(one.swaps) == WATCH_SIZE and all(s.prompt.endswith(" is a country in") for s in one.swaps)
    assert build(bank, []).swaps == []


def test_stop_on_spill_parses_with_its_stated_default() -> None:
    assert Thresholds().max_cumulative_spill == 0.5 and FIGURE_KEYS["spill"] == "cumulative_spill"
    names, th = parse_stop_on("spill=0.3")
    assert names == ["spill"] and th.max_cumulative_spill == 0.3
    assert "spill" in parse_stop_on("all")[0]
    assert th.crossed("spill", 0.35) and not th.crossed("spill", 0.3) and not th.crossed("spill", None)
    with pytest.raises(MonitorError, match="between 0 and 1"):
        parse_stop_on("spill=1.5")


@pytest.mark.slow
def test_a_template_keyed_edit_stops_the_sequence_on_cumulative_spill(demo_dir: Path, tmp_path: Path) -> None:
    ws = Workspace.init(demo_dir, tmp_path / "ws", device="cpu")
    ws.editor.collateral = None  # the per-edit audit has its own tests; this one is the monitor's
    try:
        names, thresholds = parse_stop_on("spill")
        before, steps = ws.fingerprint, []
        final = run_sequence(ws, [FRANCE], Monitor(thresholds=thresholds, stop_on=names), on_step=steps.append,
                             key_mode="joint", allow_collapse=True, hparams=FAST)
        print("\n", final["reason"], [m["subject"] for m in steps[0]["spill_moved"]])
        assert final["stopped"] and final["reason"].startswith("cumulative_spill"), final
        assert steps[0]["cumulative_spill"] > 0.5 and steps[0]["n_watch"] == 20
        assert steps[0]["rolled_back"] and ws.fingerprint == before  # the step was reverted
        moved = steps[0]["spill_moved"]
        assert sum(m["toward_target"] for m in moved) == round(steps[0]["cumulative_spill"] * 20)
        assert len(moved) == round(steps[0]["cumulative_changed"] * 20)
        assert all(m["prompt"].endswith(" is a country in") and m["subject"] != "France" for m in moved)
        assert all(m["p_now"] - m["p_start"] > 0.25 or m["answer_now"] != m["answer_start"] for m in moved)

        # a specific edit of the same workspace (a known fact): its cumulative spill is recorded, under the
        # threshold; answers that changed without moving to the target are shown but do not count
        steps = []
        final = run_sequence(ws, [CAPITAL], Monitor(thresholds=thresholds, stop_on=names), on_step=steps.append,
                             hparams=FAST)
        print(final["reason"], steps[0]["cumulative_spill"], steps[0]["cumulative_changed"],
              [(m["subject"], m["answer_start"], m["answer_now"]) for m in steps[0]["spill_moved"]])
        assert not final["stopped"] and final["edits_applied"] == 1, final
        spill = steps[0]["cumulative_spill"]
        assert spill == 0.0 and steps[0]["cumulative_changed"] > spill  # measured: 0.00 and 0.25
        assert all(not m["toward_target"] for m in steps[0]["spill_moved"] if m["answer_now"] != " Rome"
                   and m["p_now"] - m["p_start"] <= 0.25)
        entry = ws.ledger.get(steps[0]["entries"][0])
        assert entry["metrics"]["monitor"]["cumulative_spill"] == spill
    finally:
        ws.close()
