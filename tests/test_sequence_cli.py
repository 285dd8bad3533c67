"""``edit-auditor sequence`` and ``report`` end to end on a tiny random Llama (real ROME edits in
about a second each; the demo-model runs are in test_sequence.py), bad input, and the monitor's
pure parts (threshold parsing, the trend's slope)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.run.monitor import FIGURES, MonitorError, Thresholds, parse_stop_on, slope

TINY_HP = json.dumps({"layer": 1, "mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6,
                      "context_n": 2, "context_len": 4})
CAPITALS = [("France", "Rome"), ("Germany", "Oslo"), ("Italy", "Lima"), ("Spain", "Cairo")]


def test_parse_stop_on_and_slope() -> None:
    names, th = parse_stop_on("ppl=2, norm")
    assert names == ["ppl", "norm"] and th.max_ppl_ratio == 2.0 and th.max_norm_ratio == Thresholds().max_norm_ratio
    assert parse_stop_on("none")[0] == [] and parse_stop_on("all")[0] == list(FIGURES) and len(FIGURES) == 9
    names, th = parse_stop_on("norm_jump=1.1,ppl_jump")
    assert names == ["norm_jump", "ppl_jump"] and th.max_norm_jump == 1.1 and th.max_ppl_jump == Thresholds().max_ppl_jump
    assert Thresholds().crossed("norm_jump", 1.3) and not Thresholds().crossed("ppl_jump", 1.01)
    with pytest.raises(MonitorError, match="unknown --stop-on figure 'pll'"):
        parse_stop_on("pll=2")
    with pytest.raises(MonitorError, match="not a number"):
        parse_stop_on("ppl=high")
    assert slope([1.0, 2.0]) is None and slope([1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert Thresholds().crossed("retention", 0.4) and not Thresholds().crossed("retention", None)


def test_cli_sequence_then_report(tiny_checkpoint, isolated_cache: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    ws = tmp_path / "ws"
    assert main(["workspace", "init", str(tiny_checkpoint("llama")), str(ws), "--device", "cpu"]) == 0
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": s, "target_new": t,
                                     "target_true": "Paris", "id": s.lower()} for s, t in CAPITALS]))
    out = tmp_path / "run.jsonl"
    capsys.readouterr()
    code = main(["sequence", "--workspace", str(ws), "--requests", str(requests), "--hparams", TINY_HP,
                 "--allow-collapse", "--stop-on", "norm=1.3", "--device", "cpu", "--out", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    steps, final = lines[:-1], lines[-1]
    assert code == 1 and final["final"] and final["stopped"] and "norm_ratio" in final["reason"]
    assert "stopped at step" in capsys.readouterr().err
    assert [s["step"] for s in steps] == list(range(1, final["stopped_at_step"] + 1))
    for key in ("ppl_ratio", "retention", "watch_pass_rate", "norm_ratio", "cond_ratio", "ppl_trend", "matrices",
                "ppl_jump", "norm_jump"):
        assert key in steps[0]
    assert steps[-1]["norm_ratio"] > 1.3 and steps[-1]["rolled_back"] == final["rolled_back"]
    # the jumps: the first step against the base, every later one against the step before it
    assert steps[0]["ppl_jump"] == pytest.approx(steps[0]["ppl_ratio"])
    assert steps[0]["norm_jump"] == pytest.approx(steps[0]["norm_ratio"])
    for before, now in zip(steps, steps[1:]):
        assert now["ppl_jump"] == pytest.approx(now["ppl"] / before["ppl"])
        assert now["norm_jump"] == pytest.approx(now["norm_ratio"] / before["norm_ratio"])
    assert final["fingerprint"] == final["fingerprint_before_step"]
    assert main(["ledger", "verify", "--workspace", str(ws)]) == 0

    report = tmp_path / "report.html"
    capsys.readouterr()
    assert main(["report", "--workspace", str(ws), "--runs", str(out), "--out", str(report)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"] == ["rome/consistent", "rome/consistent"] and summary["steps"][0] == summary["steps"][1]
    text = report.read_text()
    # no watchlist, no earlier edit learned, fewer than 3 steps: only the figures that were measured
    # (perplexity, norm, condition number, and the cumulative spill over the watch bank: issue 18)
    assert text.count("data:image/png;base64,") == 4
    assert "Perplexity relative to the base model" in text and "Norm of the edited matrix" in text
    assert "Cumulative spill over the watch bank" in text and all(s["n_watch"] == 20 for s in steps)
    # who else changed, per entry: one row per applied entry of both runs (workspace and JSON lines),
    # each with its own audit's spill rate and preservation cost (the tiny model's edits are audited)
    table = text.split("Who else changed, per entry", 1)[1]
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", table)
    assert len(rows) == 2 * final["stopped_at_step"], rows
    assert all(len(r.split("</td><td>")) == 9 for r in rows)
    assert all("The capital of France is -&gt; Rome" in r for r in rows[:1])
    assert all(steps[0]["collateral"][0][k] is not None for k in ("spill_rate", "preservation_cost"))


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    requests = tmp_path / "r.json"
    requests.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome"}]))
    cases = [
        (["sequence", "--requests", str(requests), "--out", str(tmp_path / "o.jsonl")], "name a MODEL"),
        (["sequence", "demo", "--requests", str(requests), "--stop-on", "x", "--out", str(tmp_path / "o.jsonl")],
         "unknown --stop-on figure"),
        (["sequence", "demo", "--requests", str(requests), "--method", "magic", "--out", str(tmp_path / "o.jsonl")],
         "unknown method 'magic'"),
        (["report", "--out", str(tmp_path / "r.html")], "at least one --workspace"),
        (["report", "--workspace", str(tmp_path), "--out", str(tmp_path / "r.html")], "not a workspace"),
    ]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    cases.append((["sequence", "demo", "--requests", str(empty), "--out", str(tmp_path / "o.jsonl")], "no records"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("edit-auditor: error: ") and message in err and err.count("\n") == 1, err
