"""Issue 17: one error boundary, one output-path policy, atomic init, patches checked whole.

Everything here goes through the real command line (``auditor.cli.main``, in process, or
``python -m auditor.cli`` where a process must die) on real workspaces of a tiny Llama checkpoint
(real weights, real SQLite, real edits), so that what is checked is the contract a user meets:
one line on stderr, exit code 2, and the workspace byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import save_tiny

from auditor.cli import main
from auditor.cli.parser import _run, report_error
from auditor.engine.deltas import Delta, load_delta
from auditor.files import OutputError, check_output, read_regular, write_file
from auditor.record.hashing import sha256_file
from auditor.run.workspace import Workspace

HP = {"layers": [0, 1], "mom2_n_tokens": 2048, "mom2_seq_len": 64, "v_num_grad_steps": 4,
      "context_templates": ["{}", "The following is a fact. {}"]}
FACTS = [
    {"prompt": "The capital of {} is", "subject": "France", "target_new": "Rome", "target_true": "Paris"},
    {"prompt": "{} plays the", "subject": "Miles Davis", "target_new": "violin", "target_true": "trumpet"},
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256, a ledger by its rows (what must not change).

    SQLite may fold its write-ahead log into ``ledger.db`` whenever a connection closes, so the
    database is compared by a dump of its rows, not by its bytes (and the WAL files not at all).
    """
    out = {}
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == "workspace.lock" or p.name.endswith(("-wal", "-shm")):
            continue
        if p.name.endswith(".db"):
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            out[str(p.relative_to(folder))] = hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
            con.close()
        else:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("edit-auditor: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny") / "llama", tokenizer_dir)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def env_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDIT_AUDITOR_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("requests") / "facts.json"
    path.write_text(json.dumps(FACTS))
    return path


