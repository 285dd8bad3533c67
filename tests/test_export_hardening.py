"""Issue 11, items 1, 2 and 11 on a real workspace of the demo model: exports carry the ledger head,
overwrite only earlier exports, and a kill while tensors are being written leaves nothing visible.
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
from safetensors import safe_open
from safetensors.torch import load_file
from test_workspace import synthetic_result

from auditor.cli import main
from auditor.model.checkpoint import fingerprint_tensors
from auditor.record.export import ExportError, export_state_dict, write_safetensors
from auditor.run.workspace import Workspace


@pytest.fixture(scope="module")
def ws(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    w = Workspace.init(demo_dir, tmp_path_factory.mktemp("ws") / "workspace", device="cpu")
    w.record(synthetic_result(w, 4, 21))
    w.record(synthetic_result(w, 6, 22))
    yield w
    w.close()


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def test_streamed_safetensors_read_back_exactly(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"a.bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16), "b.f32": torch.randn(7, generator=g),
               "c.i64": torch.arange(6).reshape(2, 3), "d.empty": torch.zeros(0, 4), "e.scalar": torch.tensor(2.5),
               "f.bool": torch.tensor([True, False, True])}
    seen: list[int] = []
    write_safetensors(tmp_path / "t.safetensors", tensors, {"format": "pt", "k": "v"}, on_bytes=seen.append)
    back = load_file(tmp_path / "t.safetensors")
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t)
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    assert sum(seen) == sum(t.numel() * t.element_size() for t in tensors.values())


def test_export_metadata_names_the_head_and_overwrites_only_an_earlier_export(ws: Workspace, tmp_path: Path,
                                                                               capsys) -> None:
    out = ws.export(tmp_path / "edited", max_shard_size="200MB")
    meta = json.loads((out / "model.safetensors.index.json").read_text())["metadata"]
    assert meta["edit_auditor.ledger_head"] == ws.ledger.head_hash and meta["edit_auditor.ledger_head_id"] == "2"
    # the head an export carries is what `verify --expect-head` checks later
    assert main(["ledger", "verify", "--workspace", str(ws.directory), "--expect-head",
                 meta["edit_auditor.ledger_head"]]) == 0
    assert "expected head found: entry 2" in capsys.readouterr().out
    again = ws.export(out, overwrite=True, max_shard_size="200MB")  # an earlier export may be replaced
    assert fingerprint_tensors(tensors_of(again).items()) == meta["edit_auditor.export_fingerprint"]
    patch = ws.export(tmp_path / "patch", patch=True)
    assert ws.export(patch, patch=True, overwrite=True) == patch
    with pytest.raises(ExportError, match="not an earlier Edit Auditor export"):
        ws.export(tmp_path, overwrite=True)  # holds the exports, is not one
    with pytest.raises(ExportError, match="the workspace or the base checkpoint"):
        ws.export(ws.directory, overwrite=True)
    with pytest.raises(ExportError, match="the workspace or the base checkpoint"):
        ws.export(ws.lm.path, overwrite=True)
    assert (ws.directory / "ledger.db").is_file() and ws.verify()["ok"] and len(ws.ledger) == 2


def test_cli_revert_prints_the_head_that_verify_then_expects(ws: Workspace, capsys) -> None:
    assert main(["revert", "--workspace", str(ws.directory), "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("ledger head: entry 3 sha256:"))
    head = line.split()[-1]
    assert head == ws.ledger.head_hash
    assert main(["ledger", "verify", "--workspace", str(ws.directory), "--expect-head", head]) == 0
    ws._sync()


KILLED_MID_TENSOR = textwrap.dedent("""
    import sys
    from auditor.run.workspace import Workspace
    ws = Workspace.open(sys.argv[1], device="cpu")
    def progress(done, total):
        if done >= 3 * (1 << 24):  # 48 MiB into the first 100 MB shard: inside a tensor's bytes
            print("writing", done, total, flush=True)
            sys.stdin.readline()  # wait here until killed
    ws.export(sys.argv[2], max_shard_size="100MB", progress=progress)
""")


def shard_is_complete(path: Path) -> bool:
    raw = path.read_bytes()
    if len(raw) < 8:
        return False
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    return len(raw) == 8 + n + end


def test_sigkill_while_tensors_are_written_leaves_no_export_and_a_reexport_works(ws: Workspace,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_TENSOR, str(ws.directory), str(out)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("writing"), proc.stderr.read()[-3000:]
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(f".killed.partial-{proc.pid}-")]
        assert len(partial) == 1
        shards = sorted(partial[0].glob("*.safetensors"))
        assert len(shards) == 1 and not shard_is_complete(shards[0])  # killed inside a tensor write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing under the final name
    assert ws.verify()["ok"]
    done = ws.export(out, max_shard_size="100MB")
    assert [p.name for p in tmp_path.iterdir()] == ["killed"]  # the dead process's partial folder is gone
    tensors = tensors_of(done)
    meta = json.loads((done / "model.safetensors.index.json").read_text())["metadata"]
    assert fingerprint_tensors(tensors.items()) == meta["edit_auditor.export_fingerprint"]
    with torch.no_grad():
        expected = export_state_dict(ws.lm.model, torch.float32)
    assert fingerprint_tensors(expected.items()) == meta["edit_auditor.export_fingerprint"]
    assert all(shard_is_complete(p) for p in done.glob("*.safetensors"))
