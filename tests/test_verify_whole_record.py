"""Issue 17, item 4: ``ledger verify`` covers the whole record, and records cannot lie.

Every case goes through the real command line (``auditor.cli.main``) on a real workspace folder:
a ledger with real rank-one deltas of the demo model's shape (no model is loaded, except in the
slow MEMIT case at the end, which runs the issue's dry run -> apply-reviewed -> revert -> export on
the demo model). Tampering is done as the issue's attacker did it: plain ``sqlite3`` with the
guarding triggers dropped, files replaced or linked.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch

from auditor.cli import main
from auditor.engine.deltas import Delta
from auditor.record.anchor import KEY_ENV, read_anchor
from auditor.record.ledger import Ledger
from auditor.record.watchlist import Watchlist, _event_hash

PARAM = "model.layers.4.mlp.down_proj.weight"
GENESIS = {"base_fingerprint": f"sha256:{1:064x}", "dtype": "float32", "base_source": "demo"}


def delta(seed: int) -> Delta:
    g = torch.Generator().manual_seed(seed)
    return Delta(param=PARAM, transposed=False, left=torch.randn(576, generator=g), right=torch.randn(1536, generator=g))


def fields(i: int) -> dict:
    return {"status": "applied", "method": "rome", "layer": 4, "param": PARAM, "subject": f"Tower {i}",
            "prompt": f"Tower {i} is located in", "target_new": "Rome", "target_true": "Paris",
            "fingerprint_before": f"sha256:{i:064x}", "fingerprint_after": f"sha256:{i + 1:064x}"}


def build(folder: Path) -> Path:
    """A workspace folder's ledger: three applied edits with deltas, a watchlist of two items, one removed."""
    with Ledger.create(folder / "ledger.db", GENESIS) as led:
        led.set_setting("base_path", "/models/base")
        for i in range(1, 4):
            led.append(fields(i), delta=delta(i))
        wl = Watchlist(led)
        wl.add("The capital of France is", "Paris")
        wl.add("The Eiffel Tower is in", "Paris")
        wl.remove(1, note="no longer relevant")
    return folder


def tamper(folder: Path, *sql: str) -> None:
    conn = sqlite3.connect(folder / "ledger.db")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'"):
        conn.execute(f"DROP TRIGGER {name}")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def verify(capsys: pytest.CaptureFixture[str], ws: Path, *extra: str) -> tuple[int, str]:
    code, out, err = cli(capsys, "ledger", "verify", "--workspace", str(ws), *extra)
    return code, out + err


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return build(tmp_path / "ws")


def test_a_fresh_record_verifies_and_says_what_it_covered(ws: Path, capsys) -> None:
    code, out = verify(capsys, ws)
    assert code == 0 and "settings, full-text index and watchlist intact" in out
    anchor = read_anchor(ws / "ledger.head")
    assert (anchor.version, anchor.last_id, anchor.watch_last_id) == (2, 3, 3) and anchor.counter == 8
    assert "warning" not in out


# ---------------------------------------------------------------- the watchlist


def test_deleting_the_newest_watchlist_event_is_found_and_does_not_revive_the_item(ws: Path, capsys) -> None:
    tamper(ws, "DELETE FROM watchlist WHERE id = 3")  # the "remove" of item 1: item 1 would be watched again
    code, out = verify(capsys, ws)
    assert code == 1 and "events were deleted" in out
    code, out, _ = cli(capsys, "watch", "list", "--workspace", str(ws))
    assert code == 1 and "does not verify" in out
    code, _, err = cli(capsys, "watch", "add", "--workspace", str(ws), "--prompt", "A", "--answer", "B")
    assert code == 2 and "refusing to append" in err


def test_rewriting_a_watchlist_event_with_recomputed_hashes_is_found(ws: Path, capsys) -> None:
    conn = sqlite3.connect(ws / "ledger.db")
    rows = [dict(zip([d[0] for d in conn.execute("SELECT * FROM watchlist").description], r))
            for r in conn.execute("SELECT * FROM watchlist ORDER BY id")]
    conn.close()
    rows[1]["answer"] = "Berlin"  # rewrite event 2 and re-chain every later event
    prev = rows[0]["content_hash"]
    statements = []
    for row in rows[1:]:
        row["prev_hash"] = prev
        row["content_hash"] = prev = _event_hash(row)
        statements.append(f"UPDATE watchlist SET answer = '{row['answer']}', prev_hash = '{row['prev_hash']}', "
                          f"content_hash = '{row['content_hash']}' WHERE id = {row['id']}")
    tamper(ws, *statements)
    code, out = verify(capsys, ws)
    assert code == 1 and "watchlist" in out and "events were replaced" in out


