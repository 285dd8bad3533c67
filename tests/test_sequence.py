"""Sequential audits on the real demo model: the monitor stops in time, rolls back, and reports.

One workspace is shared by the module and three runs are made on it, in order:

1. healthy: six known facts (consistent keys), one after another: not stopped;
2. watch: "The Great Wall is located in the country of" -> Mexico, while the watchlist says
   China: stopped by the watchlist, rolled back;
3. collapse: prompts that begin with a one-token subject in the *original* key mode with the
   per-edit guard overridden (Yang et al. 2024: the denominator collapses): stopped, rolled back.

The capacity report is then drawn from the workspace's ledger. Two context templates keep
each edit short, as in test_workspace_edits.py. A second workspace takes 8 CounterFact edits
(tests/data/counterfact_100.json) in a row: not stopped (bench/bench_sequence.py runs longer ones).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from auditor.measure.metrics import greedy_answer
from auditor.model.requests import EditRequest, load_requests
from auditor.record.watch import Watchlist
from auditor.run.monitor import Monitor
from auditor.run.sequence import run_sequence
from auditor.run.workspace import Workspace

pytestmark = pytest.mark.slow

DEMO = Path(__file__).parent.parent / "resources" / "demo"
HPARAMS = {"context_templates": ["{}", "The following is a fact. {}"]}
HEALTHY = 6  # edits of the healthy run of the shared workspace
COUNTERFACT = Path(__file__).parent / "data" / "counterfact_100.json"
LONG_HEALTHY = 8  # edits of the healthy run on its own workspace
GREAT_WALL = EditRequest(prompt="{} is located in the country of", subject="The Great Wall", target_new="Mexico",
                         target_true="China", case_id="great-wall")
WATCHED = [("The largest planet in the solar system is", "Jupiter"),
           ("The Great Wall is located in the country of", "China")]


@pytest.fixture(scope="module")
def seq(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    ws = Workspace.init(demo_dir, tmp_path_factory.mktemp("seq") / "workspace", device="cpu")
    wl = Watchlist(ws.ledger)
    for prompt, answer in WATCHED:
        wl.add(prompt, answer)
    runs: dict[str, SimpleNamespace] = {}

    def run(name: str, requests: list[EditRequest], **kwargs: Any) -> None:
        steps: list[dict] = []
        before = ws.fingerprint
        final = run_sequence(ws, requests, Monitor(), on_step=steps.append, hparams=HPARAMS, **kwargs)
        runs[name] = SimpleNamespace(steps=steps, final=final, before=before, after=ws.fingerprint,
                                     verify=ws.verify(), entries=len(ws.ledger))

    run("healthy", load_requests(DEMO / "known_facts.json")[:HEALTHY])
    run("watch", [GREAT_WALL])
    run("collapse", load_requests(DEMO / "first_token_subjects.json")[:3], key_mode="original",
        allow_collapse=True)
    yield SimpleNamespace(ws=ws, runs=runs)
    ws.close()


def test_a_healthy_sequence_is_not_stopped(seq: Any) -> None:
    run = seq.runs["healthy"]
    print("\n" + "\n".join(f"{s['step']}: ppl x{s['ppl_ratio']:.4f} retention {s['retention']} "
                           f"norm x{s['norm_ratio']:.4f} cond x{s['cond_ratio']:.4f}" for s in run.steps))
    assert not run.final["stopped"] and run.final["reason"] is None, run.final
    assert run.final["edits_applied"] == HEALTHY and [s["step"] for s in run.steps] == list(range(1, HEALTHY + 1))
    assert all(s["status"] == ["applied"] and not any(c["stops"] for c in s["crossed"]) for s in run.steps)
    last = run.steps[-1]
    assert last["watch_pass_rate"] == 1.0 and last["retention"] >= 0.5
    assert last["n_watch"] == 20 and last["cumulative_spill"] <= 0.5  # issue 18: the watch bank
    assert 1.0 < last["norm_ratio"] and last["ppl_trend"] is not None
    # every entry carries the watchlist check and the monitor's figures, pinned to the watchlist's head
    entry = seq.ws.ledger.get(run.steps[-1]["entries"][0])
    assert entry["metrics"]["watch"]["head"] == Watchlist(seq.ws.ledger).head
    watch = entry["metrics"]["watch"]
    assert watch["edits"] + len(watch["edits_not_learned"]) == HEALTHY - 1
    assert entry["metrics"]["monitor"]["ppl_ratio"] == last["ppl_ratio"]


def test_consistent_counterfact_edits_in_a_row_are_not_stopped(demo_dir: Path, tmp_path: Path) -> None:
    """Measured on the demo: perplexity ratio 0.994-1.004, norm ratio up to 1.09, condition ratio
    1.04-1.32, every earlier edit retained (bench_sequence.py on the same requests)."""
    ws = Workspace.init(demo_dir, tmp_path / "ws", device="cpu")
    ws.editor.collateral = None  # the monitor's verdict on a long healthy run; the audit: test_collateral.py
    steps: list[dict] = []
    final = run_sequence(ws, load_requests(COUNTERFACT)[:LONG_HEALTHY], Monitor(), on_step=steps.append,
                         hparams=HPARAMS)
    assert not final["stopped"] and final["edits_applied"] == LONG_HEALTHY, final
    assert len(steps) == LONG_HEALTHY and all(s["status"] == ["applied"] for s in steps)
    assert not any(c["stops"] for s in steps for c in s["crossed"])
    last = steps[-1]
    assert last["retention"] >= 0.5 and last["ppl_ratio"] < 1.25 and 1.0 < last["norm_ratio"] < 1.35
    assert ws.verify()["ok"] and len(ws.ledger) == LONG_HEALTHY
    ws.close()


def test_the_watchlist_catches_an_edit_that_changes_a_watched_answer(seq: Any) -> None:
    run = seq.runs["watch"]
    assert run.final["stopped"] and "watch_pass_rate 0.5 < 1" in run.final["reason"], run.final
    (step,) = run.steps
    edit = seq.ws.ledger.get(step["entries"][0])
    assert edit.status == "applied" and edit.efficacy == 1.0  # the edit worked ...
    assert [f["answer"] for f in edit["metrics"]["watch"]["failed"]] == ["China"]  # ... and broke the watch
    revert = seq.ws.ledger.get(run.final["reverts"][0])
    assert revert.kind == "revert" and revert.reverts == edit.id and "watch_pass_rate" in revert.note
    assert run.after == run.before and run.verify["ok"]
    assert greedy_answer(seq.ws.lm, GREAT_WALL.text, 2).strip().startswith("China")


def test_a_collapsing_sequence_is_stopped_and_rolled_back(seq: Any) -> None:
    run = seq.runs["collapse"]
    print("\n", run.final["reason"], [s["crossed"] for s in run.steps])
    assert run.final["stopped"] and run.final["stopped_at_step"] == len(run.steps), run.final
    offending = run.steps[-1]
    assert any(c["stops"] for c in offending["crossed"])
    # the rolled-back workspace has the fingerprint it had before the offending edit
    assert run.after == run.final["fingerprint_before_step"] == run.final["fingerprint"]
    assert run.after == (run.steps[-2]["fingerprint"] if len(run.steps) > 1 else run.before)
    assert run.verify["ok"] and not run.verify["problems"]
    assert seq.ws.replay()["match"]
    # nothing deleted: the collapsed edit is still on record, followed by its revert
    edit = seq.ws.ledger.get(offending["entries"][0])
    assert edit.status == "applied" and edit.key_mode == "original"
    assert seq.ws.ledger.get(run.final["reverts"][0]).reverts == edit.id


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_capacity_report_from_the_workspace(seq: Any, tmp_path: Path) -> None:
    import matplotlib.image

    from auditor.cli import main
    from auditor.run.report import PLOTS, runs_from_workspace

    runs = runs_from_workspace(seq.ws.directory)
    assert [r.stopped for r in runs] == [False, True, True]
    assert runs[0].label == "rome/consistent" and runs[2].label == "rome/original"
    healthy = runs[0]
    for key in ("ppl_ratio", "norm_ratio", "cond_ratio"):
        xs, ys = healthy.series(key)
        assert len(xs) == HEALTHY and max(ys) > min(ys), key  # the plotted data is not constant
    assert runs[2].first_crossing("norm_ratio") or runs[2].first_crossing("cond_ratio") \
        or runs[2].first_crossing("ppl_ratio")

    out = tmp_path / "report.html"
    assert main(["report", "--workspace", str(seq.ws.directory), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script" not in text and 'src="http' not in text and "href=" not in text  # readable offline
    pngs = _pngs(text)
    assert len(pngs) == len(PLOTS)
    for png in pngs:
        image = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert image.shape[:2] == (360, 640) and len(png) > 10_000
        assert image[..., :3].std() > 0.05  # drawn on, not a blank canvas
    assert "watch_pass_rate 0.5 &lt; 1" in text
    # issue 18: the cumulative spill is plotted (counted above) and every applied entry has a row in
    # "Who else changed, per entry" with its own audit's spill rate and preservation cost
    assert "Cumulative spill over the watch bank" in text
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", text.split("Who else changed, per entry", 1)[1])
    assert len(rows) == sum(len(r.steps) for r in runs)
    cells = [r.split("</td><td>") for r in rows]
    assert all(len(c) == 9 and c[4] != "\u2013" and c[5] != "\u2013" for c in cells), cells
