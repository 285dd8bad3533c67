"""The batch panel through the real window (offscreen) on a tiny random Llama workspace.

A request file is loaded into the table, a bad hyper-parameter field is refused at the field,
two AlphaEdit batches run through the worker, their rows and per-layer diagnostics fill in, and
the audit trail shows the two batch entries with what they contain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from ui.app import process_until as spin  # noqa: E402

FACTS = [
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"},
    {"prompt": "{} plays the", "subject": "Miles Davis", "target_new": "violin", "target_true": "trumpet"},
    {"prompt": "{} was written in", "subject": "Hamlet", "target_new": "Latin", "target_true": "English"},
    {"prompt": "{} is located in", "subject": "Angola", "target_new": "Antarctica", "target_true": "Africa"},
]
HP = {"layers": [5, 6], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 3,
      "context_templates": ["{}", "The following is a fact. {}"], "nullspace_rule": "threshold", "nullspace_threshold": 0.05, "L2": 1.0}


def seven_layer_llama(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Llama deep enough for the window (ROME's default layer 4 exists)."""
    import torch
    from conftest import tiny_config_kwargs
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model("llama", **{**tiny_config_kwargs("llama", len(tokenizer)), "num_hidden_layers": 7})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_batch_panel_runs_batches_and_the_audit_trail_lists_them(
        qtbot, tokenizer_dir: Path, isolated_cache: Path, tmp_path: Path) -> None:
    from test_ui import isolate_settings, new_window

    from auditor.run.workspace import Workspace

    isolate_settings(tmp_path)
    ws = Workspace.init(seven_layer_llama(tmp_path / "tiny7", tokenizer_dir), tmp_path / "ws", device="cpu")
    ws.close()
    w = new_window(tmp_path / "ws")
    qtbot.addWidget(w)
    panel = w.batch_panel
    (tmp_path / "bad.json").write_text("[{\"prompt\": \"x\"}]")
    assert not panel.load_file(tmp_path / "bad.json") and "subject" in panel.file_label.text()
    (tmp_path / "facts.json").write_text(json.dumps(FACTS))
    assert panel.load_file(tmp_path / "facts.json")
    assert panel.table.rowCount() == 4 and panel.table.item(2, 1).text() == "Hamlet"

    panel.hparams.setText("[1, 2]")
    with qtbot.assertNotEmitted(panel.run_requested):
        panel.run_button.click()
    assert "JSON object" in panel.hparams_error.text()

    panel.hparams.setText(json.dumps(HP))
    panel.method.setCurrentText("alphaedit")
    panel.batch_size.setValue(2)
    panel.run_button.click()
    assert spin(lambda: w.runner.busy, 10) or panel.layers.rowCount() > 0
    assert spin(lambda: not w.runner.busy, 900), w.last_error
    assert not w.last_error, w.last_error
    assert [panel.table.item(i, 5).text() for i in range(4)] == ["1", "1", "2", "2"]
    statuses = [panel.table.item(i, 6).text() for i in range(4)]
    assert set(statuses) <= {"applied", "applied, did not take", "rejected"}
    # a request marked "did not take" is exactly one an applied batch left at efficacy 0
    efficacies = [panel.table.item(i, 7).text() for i in range(4)]
    assert [s == "applied, did not take" for s in statuses] == \
        [s.startswith("applied") and e == "0" for s, e in zip(statuses, efficacies)]
    assert panel.layers.rowCount() == 4  # 2 batches x 2 layers
    assert panel.layers.item(0, 2).text() == "5" and panel.layers.item(1, 2).text() == "6"

    entries = w.workspace.ledger.entries()
    assert [e["n_requests"] for e in entries] == [2, 2]
    shown = [r["subject"] for r in w.rows]
    assert shown[0].startswith("batch of 2: France → Rome, Miles Davis → violin")
    w.close()