# ---------------------------------------------------------------- the full-text index and the state


@pytest.mark.parametrize("sql", [
    "INSERT INTO entries_fts(entries_fts) VALUES ('delete-all')",  # wiped: search finds nothing
    "DELETE FROM entries_fts_data",
    "DROP TRIGGER entries_ai",  # later entries would not be indexed
    "DELETE FROM settings",
    "UPDATE high_water SET last_id = 9",
    "DELETE FROM high_water",
])
def test_the_index_settings_and_high_water_mark_are_covered(ws: Path, capsys, sql: str) -> None:
    tamper(ws, sql)
    code, out = verify(capsys, ws)
    assert code == 1, out


def test_a_wiped_index_is_named_even_without_the_head_file(ws: Path, capsys) -> None:
    tamper(ws, "INSERT INTO entries_fts(entries_fts) VALUES ('delete-all')")
    code, out, _ = cli(capsys, "ledger", "search", "--workspace", str(ws), "Tower")
    assert "(no entries)" in out  # what the issue saw: search finds nothing...
    code, out = verify(capsys, ws)
    assert code == 1 and "full-text index" in out  # ... and verify now says why


# ---------------------------------------------------------------- delta files and head files: bounded reads


def test_a_delta_linked_to_a_huge_sparse_file_is_one_line(ws: Path, capsys) -> None:
    victim = next((ws / "deltas").iterdir())
    sparse = ws.parent / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(300 * 2**30)  # 300 GB, no blocks
    victim.unlink()
    victim.symlink_to(sparse)
    code, out = verify(capsys, ws)
    assert code == 1 and "more than the" in out


@pytest.mark.parametrize("kind", ["zero", "fifo", "folder"])
def test_a_head_file_that_is_not_a_regular_file_is_one_line(ws: Path, capsys, kind: str) -> None:
    head = ws / "ledger.head"
    head.unlink()
    if kind == "zero":
        head.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(head)
    else:
        head.mkdir()
    code, out = verify(capsys, ws)
    assert code == 1 and "not a regular file" in out
    code, _, err = cli(capsys, "watch", "add", "--workspace", str(ws), "--prompt", "A", "--answer", "B")
    assert code == 2 and "not a regular file" in err


def test_a_signing_key_that_is_a_device_is_one_line(ws: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, "/dev/zero")
    code, _, err = cli(capsys, "ledger", "verify", "--workspace", str(ws))
    assert code == 2 and "not a regular file" in err


# ---------------------------------------------------------------- signed heads, counters, kept heads


def test_an_older_signed_head_put_back_is_found_against_the_kept_head(tmp_path: Path, capsys, monkeypatch) -> None:
    key = tmp_path / "head.key"
    key.write_bytes(os.urandom(32))
    monkeypatch.setenv(KEY_ENV, str(key))
    ws = build(tmp_path / "ws")
    older = {name: (ws / name).read_bytes() for name in ("ledger.db", "ledger.head")}  # saved by the attacker
    with Ledger(ws / "ledger.db") as led:
        led.append(fields(4), delta=delta(4))
    code, kept, _ = cli(capsys, "ledger", "head", "--workspace", str(ws))
    assert code == 0 and kept.startswith("counter:")
    code, kept_json, _ = cli(capsys, "ledger", "head", "--workspace", str(ws), "--json")
    (tmp_path / "kept.json").write_text(kept_json)
    kept_forms = (kept.strip(), str(tmp_path / "kept.json"), kept_json)
    for kept_form in kept_forms:
        assert verify(capsys, ws, "--expect-head", kept_form)[0] == 0
    # the attack: delete the newest entry, lower the high-water mark, put the older head back
    tamper(ws, "DELETE FROM entries WHERE id = 4", "UPDATE high_water SET last_id = 3")
    (ws / "ledger.head").write_bytes(older["ledger.head"])
    code, out = verify(capsys, ws)
    assert code == 1 and "full-text index" in out  # the index still shows the deleted entry's traces
    # the thorough attacker puts the whole older database back: signed, consistent, and older
    for name, data in older.items():
        (ws / name).write_bytes(data)
    assert verify(capsys, ws)[0] == 0  # the signature says nothing about freshness...
    for kept_form in kept_forms:
        code, out = verify(capsys, ws, "--expect-head", kept_form)
        assert code == 1 and "kept head" in out, out  # ...the kept head does


