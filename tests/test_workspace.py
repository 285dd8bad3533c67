"""Workspace mechanics on the real demo model: revert, replay, reopen, export, patch, crashes.

The edits here are real rank-one deltas on the demo model's MLP down-projections, made from
seeded random factors and recorded through :meth:`Workspace.record` exactly as an engine result
would be; the tests that need ROME itself are in ``test_workspace_edits.py``. One workspace is
shared by the module, so the tests run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from auditor.engine.deltas import Delta, apply_delta
from auditor.model.checkpoint import fingerprint_model, fingerprint_tensors, load_model
from auditor.model.requests import EditRequest
from auditor.record.export import ExportError, apply_patch
from auditor.run.edit import EditResult
from auditor.run.workspace import Workspace, WorkspaceError

EDITS = [(4, 1), (4, 2), (5, 3)]  # (layer, seed): edits 1 and 2 share a matrix


def synthetic_result(ws: Workspace, layer: int, seed: int, *, status: str = "applied") -> EditResult:
    """A real rank-one delta on the live model, recorded as the engine would record it."""
    name = ws.lm.spec.weight_name(layer)
    weight = ws.lm.model.get_parameter(name)
    g = torch.Generator().manual_seed(seed)
    delta = Delta(param=name, transposed=False, left=torch.randn(weight.shape[0], generator=g) * 0.02,
                  right=torch.randn(weight.shape[1], generator=g) * 0.02)
    before = ws.fingerprint
    if status == "applied":
        apply_delta(ws.lm.model, delta)
    after = fingerprint_model(ws.lm.model)
    request = EditRequest(prompt="{} is located in the country of", subject=f"Landmark {seed}",
                          target_new="Italy", target_true="France")
    return EditResult(request=request, method="rome", key_mode="consistent", layer=layer,
                      hparams={"layer": layer}, delta=delta, diagnostics={"denominator": 2.0 + seed},
                      metrics={"efficacy": 1.0, "ppl_ratio": 1.001}, timings={"total": 0.0},
                      collapse_risk=False, collapse_reasons=[], status=status, error=None, device="cpu",
                      dtype="float32", fingerprint_before=before, fingerprint_after=after)


@pytest.fixture(scope="module")
def ws(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    w = Workspace.init(demo_dir, tmp_path_factory.mktemp("ws") / "workspace", device="cpu")
    w.deltas = []  # the test's own record of what was applied
    for layer, seed in EDITS:
        result = synthetic_result(w, layer, seed)
        w.record(result)
        w.deltas.append(result.delta)
    yield w
    w.close()


def test_revert_the_second_of_three_edits(ws: Workspace, demo_dir: Path) -> None:
    entry = ws.revert(2, note="wrong target")
    assert (entry.id, entry.kind, entry.reverts, entry.note) == (4, "revert", 2, "wrong target")
    assert len(ws.ledger) == 4
    assert ws.verify()["ok"]
    assert [e.id for e in ws.ledger.active()] == [1, 3]
    expected = load_model(demo_dir, device="cpu")  # base + edits one and three
    apply_delta(expected.model, ws.deltas[0])
    apply_delta(expected.model, ws.deltas[2])
    got = dict(ws.lm.model.named_parameters())
    for name, p in expected.model.named_parameters():
        assert torch.equal(p, got[name]), name  # bit for bit, not only within tolerance
    assert entry.fingerprint_after == ws.fingerprint == fingerprint_model(expected.model)


def test_replay_reproduces_the_recorded_fingerprint_bit_for_bit(ws: Workspace) -> None:
    # (what is active depends on whether the revert test ran first: the ledger says, not the order)
    report = ws.replay()
    active = ws.ledger.active()
    assert len(active) >= 2 and report["match"]
    assert report["applied"] == len(active) and report["head"] == ws.ledger.head().id
    assert report["fingerprint"] == report["recorded"] == ws.fingerprint


def test_a_second_instance_catches_up_before_it_writes(ws: Workspace) -> None:
    other = Workspace.open(ws.directory, device="cpu")  # checks the rebuilt fingerprint itself
    assert other.fingerprint == ws.fingerprint
    ws.record(synthetic_result(ws, 6, 4))  # entry 5, unknown to `other`'s model
    entry = other.revert(3)  # `other` first applies entry 5, then reverts 3
    assert entry.id == 6 and entry.fingerprint_before == ws.fingerprint
    assert other.replay()["match"]
    with pytest.raises(WorkspaceError, match="moved on"):  # ws's model is now behind the ledger
        ws.record(synthetic_result(ws, 7, 5, status="dry-run"))
    other.close()
    ws._sync()  # what edit() and revert() do first
    assert ws.fingerprint == entry.fingerprint_after
    assert ws.ledger.verify()["ok"]


def test_only_applied_unreverted_edits_can_be_reverted(ws: Workspace) -> None:
    dry = ws.record(synthetic_result(ws, 7, 6, status="dry-run"))
    assert dry.status == "dry-run" and dry.delta_hash  # recorded, delta kept for the record
    assert dry.fingerprint_after == dry.fingerprint_before == ws.fingerprint
    with pytest.raises(WorkspaceError, match="was not applied"):
        ws.revert(dry.id)
    with pytest.raises(WorkspaceError, match="already reverted"):
        ws.revert(2)
    with pytest.raises(WorkspaceError, match="not an edit"):
        ws.revert(4)


def test_export_is_a_complete_hf_folder_with_provenance(ws: Workspace, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = ws.export(tmp_path / "exported", max_shard_size="100MB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no partial folder left
    index = json.loads((out / "model.safetensors.index.json").read_text())
    meta = index["metadata"]
    assert meta["edit_auditor.ledger_head"] == ws.ledger.head_hash
    assert meta["edit_auditor.base_fingerprint"] == ws.base_fingerprint
    assert meta["edit_auditor.applied_edits"] == str(len(ws.ledger.active())) == "2"
    assert meta["edit_auditor.export_fingerprint"] == ws.fingerprint
    assert "lm_head.weight" not in index["weight_map"]  # tied to the embedding: written once
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            assert {k: v for k, v in f.metadata().items() if k != "total_size"} == \
                {k: v for k, v in meta.items() if k != "total_size"}
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert fingerprint_model(reloaded) == ws.fingerprint
    with pytest.raises(ExportError, match="already exists"):
        ws.export(out)


def test_export_in_another_dtype(ws: Workspace, tmp_path: Path) -> None:
    out = ws.export(tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tensors = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(shard))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    meta = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]
    assert meta["edit_auditor.export_fingerprint"] == fingerprint_tensors(tensors.items())
    assert meta["edit_auditor.dtype"] == "bfloat16"


def test_patch_applied_to_the_base_gives_the_same_weights(ws: Workspace, demo_dir: Path, tmp_path: Path) -> None:
    patch = ws.export(tmp_path / "patch", patch=True)
    manifest = json.loads((patch / "manifest.json").read_text())
    assert [d["entry"] for d in manifest["deltas"]] == [e.id for e in ws.ledger.active()]
    assert len(json.loads((patch / "entries.json").read_text())) == len(manifest["deltas"])
    base = load_model(demo_dir, device="cpu")
    report = apply_patch(base, patch)
    assert report["match"] and report["fingerprint"] == ws.fingerprint
    # a changed delta file is refused before any weight is touched
    delta_file = patch / manifest["deltas"][0]["file"]
    data = bytearray(delta_file.read_bytes())
    data[-1] ^= 1
    delta_file.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match its file hash|missing"):
        apply_patch(load_model(demo_dir, device="cpu"), patch)


KILLED_EXPORT = textwrap.dedent("""
    import sys
    from auditor.run.workspace import Workspace
    ws = Workspace.open(sys.argv[1], device="cpu")
    def progress(done, total):
        print("shard", done, total, flush=True)
        sys.stdin.readline()  # wait here, mid-export, until killed
    ws.export(sys.argv[2], max_shard_size="100MB", progress=progress)
