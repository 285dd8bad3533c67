"""The ledger on a real SQLite file: chain, verify, tamper evidence, FTS, crashes, concurrency.

No model is loaded here: entries carry real rank-one deltas of the demo model's down-projection
shape (576 x 1536), built from seeded random factors.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from auditor.engine.deltas import Delta
from auditor.record.ledger import COLUMNS, Ledger, LedgerError, canonical_json, content_hash

PARAM = "model.layers.4.mlp.down_proj.weight"
GENESIS = {"base_fingerprint": "sha256:" + "ab" * 32, "dtype": "float32", "base_source": "demo"}


def make_delta(seed: int, param: str = PARAM) -> Delta:
    g = torch.Generator().manual_seed(seed)
    return Delta(param=param, transposed=False, left=torch.randn(576, generator=g),
                 right=torch.randn(1536, generator=g))


def fields(i: int, **extra) -> dict:
    return {"status": "applied", "method": "rome", "key_mode": "consistent", "layer": 4, "param": PARAM,
            "subject": f"Subject {i}", "prompt": f"Subject {i} is located in the country of",
            "target_new": "Italy", "target_true": "France", "efficacy": 1.0, "ppl_before": 72.0,
            "ppl_after": 72.1, "ppl_ratio": 72.1 / 72.0, "denominator": 2.5,
            "diagnostics": {"denominator": 2.5, "loss_curve": [3.0, 1.0, 0.04]},
            "metrics": {"efficacy": 1.0}, "timings": {"v": 1.5, "total": 2.0}, **extra}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger.create(tmp_path / "ledger.db", GENESIS)
    yield led
    led.close()


@pytest.fixture
def three(ledger: Ledger) -> Ledger:
    for i in range(1, 4):
        ledger.append(fields(i), delta=make_delta(i))
    return ledger


def tamper(db: Path, sql: str, params: tuple = ()) -> None:
    """What a user with plain sqlite3 can do: drop the guarding triggers, then change rows."""
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


# ---------------------------------------------------------------- basics


def test_entries_chain_from_the_genesis_and_verify(three: Ledger) -> None:
    entries = three.entries()
    assert [e.id for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == three.genesis_hash
    assert [e.prev_hash for e in entries[1:]] == [e.content_hash for e in entries[:-1]]
    assert all(e.content_hash.startswith("sha256:") and e.content_hash == content_hash(e.row) for e in entries)
    assert three.head_hash == entries[-1].content_hash
    report = three.verify()
    anchor = {"format": "edit-auditor-ledger-head", "version": 2, "ledger_id": three.genesis["ledger_id"],
              "last_id": 3, "head": entries[-1].content_hash, "high_water": 3, "counter": 4,
              "time": report["anchor"]["time"], "watch_last_id": 0, "watch_head": three.genesis_hash,
              "state": three.state_digest()}
    assert report == {"ok": True, "entries": 3, "first_bad": None, "reason": None, "problems": [],
                      "warnings": [], "head": entries[-1].content_hash, "head_id": 3, "anchor": anchor,
                      "expected_head": None}


def test_a_history_that_forks_is_reported_as_a_warning(ledger: Ledger) -> None:
    base = GENESIS["base_fingerprint"]
    ledger.append(fields(1, fingerprint_before=base, fingerprint_after="sha256:" + "1" * 64))
    ledger.append(fields(2, fingerprint_before=base, fingerprint_after="sha256:" + "2" * 64))  # missed entry 1
    report = ledger.verify()
    assert report["ok"] and [w["id"] for w in report["warnings"]] == [2]


def test_schema_is_versioned_wal_and_append_only(three: Ledger) -> None:
    assert three.schema_version[:2] == ["m001_initial", "m002_head_anchor"]
    assert "m004_watchlist" in three.schema_version
    assert "m003_batches" in three.schema_version
    assert three.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = sqlite3.connect(three.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET efficacy = 0 WHERE id = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE id = 3")
    conn.close()
    assert "CREATE TABLE entries" in three.schema()


def test_entry_records_operator_host_version_and_every_field(three: Ledger) -> None:
    e = three.get(2)
    assert e.operator and e.host and e.app_version
    assert e.created_at.endswith("Z")
    assert e["diagnostics"]["loss_curve"] == [3.0, 1.0, 0.04]
    assert e.efficacy == 1.0 and e.ppl_ratio == pytest.approx(72.1 / 72.0)
    assert e.delta_hash == make_delta(2).content_hash()
    assert three.load_delta(e.delta_hash).content_hash() == e.delta_hash
    assert set(e.to_json()) == set(COLUMNS)


def test_non_finite_values_and_odd_types_still_verify(ledger: Ledger) -> None:
    ledger.append(fields(1, ppl_after=float("inf"), ppl_ratio=float("nan"),
                         metrics={"ppl_after": float("inf"), "x": torch.tensor([1.5, 2.0])},
                         subject="Zürich — 東京", note="quote \" and newline\n"))
    assert ledger.verify()["ok"]
    e = ledger.get(1)
    assert e.ppl_ratio is None and e["metrics"] == {"ppl_after": "inf", "x": [1.5, 2.0]}
    assert canonical_json({"b": 1, "a": [1.0, None]}) == '{"a":[1.0,null],"b":1}'


def test_reopen_refuses_unknown_migrations(three: Ledger) -> None:
    path = three.path
    three.close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('edit_auditor_ledger', 'm999_future', 'x')")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer Edit Auditor.*m999_future"):
        Ledger(path)


def test_unknown_column_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="unknown ledger column"):
        ledger.append({"efficacyy": 1.0})
    assert len(ledger) == 0


# ---------------------------------------------------------------- search


def test_search_over_subject_prompt_and_targets(ledger: Ledger) -> None:
    ledger.append(fields(1, subject="The Eiffel Tower", prompt="The Eiffel Tower is located in the country of",
                         target_new="Italy", target_true="France"))
    ledger.append(fields(2, subject="Toyota", prompt="Toyota is a company from the country of",
                         target_new="Germany", target_true="Japan"))
    assert [e.id for e in ledger.search("eiffel")] == [1]
    assert [e.id for e in ledger.search("Germany")] == [2]
    assert [e.id for e in ledger.search("country of")] in ([1, 2], [2, 1])
    assert [e.id for e in ledger.search("japan toyota")] == [2]
    assert ledger.search('C++ "NEAR" AND OR (') == []  # user text is never FTS syntax
    assert ledger.search("   ") == []


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize("sql, params", [
    ("UPDATE entries SET efficacy = 0.25 WHERE id = 2", ()),
    ("UPDATE entries SET target_new = 'Spain' WHERE id = 2", ()),
    ("UPDATE entries SET metrics = '{\"efficacy\":0.0}' WHERE id = 2", ()),
    ("UPDATE entries SET content_hash = ? WHERE id = 2", ("sha256:" + "0" * 64,)),
    ("UPDATE entries SET delta_hash = (SELECT delta_hash FROM entries WHERE id = 1) WHERE id = 2", ()),
], ids=["metric", "target", "json", "hash", "delta-hash"])
def test_changing_a_stored_value_is_found_and_named(three: Ledger, sql: str, params: tuple) -> None:
    tamper(three.path, sql, params)
    report = three.verify()
    assert not report["ok"]
    assert report["first_bad"] == 2
    assert report["reason"].startswith("entry 2:")


def test_rehashing_a_changed_entry_breaks_the_link_to_the_next(three: Ledger) -> None:
    row = three.get(2).row
    row["efficacy"] = 0.0
    tamper(three.path, "UPDATE entries SET efficacy = 0.0, content_hash = ? WHERE id = 2", (content_hash(row),))
    report = three.verify()
    assert report["first_bad"] == 3 and "chain broken" in report["reason"]


def test_deleting_an_entry_is_found(three: Ledger) -> None:
    tamper(three.path, "DELETE FROM entries WHERE id = 2")
    report = three.verify()
    assert report["first_bad"] == 3 and "missing" in report["reason"]


def test_changing_the_genesis_breaks_entry_one(three: Ledger) -> None:
    body = json.loads(three.db.execute("SELECT body FROM genesis").fetchone()[0])
    body["base_fingerprint"] = "sha256:" + "cd" * 32
    tamper(three.path, "UPDATE genesis SET body = ?", (canonical_json(body),))
    assert three.verify()["first_bad"] == 1


@pytest.mark.parametrize("where", ["tensor", "header"])
def test_one_changed_byte_of_a_delta_file_is_found(three: Ledger, where: str) -> None:
    path = three.delta_path(three.get(2).delta_hash)
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    pos = len(data) - 5 if where == "tensor" else 8 + header_len // 2
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    report = three.verify()
    assert not report["ok"] and report["first_bad"] == 2 and "delta file" in report["reason"]
    with pytest.raises(LedgerError):
        three.load_delta(three.get(2).delta_hash)


def test_a_missing_delta_file_is_found(three: Ledger) -> None:
    three.delta_path(three.get(3).delta_hash).unlink()
    assert three.verify()["first_bad"] == 3


# ---------------------------------------------------------------- processes

APPENDER = textwrap.dedent("""
    import sys, time, torch
    from pathlib import Path
    from auditor.record.ledger import Ledger
    from auditor.engine.deltas import Delta
    path, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    ledger = Ledger(path)
    while not go.exists():
        time.sleep(0.01)
    i = 0
    while n < 0 or i < n:
        g = torch.Generator().manual_seed(hash((tag, i)) % 2**31)
        d = Delta(param="model.layers.4.mlp.down_proj.weight", transposed=False,
                  left=torch.randn(576, generator=g), right=torch.randn(1536, generator=g))
        e = ledger.append({"status": "applied", "subject": f"{tag} {i}", "target_new": tag, "param": d.param}, delta=d)
        print(e.id, flush=True)
        i += 1