def test_a_head_only_put_back_is_older_by_its_counter(ws: Path, capsys) -> None:
    older = (ws / "ledger.head").read_bytes()
    code, kept, _ = cli(capsys, "watch", "add", "--workspace", str(ws), "--prompt", "X is", "--answer", "Y")
    code, kept, _ = cli(capsys, "ledger", "head", "--workspace", str(ws))
    tamper(ws, "DELETE FROM watchlist WHERE id = 4")
    (ws / "ledger.head").write_bytes(older)
    assert verify(capsys, ws)[0] == 0  # the state as it was before the add: consistent with itself
    code, out = verify(capsys, ws, "--expect-head", kept.strip())
    assert code == 1 and "older than the head kept elsewhere" in out


def test_ledger_head_refuses_a_ledger_that_does_not_verify(ws: Path, capsys) -> None:
    tamper(ws, "DELETE FROM entries WHERE id = 3")
    code, out, err = cli(capsys, "ledger", "head", "--workspace", str(ws))
    assert code == 2 and out == "" and "does not verify" in err


# ---------------------------------------------------------------- no appends into a failing ledger


@pytest.mark.parametrize("argv", [
    ["watch", "add", "--prompt", "P", "--answer", "A"],
    ["watch", "remove", "2"],
])
def test_appends_into_a_ledger_that_fails_verify_are_refused(ws: Path, capsys, argv: list[str]) -> None:
    tamper(ws, "UPDATE entries SET target_new = 'Berlin' WHERE id = 2")
    before = (ws / "ledger.db").read_bytes(), (ws / "ledger.head").read_bytes()
    code, _, err = cli(capsys, *argv[:2], "--workspace", str(ws), *argv[2:])
    assert code == 2 and "refusing to append to a ledger that does not verify (entry 2" in err
    assert len(err.strip().splitlines()) == 1
    assert (ws / "ledger.head").read_bytes() == before[1]
    with Ledger(ws / "ledger.db") as led:
        assert len(led) == 3 and len(Watchlist(led).history()) == 3


def test_a_refused_append_stores_no_delta(ws: Path) -> None:
    tamper(ws, "DELETE FROM settings")
    n = len(list((ws / "deltas").iterdir()))
    with Ledger(ws / "ledger.db") as led, pytest.raises(Exception, match="refusing to append"):
        led.append(fields(9), delta=delta(9))
    assert len(list((ws / "deltas").iterdir())) == n


# ---------------------------------------------------------------- read-only workspaces


READ_COMMANDS = [["ledger", "list"], ["ledger", "verify"], ["ledger", "show", "2"], ["ledger", "search", "Tower"],
                 ["watch", "list"], ["ledger", "head"]]


def _run_all_read_commands(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in READ_COMMANDS:
        code, _, err = cli(capsys, *argv[:2], "--workspace", str(ws), *argv[2:])
        assert code == 0, (argv, err)


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_a_read_only_mount_can_be_listed_and_verified(ws: Path, tmp_path: Path, capsys) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(ws), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("mount --bind is not allowed here")
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], capture_output=True).returncode == 0
        _run_all_read_commands(mnt, capsys)
        assert sorted(p.name for p in mnt.iterdir()) == ["deltas", "ledger.db", "ledger.head"]
        # the commands closed what they opened: the mount is not busy
        umount = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        assert umount.returncode == 0, umount.stderr
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


def _open_files_under(folder: Path) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_every_command_closes_what_it_opened(ws: Path, capsys) -> None:
    """The command line's scope (cli.parser) closes every ledger a command opened, even one it
    only dropped: the folder can be unmounted, moved or deleted as soon as the command returns."""
    for argv in READ_COMMANDS + [["ledger", "schema"], ["ledger", "show", "999"]]:
        cli(capsys, *argv[:2], "--workspace", str(ws), *argv[2:])
        assert _open_files_under(ws) == [], argv


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes (the mount test covers root)")
def test_a_read_only_folder_can_be_listed_and_verified(ws: Path, capsys) -> None:
    for p in [*ws.rglob("*"), ws]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        _run_all_read_commands(ws, capsys)
        assert sorted(p.name for p in ws.iterdir()) == ["deltas", "ledger.db", "ledger.head"]
    finally:
        for p in [ws, *ws.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


def test_read_commands_write_nothing(ws: Path, capsys) -> None:
    snapshot = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in ws.iterdir()}
    _run_all_read_commands(ws, capsys)
    assert {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in ws.iterdir()} == snapshot