""")


def test_sigkill_mid_export_leaves_nothing_under_the_final_name(ws: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(ws.directory), str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("shard"), proc.stderr.read()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert leftovers and all(name.startswith(".killed.partial-") for name in leftovers)
    assert ws.verify()["ok"]
    n = len(ws.ledger)
    assert ws.record(synthetic_result(ws, 8, 7)).id == n + 1
    assert ws.replay()["match"]


def test_cli_replay_and_patch_export(ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from auditor.cli import main

    assert main(["replay", "--workspace", str(ws.directory), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["match"] is True
    assert main(["export", "--workspace", str(ws.directory), "--out", str(tmp_path / "p"), "--patch",
                 "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_edits"] == len(ws.ledger.active())
    assert (tmp_path / "p" / "manifest.json").is_file()


def test_open_refuses_a_changed_base(demo_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    for f in demo_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, base / f.name)
    tensors = load_file(demo_dir / "model.safetensors")
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    ws = Workspace.init(base, tmp_path / "ws", device="cpu")
    ws.close()
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WorkspaceError, match="not the one this workspace was built on"):
        Workspace.open(tmp_path / "ws", device="cpu")


REVERTER = textwrap.dedent("""
    import sys
    from auditor.run.workspace import Workspace
    ws = Workspace.open(sys.argv[1], device="cpu")
    print(ws.revert(int(sys.argv[2])).id, flush=True)