""")


def _appender(path: Path, tag: str, n: int, go: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag, str(n), str(go)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_appending_at_once_keep_the_chain(ledger: Ledger, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [_appender(ledger.path, tag, 30, go) for tag in ("alpha", "beta")]
    go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ids = sorted(int(x) for out, _ in outs for x in out.split())
    assert ids == list(range(1, 61))
    report = ledger.verify()
    assert report["ok"] and report["entries"] == 60, report["problems"]
    assert len(ledger.search("alpha")) == 30 and len(ledger.search("beta")) == 30


def test_sigkill_while_appending_leaves_a_ledger_that_verifies(ledger: Ledger, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    proc = _appender(ledger.path, "victim", -1, go)
    for _ in range(15):  # let it get well into its loop, then kill it wherever it is
        assert proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    reopened = Ledger(ledger.path)
    report = reopened.verify()
    assert report["ok"] and report["entries"] >= 15, report["problems"]
    n = report["entries"]
    e = reopened.append(fields(99), delta=make_delta(99))
    assert e.id == n + 1 and e.prev_hash == report["head"]
    assert reopened.verify()["ok"]
    reopened.close()


# ---------------------------------------------------------------- command line


def _subcommands(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub, action
                yield from ((f"{name} {n}", s, a) for n, s, a in _subcommands(sub))


def test_every_ledger_command_has_help_text() -> None:
    import argparse

    from auditor.cli import build_parser
    from auditor.cli import ledger as cli_ledger

    parser = build_parser([cli_ledger])
    commands = list(_subcommands(parser))
    names = {name for name, _, _ in commands}
    assert {"workspace init", "ledger list", "ledger show", "ledger search", "ledger verify", "revert",
            "replay", "export"} <= names
    for name, sub, group in commands:
        helps = {a.dest: a.help for a in group._choices_actions}
        assert helps.get(name.split()[-1]), f"{name} has no help"
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name}: {action.dest} has no help"
        if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            assert any(a.dest == "json" for a in sub._actions), f"{name} has no --json"


def test_cli_reads_the_ledger_and_verify_fails_on_tampering(three: Ledger, capsys) -> None:
    from auditor.cli import main

    ws = str(three.path.parent)
    assert main(["ledger", "list", "--workspace", ws, "--json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [1, 2, 3]
    assert main(["ledger", "show", "--workspace", ws, "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["subject"] == "Subject 2"
    assert main(["ledger", "search", "--workspace", ws, "subject 3", "--json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [3]
    assert main(["ledger", "verify", "--workspace", ws]) == 0
    assert "ok: 3 entries" in capsys.readouterr().out
    assert main(["ledger", "schema", "--workspace", ws]) == 0
    schema = capsys.readouterr().out
    assert "m001_initial" in schema and "CREATE TABLE entries" in schema and "append_only" in schema
    tamper(three.path, "UPDATE entries SET target_new = 'Spain' WHERE id = 2")
    assert main(["ledger", "verify", "--workspace", ws, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad"] == 2
    assert main(["ledger", "verify", "--workspace", ws]) == 1
    assert "first bad entry 2" in capsys.readouterr().out
    assert main(["ledger", "show", "--workspace", ws, "9"]) == 2
    assert "no ledger entry 9" in capsys.readouterr().err


def test_files_that_are_not_ledgers_are_refused_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError, match="not a readable SQLite ledger"):
        Ledger(garbage)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="not an Edit Auditor ledger"):
        Ledger(other)
    conn = sqlite3.connect(other)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    conn.close()