def test_a_copied_folder_verifies_like_the_original(ws: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(ws, copy)
    assert verify(capsys, copy)[0] == 0
    assert json.loads(cli(capsys, "ledger", "verify", "--workspace", str(copy), "--json")[1])["ok"]


# ---------------------------------------------------------------- the false result, end to end


@pytest.mark.slow
def test_memit_two_layer_dry_run_apply_reviewed_revert_export_tells_the_truth(demo_dir: Path, tmp_path: Path,
                                                                              capsys) -> None:
    """MEMIT dry run over two layers -> apply-reviewed -> revert -> export: every step through the CLI.

    Before issue 17 the reviewed entry lacked ``params``/``requests``: the revert changed nothing but
    exited 0 with equal fingerprints, verify said ok and the export shipped edited weights.
    """
    ws = tmp_path / "ws"
    assert cli(capsys, "workspace", "init", str(demo_dir), str(ws), "--device", "cpu")[0] == 0
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([
        {"prompt": "{} is located in the city of", "subject": "The Eiffel Tower", "target_new": "Rome",
         "target_true": "Paris"},
        {"prompt": "{} is located in the city of", "subject": "The Colosseum", "target_new": "London",
         "target_true": "Rome"}]))
    hparams = json.dumps({"layers": [3, 4], "v_num_grad_steps": 4, "mom2_n_tokens": 2000,
                          "context_templates": ["{}"]})
    code, out, err = cli(capsys, "edit", "--workspace", str(ws), "--requests", str(facts), "--method", "memit",
                         "--hparams", hparams, "--dry-run", "--device", "cpu", "--json")
    assert code == 0, err
    with Ledger(ws / "ledger.db", readonly=True) as led:
        dry = led.head()
    assert dry.status == "dry-run" and len(dry["params"]) == 2
    code, out, err = cli(capsys, "apply-reviewed", "--workspace", str(ws), str(dry.id), "--device", "cpu", "--json")
    assert code == 0, err
    applied = json.loads(out)
    with Ledger(ws / "ledger.db", readonly=True) as led:
        entry = led.get(applied["id"])
        assert entry["params"] == dry["params"] and entry["requests"] == dry["requests"]
        assert entry.n_requests == 2 and entry.fingerprint_before != entry.fingerprint_after
    code, out, err = cli(capsys, "revert", "--workspace", str(ws), str(applied["id"]), "--device", "cpu", "--json")
    assert code == 0, err
    reverted = json.loads(out)
    assert reverted["fingerprint_before"] == entry.fingerprint_after
    assert reverted["fingerprint_after"] == entry.fingerprint_before  # back to the base, measured
    assert verify(capsys, ws)[0] == 0
    code, out, err = cli(capsys, "export", "--workspace", str(ws), "--out", str(tmp_path / "out"), "--device", "cpu",
                         "--json")
    assert code == 0, err
    exported = json.loads(out)
    assert exported["applied_edits"] == 0 and exported["fingerprint"] == entry.fingerprint_before
    # a second revert of the same entry, or of the dry run, is refused and appends nothing
    with Ledger(ws / "ledger.db", readonly=True) as led:
        n = len(led)
    for target in (applied["id"], dry.id):
        code, _, err = cli(capsys, "revert", "--workspace", str(ws), str(target), "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1
    with Ledger(ws / "ledger.db", readonly=True) as led:
        assert len(led) == n


def test_an_applied_entry_that_does_not_name_what_its_delta_changes_fails_verify(ws: Path, capsys) -> None:
    """The reviewed entry of the issue lacked ``params``: revert, replay and export were then blind to it."""
    with Ledger(ws / "ledger.db") as led:
        led.append({**fields(4), "param": None}, delta=delta(4))
    code, out = verify(capsys, ws)
    assert code == 1 and "entry 4" in out and "its delta changes" in out


def test_an_applied_entry_that_records_no_change_fails_verify(ws: Path, capsys) -> None:
    with Ledger(ws / "ledger.db") as led:
        led.append({**fields(4), "fingerprint_before": f"sha256:{4:064x}", "fingerprint_after": f"sha256:{4:064x}"},
                   delta=delta(4))
    code, out = verify(capsys, ws)
    assert code == 1 and "the weights did not change" in out