@contextlib.contextmanager
def cache_env(cache: Path):
    """``EDIT_AUDITOR_CACHE`` set for a module-scoped fixture (monkeypatch is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDIT_AUDITOR_CACHE", str(cache))
        yield


@pytest.fixture(scope="module")
def runs_file(tiny: Path, requests_file: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The JSON lines of a real two-step MEMIT sequence on the tiny model (for ``report --runs``)."""
    out = tmp_path_factory.mktemp("runs") / "sequence.jsonl"
    with cache_env(cache):
        assert main(["sequence", str(tiny), "--requests", str(requests_file), "--method", "memit", "--batch-size", "2",
                     "--hparams", json.dumps(HP), "--device", "cpu", "--stop-on", "none", "--quiet",
                     "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def edited(tiny: Path, requests_file: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace on the tiny model with one real MEMIT batch of two requests (read-only for tests)."""
    ws = tmp_path_factory.mktemp("edited") / "ws"
    with cache_env(cache):
        assert main(["workspace", "init", str(tiny), str(ws), "--device", "cpu"]) == 0
        assert main(["edit", "--workspace", str(ws), "--requests", str(requests_file), "--method", "memit",
                     "--batch-size", "2", "--hparams", json.dumps(HP), "--device", "cpu", "--json"]) == 0
    return ws


# ---------------------------------------------------------------- the output-path policy


def refused_targets(ws: Path, outside: Path) -> dict[str, Path]:
    """Targets every writing command must refuse: a workspace's own files, any ledger, links, devices."""
    delta = next((ws / "deltas").glob("*.safetensors"))
    other_ledger = outside / "copy-of-ledger.db"
    shutil.copyfile(ws / "ledger.db", other_ledger)
    link = outside / "innocent.html"
    if not link.is_symlink():
        link.symlink_to(ws / "ledger.db")
    dir_link = outside / "ws-link"
    if not dir_link.is_symlink():
        dir_link.symlink_to(ws)
    return {"ledger": ws / "ledger.db", "head": ws / "ledger.head", "wal": ws / "ledger.db-wal",
            "delta": delta, "deltas-dir-new-file": ws / "deltas" / "new.json", "lock": ws / "workspace.lock",
            "other-ledger": other_ledger, "link-to-ledger": link, "through-dir-link": dir_link / "ledger.head",
            "proc": Path("/proc/version"), "device": Path("/dev/null"), "workspace-itself": ws}


def writing_argv(command: str, target: Path, *, tiny: Path, edited: Path, requests_file: Path,
                 runs_file: Path) -> list[str]:
    """The command line of each command that writes a file or folder the user names, aimed at ``target``."""
    return {
        "report": ["report", "--runs", str(runs_file), "--out", str(target)],
        "sequence": ["sequence", str(tiny), "--requests", str(requests_file), "--out", str(target)],
        "edit": ["edit", str(tiny), "--requests", str(requests_file), "--dry-run", "--out", str(target)],
        "trace": ["trace", str(tiny), "--prompt", "The capital of France is", "--subject", "France",
                  "--png", str(target)],
        "export": ["export", "--workspace", str(edited), "--out", str(target), "--overwrite"],
        "export-patch": ["export", "--workspace", str(edited), "--patch", "--out", str(target), "--overwrite"],
    }[command]


@pytest.mark.parametrize("command", ["report", "sequence", "edit", "trace", "export", "export-patch"])
def test_no_command_writes_into_a_ledger_a_workspace_file_or_a_device(
        command: str, edited: Path, tiny: Path, requests_file: Path, runs_file: Path, tmp_path: Path,
        env_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(edited)
    for name, target in refused_targets(edited, tmp_path).items():
        argv = writing_argv(command, target, tiny=tiny, edited=edited, requests_file=requests_file,
                            runs_file=runs_file)
        assert main(argv) == 2, (command, name)
        err = one_line_error(capsys)
        assert any(why in err for why in ("refusing", "symbolic link", "not a regular file", "not a folder")), err
        assert snapshot(edited) == before, (command, name)
    assert main(["ledger", "verify", "--workspace", str(edited)]) == 0


def test_overwriting_a_patch_removes_only_what_its_manifest_lists(edited: Path, tmp_path: Path, env_cache: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "the.patch"
    assert main(["export", "--workspace", str(edited), "--patch", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"] + ["manifest.json"]) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    (out / "my-notes.txt").write_text("the reviewer's notes: not the program's to delete")
    before = snapshot(out)
    assert main(["export", "--workspace", str(edited), "--patch", "--out", str(out), "--overwrite"]) == 2
    one_line_error(capsys, "refusing to replace")
    assert snapshot(out) == before
    (out / "my-notes.txt").unlink()
    assert main(["export", "--workspace", str(edited), "--patch", "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_edit_out_appends_whole_lines_or_nothing(tiny: Path, requests_file: Path, tmp_path: Path, env_cache: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs.jsonl"
    out.write_text('{"earlier": "run"}\n')
    argv = ["edit", str(tiny), "--requests", str(requests_file), "--dry-run", "--layer", "1",
            "--hparams", json.dumps({"v_num_grad_steps": 3, "mom2_n_tokens": 2048, "mom2_seq_len": 64}),
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == '{"earlier": "run"}' and len(lines) == 1 + len(FACTS)
    assert all(json.loads(line)["subject"] for line in lines[1:])
    capsys.readouterr()


# ---------------------------------------------------------------- the policy as a property

@pytest.fixture(scope="module")
def bystander(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A model checkpoint no command of the test uses, and a GGUF file beside it."""
    root = tmp_path_factory.mktemp("bystander")
    (root / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    return save_tiny("gpt2", root / "gpt2", tokenizer_dir)


@pytest.mark.parametrize("command", ["report", "sequence", "edit", "trace", "export", "export-patch"])
def test_no_command_writes_into_a_model_checkpoint_or_over_a_gguf_file(
        command: str, edited: Path, tiny: Path, bystander: Path, requests_file: Path, runs_file: Path, tmp_path: Path,
        env_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``trace --png CHECKPOINT/config.json`` once replaced the config of the model it traced with
    a PNG (found this session on the demo's converted checkpoint): the files of any checkpoint
    (config.json beside its weights), in use or not, and GGUF files are refused like a ledger."""
    before = {folder: snapshot(folder) for folder in (tiny, bystander, bystander.parent)}
    link = tmp_path / "plot.png"
    link.symlink_to(tiny / "config.json")
    targets = {"config-in-use": tiny / "config.json", "weights-in-use": tiny / "model.safetensors",
               "new-file-in-use": tiny / "heatmap.png", "config": bystander / "config.json",
               "weights": bystander / "model.safetensors", "new-file": bystander / "out.jsonl",
               "gguf": bystander.parent / "model.gguf", "link-to-config": link}
    for name, target in targets.items():
        argv = writing_argv(command, target, tiny=tiny, edited=edited, requests_file=requests_file,
                            runs_file=runs_file)
        assert main(argv) == 2, (command, name)
        err = one_line_error(capsys)
        assert any(why in err for why in ("refusing", "symbolic link", "not a regular file", "not a folder")), err
        assert {folder: snapshot(folder) for folder in before} == before, (command, name)
    # a subfolder of a checkpoint folder is the user's, and a checkpoint's sibling is free
    (bystander / "plots").mkdir(exist_ok=True)
    for free in (bystander / "plots" / "t.png", bystander.parent / "t.png"):
        assert check_output(free, what="--png") == free


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PARTS = st.sampled_from(["ledger.db", "ledger.head", "ledger.db-wal", "deltas", "workspace.lock", "..", ".",
                         "ws", "link", "dirlink", "new.html", "x.jsonl", "sub", "ledger.db-journal", "ledger.old"])


@pytest.fixture(scope="module")
def policy_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real workspace layout (a real ledger, a delta file) plus links into it, beside free folders."""
    from auditor.record.ledger import Ledger

    root = tmp_path_factory.mktemp("policy")
    ws = root / "ws"
    ledger = Ledger.create(ws / "ledger.db", {"base_fingerprint": "sha256:" + "0" * 64, "dtype": "float32"})
    delta = Delta(param="w", transposed=False, left=torch.ones(3), right=torch.ones(2))
    ledger.store_delta(delta)
    ledger.close()
    (root / "sub").mkdir()
    (root / "link").symlink_to(ws / "ledger.db")
    (root / "dirlink").symlink_to(ws)
    (root / "sub" / "link").symlink_to(ws / "ledger.head")
    return root


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PARTS, min_size=1, max_size=4))
def test_any_path_is_refused_or_leads_outside_every_workspace_file(policy_tree: Path, parts: list[str]) -> None:
    ws = policy_tree / "ws"
    before = snapshot(ws)
    path = policy_tree.joinpath(*parts)
    try:
        target = write_file(path, "<html>report</html>")
    except OutputError as e:
        assert len(str(e).splitlines()) == 1
    else:
        real = Path(os.path.realpath(target))
        assert ws.resolve() not in (real, *real.parents) or real.relative_to(ws.resolve()).parts[0] not in (
            "ledger.db", "ledger.head", "ledger.db-wal", "deltas", "workspace.lock")
        real.unlink()
    assert snapshot(ws) == before
    assert not list(policy_tree.rglob("*.partial-*"))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512), limit=st.integers(min_value=0, max_value=600))
def test_bounded_reads_never_return_more_than_the_limit(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                                        limit: int) -> None:
    path = tmp_path_factory.mktemp("read") / "f"
    path.write_bytes(data)
    try:
        got = read_regular(path, limit=limit)
    except OSError as e:
        assert len(data) > limit and "more than" in str(e)
    else:
        assert got == data and len(got) <= limit


def test_bounded_reads_refuse_devices_fifos_and_huge_sparse_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(300 * 2**30)  # 300 GB that take no space
    for path, why in ((Path("/dev/zero"), "not a regular file"), (fifo, "not a regular file"),
                      (sparse, "more than"), (tmp_path / "absent", "missing")):
        with pytest.raises(OSError, match=why):
            read_regular(path, limit=1 << 20, what="ledger head")
    with pytest.raises(OutputError, match="not a regular file|system folder"):
        check_output(fifo)


# ---------------------------------------------------------------- the error boundary


def test_an_unexpected_error_is_one_line_and_exit_2_with_the_traceback_only_under_v(
        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: object) -> int:
        return {}["a key that is not there"]

    assert _run(broken, object(), (), False) == 2
    err = one_line_error(capsys, "unexpected KeyError", "-v")
    assert "a key that is not there" in err
    assert _run(broken, object(), (), True) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("edit-auditor: error: ")
    assert report_error(OSError(28, "No space left on device", "/mnt/full/out.html")) == 2
    one_line_error(capsys, "/mnt/full/out.html", "No space left on device", "free some space")


# ---------------------------------------------------------------- workspace init is atomic

KILL_DURING_INIT = textwrap.dedent("""
    import os, signal, sys
    from auditor.record import ledger as ledger_module
    real_create = ledger_module.Ledger.create.__func__

    def create_then_die(cls, path, genesis, **kw):
        real_create(cls, path, genesis, **kw)      # the database is on disk ...
        os.kill(os.getpid(), signal.SIGKILL)       # ... and the process dies before init ends

    ledger_module.Ledger.create = classmethod(create_then_die)
    from auditor.cli import main
    sys.exit(main(["workspace", "init", sys.argv[1], sys.argv[2], "--device", "cpu"]))
""")


def test_a_killed_workspace_init_leaves_nothing_that_blocks_the_retry(tiny: Path, tmp_path: Path, env_cache: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "ws"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_INIT, str(tiny), str(target)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists()  # the half-built ledger is in a hidden sibling, not under the name
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert main(["workspace", "init", str(tiny), str(target), "--device", "cpu"]) == 0
    assert main(["ledger", "verify", "--workspace", str(target)]) == 0
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # the dead process's folder is gone
    capsys.readouterr()


# ---------------------------------------------------------------- apply-patch


@pytest.fixture
def patch(edited: Path, tmp_path: Path, env_cache: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "edits.patch"
    assert main(["export", "--workspace", str(edited), "--patch", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.fixture
def fresh(tiny: Path, tmp_path: Path, env_cache: Path) -> Path:
    ws = tmp_path / "fresh"
    assert main(["workspace", "init", str(tiny), str(ws), "--device", "cpu"]) == 0
    return ws


def test_apply_patch_is_one_entry_that_reproduces_the_source_and_reverts_whole(
        patch: Path, fresh: Path, edited: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["apply-patch", str(patch), "--workspace", str(fresh), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    source = Workspace.open(edited, device="cpu")
    assert out["same_as_source"] is True and out["fingerprint_after"] == source.fingerprint
    source.close()
    assert main(["ledger", "verify", "--workspace", str(fresh)]) == 0
    assert main(["replay", "--workspace", str(fresh), "--json"]) == 0
    capsys.readouterr()
    assert main(["revert", "--workspace", str(fresh), str(out["id"]), "--json"]) == 0
    reverted = json.loads(capsys.readouterr().out)
    ws = Workspace.open(fresh, device="cpu")
    assert ws.fingerprint == ws.base_fingerprint == reverted["fingerprint_after"]
    ws.close()


def _rewrite_manifest(patch: Path, change) -> None:
    manifest = json.loads((patch / "manifest.json").read_text())
    change(manifest)
    (patch / "manifest.json").write_text(json.dumps(manifest))


def _broadcastable_delta(patch: Path) -> None:
    """Replace the first delta by one shaped (1,) x (1,), with every hash recomputed to match."""
    manifest = json.loads((patch / "manifest.json").read_text())
    item = manifest["deltas"][0]
    param = load_delta(patch / item["file"]).parts_on(None)[0].param
    small = Delta(param=param, transposed=False, left=torch.ones(1), right=torch.ones(1))
    small.save(patch / item["file"])
    item["file_sha256"], item["delta_hash"] = sha256_file(patch / item["file"]), small.content_hash()
    (patch / "manifest.json").write_text(json.dumps(manifest))


def _second_delta_broken(patch: Path) -> None:
    """The first delta is fine; a later one is not: nothing may be half applied."""
    manifest = json.loads((patch / "manifest.json").read_text())
    first = manifest["deltas"][0]
    manifest["deltas"].append({**first, "delta_hash": "sha256:" + "f" * 64})
    (patch / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, needle", [
    (_broadcastable_delta, "does not fit"),
    (lambda p: _rewrite_manifest(p, lambda m: m["deltas"][0].update(file="../../../../../../etc/hostname")),
     "outside the patch"),
    (lambda p: _rewrite_manifest(p, lambda m: m["deltas"][0].update(file="/etc/hostname")), "not a relative path"),
    (_second_delta_broken, "delta hash"),
    (lambda p: _rewrite_manifest(p, lambda m: m.update(base_fingerprint="sha256:" + "1" * 64)), "made for base"),
    (lambda p: _rewrite_manifest(p, lambda m: m["deltas"].clear()), "no deltas"),
    (lambda p: (p / "manifest.json").write_text("[1, 2"), "not a readable patch"),
    (lambda p: (p / "manifest.json").unlink() or os.symlink("/dev/zero", p / "manifest.json"), "not a regular file"),
])
def test_a_bad_patch_changes_nothing(damage, needle: str, patch: Path, fresh: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    damage(patch)
    before = snapshot(fresh)
    assert main(["apply-patch", str(patch), "--workspace", str(fresh)]) == 2
    one_line_error(capsys, needle, "not applied")
    assert snapshot(fresh) == before
    ws = Workspace.open(fresh, device="cpu")
    assert ws.fingerprint == ws.base_fingerprint and len(ws.ledger) == 0
    ws.close()


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (root only): ``fill(leave)`` fills it, leaving ``leave`` bytes free."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")

    def fill(leave: int = 0) -> None:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        if leave:
            size = (disk / "filler").stat().st_size
            os.truncate(disk / "filler", max(0, size - leave))

    try:
        yield SimpleNamespace(path=disk, fill=fill)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def no_temporary_files(*folders: Path) -> None:
    for folder in folders:
        left = [p for p in folder.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")]
        assert not left, left


def test_a_full_disk_during_export_report_edit_and_sequence_is_one_line_and_leaves_nothing(
        small_disk: SimpleNamespace, edited: Path, tiny: Path, requests_file: Path, runs_file: Path,
        env_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_disk.fill()
    commands = {
        "export": ["export", "--workspace", str(edited), "--out", str(small_disk.path / "model")],
        "export-patch": ["export", "--workspace", str(edited), "--patch", "--out", str(small_disk.path / "p")],
        "report": ["report", "--runs", str(runs_file), "--out", str(small_disk.path / "r.html")],
        "edit": ["edit", str(tiny), "--requests", str(requests_file), "--dry-run", "--layer", "1",
                 "--hparams", json.dumps({"v_num_grad_steps": 2, "mom2_n_tokens": 2048, "mom2_seq_len": 64}),
                 "--device", "cpu", "--out", str(small_disk.path / "runs.jsonl")],
        "sequence": ["sequence", str(tiny), "--requests", str(requests_file), "--method", "memit",
                     "--batch-size", "2", "--hparams", json.dumps(HP), "--device", "cpu",
                     "--out", str(small_disk.path / "seq.jsonl")],
    }
    before = snapshot(edited)
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert err[-1].startswith("edit-auditor: error: ") and "No space left on device" in err[-1], (name, err)
        assert not any("Traceback" in line for line in err), name
        assert sorted(p.name for p in small_disk.path.iterdir()) == ["filler"], name  # nothing half written
    assert snapshot(edited) == before
    assert main(["ledger", "verify", "--workspace", str(edited)]) == 0


@pytest.mark.parametrize("leave", [0, 48 * 1024])
def test_a_full_disk_under_the_workspace_leaves_no_delta_without_its_entry(
        leave: int, small_disk: SimpleNamespace, tiny: Path, requests_file: Path, env_cache: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ws = small_disk.path / "ws"
    assert main(["workspace", "init", str(tiny), str(ws), "--device", "cpu"]) == 0
    small_disk.fill(leave=leave)  # 0: SQLite cannot even open; 48 KiB: it opens, the append runs out
    code = main(["edit", "--workspace", str(ws), "--requests", str(requests_file), "--method", "memit",
                 "--batch-size", "2", "--hparams", json.dumps(HP), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2) and "Traceback" not in "\n".join(err), err
    if code == 2:
        assert err[-1].startswith("edit-auditor: error: "), err
    os.unlink(small_disk.path / "filler")
    assert main(["ledger", "verify", "--workspace", str(ws)]) == 0
    no_temporary_files(ws)
    opened = Workspace.open(ws, device="cpu")
    referenced = {e.delta_hash.split(":")[1] for e in opened.ledger.entries() if e.delta_hash}
    opened.close()
    on_disk = {p.stem for p in (ws / "deltas").glob("*.safetensors")} if (ws / "deltas").exists() else set()
    assert on_disk <= referenced