""")


def test_two_processes_writing_to_one_workspace_at_once(ws: Workspace) -> None:
    first, second = [e.id for e in ws.ledger.active()][:2]
    n = len(ws.ledger)
    procs = [subprocess.Popen([sys.executable, "-c", REVERTER, str(ws.directory), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (first, second)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(int(out) for out, _ in outs) == [n + 1, n + 2]  # both appended, in some order
    report = ws.verify()
    assert report["ok"] and report["warnings"] == []  # one continuous history of model states
    assert {first, second} <= ws.ledger.reverted_ids()
    ws._sync()
    assert ws.state()["match"]  # each process caught up with the other before writing
    assert ws.replay()["match"]


def test_cli_workspace_init_and_revert(ws: Workspace, demo_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    from auditor.cli import main

    target = tmp_path / "new-ws"
    assert main(["workspace", "init", str(demo_dir), str(target), "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base_fingerprint"] == ws.base_fingerprint and info["dtype"] == "float32"
    assert (target / "ledger.db").is_file()
    assert main(["workspace", "init", str(demo_dir), str(target), "--device", "cpu"]) == 2
    assert "already a workspace" in capsys.readouterr().err
    victim = ws.ledger.active()[-1].id
    assert main(["revert", "--workspace", str(ws.directory), str(victim), "--note", "cli", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reverts"] == victim and ws.ledger.get(out["id"]).note == "cli"
    assert main(["revert", "--workspace", str(ws.directory), str(victim), "--device", "cpu"]) == 2
    assert "already reverted" in capsys.readouterr().err


def test_an_edit_the_engine_refuses_is_recorded_as_failed(ws: Workspace) -> None:
    from auditor.run.edit import EditFailed

    n = len(ws.ledger)
    request = EditRequest(prompt="{} is located in the country of", subject="Big Ben", target_new="Peru")
    with pytest.raises(EditFailed, match="unknown method") as info:
        ws.edit(request, method="memit", note="trying another method")
    entry = info.value.entry
    assert (entry.id, entry.status, entry.method, entry.note) == (n + 1, "failed", "memit", "trying another method")
    assert "unknown method" in entry.error and entry.subject == "Big Ben" and entry.delta_hash is None
    # (ws first caught up with the CLI's revert above, so compare with the model as it is now)
    assert entry.fingerprint_before == entry.fingerprint_after == ws.fingerprint == fingerprint_model(ws.lm.model)
    assert ws.replay()["fingerprint"] == ws.fingerprint
    assert [e.id for e in ws.ledger.search("Big Ben Peru")] == [n + 1]
    report = ws.verify()
    assert report["ok"] and report["warnings"] == []  # the whole module's history is continuous


def test_a_result_whose_recorded_state_is_not_what_happened_is_refused(ws: Workspace) -> None:
    """Issue 17: no entry is written whose recorded before/after state is not what happened."""
    n = len(ws.ledger)
    stale = synthetic_result(ws, 6, 77, status="dry-run")
    stale.fingerprint_before = stale.fingerprint_after = "sha256:" + "0" * 64  # computed on other weights
    with pytest.raises(WorkspaceError, match="not recording this edit: it was computed on the model state"):
        ws.record(stale)
    unchanged = synthetic_result(ws, 6, 78, status="dry-run")
    unchanged.status = "applied"  # claims to be applied, but the weights are as they were
    with pytest.raises(WorkspaceError, match="recorded as applied but the weights did not change"):
        ws.record(unchanged)
    assert len(ws.ledger) == n and ws.verify()["ok"]
