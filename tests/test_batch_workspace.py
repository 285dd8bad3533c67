"""Batches through the command line and a workspace, on a tiny random Llama (fast, no demo model).

* ``edit --method alphaedit --batch-size 2``: one JSON line per request plus one summary line per
  batch; each batch is one ledger entry listing its requests and the layers it changed;
* revert of a batch rebuilds every layer it touched, removes its keys from AlphaEdit's key memory,
  and a replay from the base reproduces both the fingerprint and the key memory; a patch export
  carries the multi-layer deltas;
* a batch with an empty target, two answers for one prompt, or a NaN fails with the request named,
  leaving the weights and the ledger as they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch

from auditor.cli import main
from auditor.engine.alphaedit import key_memory_add
from auditor.model.checkpoint import fingerprint_model, load_model
from auditor.model.requests import EditRequest
from auditor.record.export import apply_patch
from auditor.run.batch import BatchFailed
from auditor.run.workspace import Workspace, key_memory_fingerprint

MEMIT_HP = {"layers": [0, 1], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 4,
            "context_templates": ["{}", "The following is a fact. {}"]}
HP = {**MEMIT_HP, "nullspace_rule": "threshold", "nullspace_threshold": 0.05, "L2": 1.0}  # the ledger, not P, is tested
FACTS = [
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"},
    {"prompt": "{} plays the", "subject": "Miles Davis", "target_new": "violin", "target_true": "trumpet"},
    {"prompt": "{} was written in", "subject": "Hamlet", "target_new": "Latin", "target_true": "English"},
    {"prompt": "{} is located in", "subject": "Angola", "target_new": "Antarctica", "target_true": "Africa"},
]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def _edit(ws: Path, requests: Path, *extra: str, hp: dict = HP) -> list[str]:
    return ["edit", "--workspace", str(ws), "--requests", str(requests), "--hparams", json.dumps(hp),
            "--device", "cpu", "--json", *extra]


@pytest.fixture
def workspace(tiny_checkpoint: Callable[..., Path], isolated_cache: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    assert main(["workspace", "init", str(tiny_checkpoint("llama")), str(ws), "--device", "cpu"]) == 0
    return ws


def test_batches_are_entries_reverted_replayed_and_exported(workspace: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    args = _edit(workspace, _write(tmp_path / "facts.json", FACTS), "--method", "alphaedit", "--batch-size", "2",
                 "--allow-collapse")
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    summaries = [x for x in lines if x.get("summary") == "batch"]
    per_request = [x for x in lines if "summary" not in x]
    assert [s["batch"] for s in summaries] == [1, 2] and [s["n_requests"] for s in summaries] == [2, 2]
    assert [r["subject"] for r in per_request] == [f["subject"] for f in FACTS]
    assert {r["method"] for r in per_request} == {"alphaedit"} and all(r["status"] == "applied" for r in per_request)
    for s in summaries:
        assert [d["layer"] for d in s["layer_diagnostics"]] == [0, 1]
        for d in s["layer_diagnostics"]:
            assert {"update_norm", "weight_norm", "update_ratio", "condition", "residual_before", "residual_after",
                    "held_out_change", "null_space_dim", "null_space_energy"} <= set(d)

    ws = Workspace.open(workspace, device="cpu")
    entries = ws.ledger.entries()
    assert [e.id for e in entries] == [s["entry_id"] for s in summaries] == [1, 2]
    first, second = entries
    assert first["n_requests"] == 2 and [r["subject"] for r in first["requests"]] == ["France", "Miles Davis"]
    assert first["params"] == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert len(first["metrics"]["per_request"]) == 2 and first["method"] == "alphaedit"
    assert [e.id for e in ws.ledger.search("Hamlet")] == [2]

    # the key memory is the sum of both batches' keys; a revert of the first leaves the second's
    both, only_second = {}, {}
    key_memory_add(both, ws.ledger.load_delta(first.delta_hash))
    key_memory_add(both, ws.ledger.load_delta(second.delta_hash))
    key_memory_add(only_second, ws.ledger.load_delta(second.delta_hash))
    assert key_memory_fingerprint(ws.key_memory()) == key_memory_fingerprint(both)
    revert = ws.revert(first.id, note="batch 1 out")
    assert revert["params"] == first["params"]
    assert key_memory_fingerprint(ws.key_memory()) == key_memory_fingerprint(only_second)
    replay = ws.replay()
    assert replay["match"] and replay["applied"] == 1
    assert replay["key_memory"] == key_memory_fingerprint(only_second)
    assert ws.verify()["ok"]

    # the same state from the base + second delta, and through a patch export
    base = load_model(ws.lm.path, device="cpu")
    from auditor.engine.deltas import apply_delta

    apply_delta(base.model, ws.ledger.load_delta(second.delta_hash))
    assert fingerprint_model(base.model) == ws.fingerprint
    ws.close()
    assert main(["export", "--workspace", str(workspace), "--patch", "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["deltas"][0]["params"] == first["params"]
    fresh = load_model(ws.lm.path, device="cpu")
    assert apply_patch(fresh, tmp_path / "p")["match"]


def test_bad_batches_fail_cleanly(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.open(workspace, device="cpu")
    fp = ws.fingerprint
    ws.close()
    capsys.readouterr()
    empty = [FACTS[0], {**FACTS[1], "target_new": "  "}, FACTS[2]]
    assert main(_edit(workspace, _write(tmp_path / "empty.json", empty), "--method", "memit", hp=MEMIT_HP)) == 2
    err = capsys.readouterr().err
    assert err.startswith("edit-auditor: error: ") and err.count("\n") == 1 and "record 1" in err and "empty" in err

    twice = [FACTS[0], FACTS[1], {**FACTS[0], "target_new": "Berlin"}]
    assert main(_edit(workspace, _write(tmp_path / "twice.json", twice), "--method", "memit", hp=MEMIT_HP)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "request 3" in err and "'Berlin'" in err and "request 1" in err

    ws = Workspace.open(workspace, device="cpu")
    assert len(ws.ledger) == 0 and ws.fingerprint == fp
    with torch.no_grad():  # a damaged weight after the edited layers: the v* loss is NaN at once
        ws.lm.model.get_parameter("model.norm.weight")[3] = float("nan")
    damaged = fingerprint_model(ws.lm.model)
    requests = [EditRequest(**f) for f in FACTS[:2]]
    with pytest.raises(BatchFailed, match=r"request 1 \(request 'France'\).*(nan|not finite)") as info:
        ws.edit_batch(requests, method="memit", hparams=MEMIT_HP, measure_ppl=False)
    assert info.value.index == 0
    assert fingerprint_model(ws.lm.model) == damaged and len(ws.ledger) == 0
    ws.close()
