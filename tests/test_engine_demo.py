"""ROME on the real demo model (SmolLM2-135M-Instruct): edits work, and the collapse finding holds.

These tests run real v* optimisations on the CPU (tens of seconds each) and share the
session's demo model; every edit here is either independent (restored exactly) or a dry run,
so the shared model ends as it started (checked).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from auditor.engine import rome
from auditor.measure.metrics import greedy_answer
from auditor.model.checkpoint import fingerprint_model
from auditor.model.requests import load_requests
from auditor.run.edit import Editor

RESOURCES = Path(__file__).parent.parent / "resources" / "demo"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def editor(demo: Any) -> Editor:
    return Editor(demo)


def _report(name: str, values: list[float]) -> str:
    return f"{name}: median {statistics.median(values):.4f}, range {min(values):.4f}-{max(values):.4f}"


def test_rome_edits_known_facts(demo: Any, editor: Editor) -> None:
    """Six of the ten shipped known facts (bench/bench_rome.py edits all of them)."""
    requests = load_requests(RESOURCES / "known_facts.json")
    assert len(requests) == 10
    requests = requests[:6]
    for r in requests:  # the model knows every fact before the edit
        assert greedy_answer(demo, r.text, 4).strip().startswith(r.target_true), r.case_id
    fp = fingerprint_model(demo.model)
    results = editor.edit_many(requests, independent=True, key_mode="consistent")
    assert fingerprint_model(demo.model) == fp  # independent mode restored the weights exactly
    rows = [r.record() for r in results]
    print("\n" + "\n".join(json.dumps({k: row[k] for k in ("case_id", "denominator", "efficacy", "generalization",
                                                           "locality", "ppl_ratio", "v_steps")}) for row in rows))
    assert all(row["status"] == "applied" for row in rows)
    assert sum(row["efficacy"] for row in rows) >= 5
    assert statistics.mean(row["locality"] for row in rows) >= 0.9
    assert all(row["ppl_ratio"] < 1.1 for row in rows)
    assert all(row["efficacy_before"] == 0.0 for row in rows)  # the true answer won before the edit

    # the algebra on the real model: base W + delta maps the consistent key to v*
    res = results[0]
    module = demo.spec.module(demo.model, res.layer)
    with torch.no_grad():
        W = module.weight.detach().clone()
        module.weight.add_(res.delta.dense().to(W.dtype))
        out = module(res.vectors["k_cur"][None, None, :])[0, 0]
        module.weight.copy_(W)
    v = res.vectors["v_star"]
    assert torch.linalg.vector_norm(out - v) / torch.linalg.vector_norm(v) < 1e-3
    assert fingerprint_model(demo.model) == fp


def test_first_token_subjects_collapse_in_original_mode(demo: Any, editor: Editor) -> None:
    """Yang et al. 2024: the unprefixed key at position 0 makes the original denominator tiny."""
    hp = editor.hparams()
    C, _ = editor.second_moment(hp)
    templates = editor.context_templates(hp)
    first = load_requests(RESOURCES / "first_token_subjects.json")
    others = [r for r in load_requests(RESOURCES / "known_facts.json")]
    dens: dict[str, list[float]] = {}
    for group, reqs in (("first", first), ("other", others)):
        for mode in ("original", "consistent"):
            values = []
            for r in reqs:
                keys = rome.compute_keys(demo, r, hp.layer, templates)
                if group == "first":
                    assert keys.subject_first_token and keys.key_position == 0
                values.append(rome.key_side(keys, C, mode).denominator)
            dens[f"{group}/{mode}"] = values
    print("\n" + "\n".join(_report(k, v) for k, v in dens.items()))
    first_orig, first_cons = dens["first/original"], dens["first/consistent"]
    # far smaller: every original denominator is below a tenth of the smallest consistent one
    assert max(first_orig) < 0.1 * min(first_cons)
    # for subjects whose key is not at position 0 the two modes stay within a small factor
    ratios = [o / c for o, c in zip(dens["other/original"], dens["other/consistent"])]
    assert all(0.25 < q < 4 for q in ratios)
    # the guard's default threshold separates the two populations on this model
    assert max(first_orig) < editor.guard.min_denominator < min(first_cons + dens["other/original"])


def test_collapse_risk_dry_run_and_guarded_apply_leave_the_model(demo: Any, editor: Editor) -> None:
    (req,) = [r for r in load_requests(RESOURCES / "first_token_subjects.json") if r.case_id == "france-continent"]
    fp = fingerprint_model(demo.model)
    fast = {"v_num_grad_steps": 8}
    dry = editor.edit(req, key_mode="original", dry_run=True, hparams=fast)
    assert dry.status == "dry-run" and dry.collapse_risk
    assert any("denominator" in reason for reason in dry.collapse_reasons)
    assert dry.diagnostics["subject_first_token"] is True and dry.metrics["prefixed_efficacy"] is not None
    assert fingerprint_model(demo.model) == fp == dry.fingerprint_after
    applied = editor.edit(req, key_mode="original", hparams=fast)  # no override: refused
    assert applied.status == "rejected" and "override" in applied.error
    assert fingerprint_model(demo.model) == fp == applied.fingerprint_after
    assert applied.diagnostics["update_norm"] > 5 * editor.edit(
        req, key_mode="consistent", dry_run=True, hparams=fast).diagnostics["update_norm"]
    assert fingerprint_model(demo.model) == fp


def test_cli_sequential_edits_write_json_lines(tmp_path: Path, demo_dir: Path) -> None:
    reqs = json.loads((RESOURCES / "known_facts.json").read_text())[:2]
    f = tmp_path / "two.json"
    f.write_text(json.dumps(reqs))
    out = tmp_path / "runs.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "auditor.cli", "edit", str(demo_dir), "--requests", str(f), "--device", "cpu",
         "--steps", "12", "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["case_id"] for r in lines] == ["capital-france", "capital-japan"]
    required = {"case_id", "subject", "target_new", "target_true", "method", "key_mode", "layer", "denominator",
                "numerator_norm", "update_norm", "key_cosine", "ppl_before", "ppl_after", "efficacy", "target_prob",
                "generalization", "locality", "portability", "prefixed_efficacy", "collapse_risk", "seconds"}
    assert required <= set(lines[0])
    # sequential: the second edit starts from the first one's weights
    assert lines[1]["fingerprint_before"] == lines[0]["fingerprint_after"] != lines[0]["fingerprint_before"]
    assert lines[1]["ppl_before"] == pytest.approx(lines[0]["ppl_after"])
    assert "capital-france" in proc.stdout and "denominator" in proc.stdout  # the human-readable table


def test_cli_bad_request_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"prompt": "The capital of France is", "subject": "Spain", "target_new": "Rome"}]))
    proc = subprocess.run([sys.executable, "-m", "auditor.cli", "edit", "demo", "--requests", str(f)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "record 0" in lines[0] and "does not occur" in lines[0]
    assert "Traceback" not in proc.stderr
