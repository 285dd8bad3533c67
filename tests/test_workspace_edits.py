"""Real ROME edits of the demo model through a workspace: recorded, exported, killed mid-edit.

The demo model answers "The Eiffel Tower is located in the country of" with " France" and
"Toyota is a company from the country of" with " Japan"; the edits make them Italy and Germany.
Two context templates keep each edit to about a minute and a half on a busy CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from auditor.model.requests import EditRequest
from auditor.run.workspace import Workspace

pytestmark = pytest.mark.slow

HPARAMS = {"context_templates": ["{}", "The following is a fact. {}"]}
EIFFEL = {"prompt": "{} is located in the country of", "subject": "The Eiffel Tower",
          "target_new": "Italy", "target_true": "France"}
TOYOTA = {"prompt": "{} is a company from the country of", "subject": "Toyota",
          "target_new": "Germany", "target_true": "Japan"}


def greedy(model, tokenizer, prompt: str, n: int = 3) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:])


@pytest.fixture(scope="module")
def ws(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    w = Workspace.init(demo_dir, tmp_path_factory.mktemp("ws-edits") / "workspace", device="cpu")
    w.first = w.edit(EditRequest(**EIFFEL), hparams=HPARAMS, measure_ppl=False)
    yield w
    w.close()


def test_an_edit_is_recorded_with_everything_the_engine_reports(ws: Workspace) -> None:
    result, entry = ws.first
    assert result.status == "applied" and entry.id == 1
    assert entry.delta_hash == result.delta.content_hash()
    assert entry.denominator == pytest.approx(result.diagnostics["denominator"])
    assert entry.efficacy == result.metrics["efficacy"] == 1.0
    assert entry["diagnostics"]["loss_curve"] == result.diagnostics["loss_curve"]
    assert entry["hparams"]["context_templates"] == HPARAMS["context_templates"]
    assert entry["timings"]["v"] > 0 and entry.layer == result.layer
    assert (entry.fingerprint_before, entry.fingerprint_after) == (ws.base_fingerprint, ws.fingerprint)
    assert entry["request"]["subject"] == "The Eiffel Tower"
    assert [e.id for e in ws.ledger.search("Eiffel Italy")] == [1]
    assert ws.verify()["ok"]


def test_the_exported_folder_gives_the_edited_answer(ws: Workspace, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = ws.export(tmp_path / "eiffel-italy")
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, nothing of ours
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert greedy(model, tokenizer, EditRequest(**EIFFEL).text).strip().startswith("Italy")
    meta = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]
    assert meta["edit_auditor.ledger_head"] == ws.ledger.head().content_hash
    assert meta["edit_auditor.applied_edits"] == "1"


KILLED_EDIT = textwrap.dedent("""
    import sys
    from auditor.model.requests import EditRequest
    from auditor.run.workspace import Workspace
    ws = Workspace.open(sys.argv[1], device="cpu")
    def progress(p):
        if p.phase == "v":
            print("v", flush=True)
            sys.stdin.readline()  # wait here, mid-edit, until killed
    ws.edit(EditRequest(prompt="{} is located in the country of", subject="The Colosseum",
                        target_new="Japan"), hparams={"context_templates": ["{}"]}, measure_ppl=False,
            progress=progress)
""")


def test_sigkill_mid_edit_then_the_next_edit_appends(ws: Workspace) -> None:
    n = len(ws.ledger)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EDIT, str(ws.directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "v", proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()
    assert len(ws.ledger) == n and ws.verify()["ok"]  # the killed edit left no entry
    result, entry = ws.edit(EditRequest(**TOYOTA), hparams=HPARAMS, measure_ppl=False)
    assert result.status == "applied"
    assert entry.id == n + 1 and entry.prev_hash == ws.ledger.get(n).content_hash
    assert ws.verify()["ok"]
    assert greedy(ws.lm.model, ws.lm.tokenizer, EditRequest(**TOYOTA).text).strip().startswith("Germany")
    assert greedy(ws.lm.model, ws.lm.tokenizer, EditRequest(**EIFFEL).text).strip().startswith("Italy")
    replay = ws.replay()
    assert replay["match"] and replay["applied"] == 2


def test_revert_of_a_real_edit_restores_its_answer(ws: Workspace) -> None:
    entry = ws.revert(1)
    assert greedy(ws.lm.model, ws.lm.tokenizer, EditRequest(**EIFFEL).text).strip().startswith("France")
    assert greedy(ws.lm.model, ws.lm.tokenizer, EditRequest(**TOYOTA).text).strip().startswith("Germany")
    assert entry.fingerprint_after == ws.replay()["fingerprint"]
    assert ws.verify()["ok"]
