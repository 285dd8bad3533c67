"""Issue 11, item 1: the ledger's head cannot silently vanish.

A real SQLite ledger, no model: deleting the newest entry (triggers dropped with sqlite3, as the
issue's report did) must fail ``ledger verify`` (exit 1), the next append must refuse rather than
reuse the id, and a head recorded elsewhere (``--expect-head``) must catch even an attacker who
also deletes ``ledger.head`` and lowers the high-water mark.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.record.anchor import HeadAnchor, read_anchor, write_anchor
from auditor.record.ledger import Ledger, LedgerError

GENESIS = {"base_fingerprint": "sha256:" + "ab" * 32, "dtype": "float32", "base_source": "demo"}


def fields(i: int) -> dict:
    return {"status": "dry-run", "subject": f"Subject {i}", "prompt": f"Subject {i} is located in",
            "target_new": "Italy", "target_true": "France", "efficacy": 1.0}


def core(anchor: HeadAnchor) -> tuple:
    """The fields every head file version has (version 2 adds counter, time, watchlist and state)."""
    return anchor.ledger_id, anchor.last_id, anchor.head, anchor.high_water


def tamper(db: Path, *sql: str) -> None:
    """What a user with plain sqlite3 can do: drop every guarding trigger, then run ``sql``."""
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%append_only%'"):
        conn.execute(f"DROP TRIGGER {name}")
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()


@pytest.fixture
def three(tmp_path: Path) -> Ledger:
    led = Ledger.create(tmp_path / "ledger.db", GENESIS)
    for i in range(1, 4):
        led.append(fields(i))
    yield led
    led.close()


def verify_cli(ledger: Ledger, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["ledger", "verify", "--workspace", str(ledger.path.parent), *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out


def test_every_append_moves_the_head_file_and_the_high_water_mark(three: Ledger) -> None:
    anchor = read_anchor(three.anchor_path)
    assert core(anchor) == core(HeadAnchor(three.genesis["ledger_id"], 3, three.head_hash, 3))
    assert three.anchor_path.name == "ledger.head"
    assert three.db.execute("SELECT last_id FROM high_water").fetchone()[0] == 3
    e = three.append(fields(4))
    assert core(read_anchor(three.anchor_path)) == core(HeadAnchor(three.genesis["ledger_id"], 4, e.content_hash, 4))


def test_an_empty_ledger_is_anchored_at_its_genesis(tmp_path: Path) -> None:
    with Ledger.create(tmp_path / "ledger.db", GENESIS) as led:
        assert read_anchor(led.anchor_path).head == led.genesis_hash
        assert led.verify()["ok"] and led.verify()["head_id"] == 0


def test_deleting_the_newest_entry_fails_verify_and_blocks_the_next_append(three: Ledger, capsys) -> None:
    old_head = three.head_hash
    tamper(three.path, "DELETE FROM entries WHERE id = 3")
    report = three.verify()
    assert not report["ok"] and report["first_bad"] == 3 and "deleted" in report["reason"]
    code, out = verify_cli(three, capsys)
    assert code == 1 and out.startswith("FAILED: first bad entry 3: missing: ledger.head records entry 3")
    with pytest.raises(LedgerError, match="refusing to append"):
        three.append(fields(9))
    assert len(three) == 2 and three.head_id == 2  # nothing written, id 3 not reused
    code, out = verify_cli(three, capsys, "--expect-head", old_head)
    assert code == 1 and "is not in this ledger" in out


def test_deleting_the_head_file_too_is_still_found(three: Ledger, capsys) -> None:
    tamper(three.path, "DELETE FROM entries WHERE id = 3")
    three.anchor_path.unlink()
    report = three.verify()
    assert not report["ok"]
    reasons = " | ".join(p["reason"] for p in report["problems"])
    assert "ledger.head is missing" in reasons and "ids up to 3 were given out" in reasons
    with pytest.raises(LedgerError, match="refusing to append"):
        three.append(fields(9))


def test_only_the_recorded_head_catches_a_thorough_attacker(three: Ledger, capsys) -> None:
    """Rows, high-water mark and head file all rewritten consistently: only a head kept elsewhere
    (printed by the append, in an export's metadata) shows the loss."""
    old_head = three.head_hash
    code, _ = verify_cli(three, capsys, "--expect-head", old_head)
    assert code == 0
    tamper(three.path, "DELETE FROM entries WHERE id = 3", "UPDATE high_water SET last_id = 2")
    two = three.get(2)
    write_anchor(three.anchor_path, HeadAnchor(three.genesis["ledger_id"], 2, two.content_hash, 2))
    assert three.verify()["ok"]  # the limit of any self-contained log
    code, out = verify_cli(three, capsys, "--expect-head", old_head)
    assert code == 1 and out.startswith("FAILED: ledger head: the expected head sha256:")
    code, out = verify_cli(three, capsys, "--expect-head", old_head.split(":")[1])  # bare hex works too
    assert code == 1


def test_expect_head_accepts_the_head_or_an_earlier_entry(three: Ledger, capsys) -> None:
    code, out = verify_cli(three, capsys, "--expect-head", three.head_hash)
    assert code == 0 and "expected head found: entry 3, 0 entries after it" in out
    code, out = verify_cli(three, capsys, "--expect-head", three.get(1).content_hash, "--json")
    assert code == 0 and json.loads(out)["expected_head"] == {
        "hash": three.get(1).content_hash, "found": True, "id": 1, "entries_after": 2}
    code = main(["ledger", "verify", "--workspace", str(three.path.parent), "--expect-head", "lots"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("edit-auditor: error: --expect-head: 'lots' is not a sha256 hash")


def test_replacing_the_newest_entry_is_found(three: Ledger) -> None:
    """Delete entry 3 and append a different, correctly chained entry 3 behind the ledger's back."""
    row = three.get(3).row
    tamper(three.path, "DELETE FROM entries WHERE id = 3")
    conn = sqlite3.connect(three.path)
    from auditor.record.ledger import COLUMNS, content_hash

    row["target_new"] = "Spain"
    row["content_hash"] = content_hash(row)
    conn.execute(f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                 [row[c] for c in COLUMNS])
    conn.commit()
    conn.close()
    report = three.verify()
    assert not report["ok"] and report["first_bad"] == 3 and "entries were replaced" in report["reason"]


def test_a_head_file_left_behind_by_a_crash_is_a_warning_and_is_caught_up(three: Ledger) -> None:
    """A crash between the commit and the head file's update leaves the file one entry behind."""
    two = three.get(2)
    write_anchor(three.anchor_path, HeadAnchor(three.genesis["ledger_id"], 2, two.content_hash, 2))
    report = three.verify()
    assert report["ok"] and [w["id"] for w in report["warnings"] if w["id"] is not None] == [3]
    e = three.append(fields(4))
    assert e.id == 4 and read_anchor(three.anchor_path).last_id == 4 and three.verify()["warnings"] == []


def test_a_ledger_from_before_the_anchor_is_adopted(tmp_path: Path) -> None:
    """A ledger written by the first release (m001 only, no head file) gets both on first open."""
    led = Ledger.create(tmp_path / "ledger.db", GENESIS)
    led.append(fields(1))
    led.append(fields(2))
    head = led.head_hash
    led.close()
    tamper(tmp_path / "ledger.db", "DROP TABLE high_water",
           "DELETE FROM _sqlite_migrations WHERE name = 'm002_head_anchor'")
    (tmp_path / "ledger.head").unlink()
    with Ledger(tmp_path / "ledger.db") as reopened:
        assert "m002_head_anchor" in reopened.schema_version
        assert read_anchor(reopened.anchor_path).head == head
        assert reopened.verify()["ok"] and reopened.append(fields(3)).id == 3


def test_a_signed_head_stops_the_thorough_attacker_without_the_key(tmp_path: Path, monkeypatch, capsys) -> None:
    from auditor.record.anchor import KEY_ENV

    key = tmp_path / "head.key"
    key.write_bytes(bytes(range(32)))
    monkeypatch.setenv(KEY_ENV, str(key))
    with Ledger.create(tmp_path / "ws" / "ledger.db", GENESIS) as led:
        for i in range(3):
            led.append(fields(i))
        anchor = read_anchor(led.anchor_path)
        assert anchor.signature.startswith("hmac-sha256:") and anchor.signature_matches(key.read_bytes())
        assert led.verify()["ok"]
        # the thorough attacker of the test above, who has the database and the head file, not the key
        tamper(led.path, "DELETE FROM entries WHERE id = 3", "UPDATE high_water SET last_id = 2")
        two = led.get(2)
        forged = HeadAnchor(led.genesis["ledger_id"], 2, two.content_hash, 2)
        write_anchor(led.anchor_path, forged)
        assert "is not signed" in led.verify()["reason"]
        write_anchor(led.anchor_path, forged.signed(b"another key of sixteen bytes"))
        assert "does not match the signing key" in led.verify()["reason"]
        code, out = verify_cli(led, capsys)
        assert code == 1 and out.startswith("FAILED: ledger head: the signature of ledger.head does not match")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "absent.key"))
    assert main(["ledger", "verify", "--workspace", str(tmp_path / "ws")]) == 2
    assert "cannot read the head signing key" in capsys.readouterr().err


def test_a_lost_head_file_is_rewritten_only_against_the_right_head(three: Ledger, capsys) -> None:
    head = three.head_hash
    three.anchor_path.unlink()  # e.g. ledger.db copied alone
    assert verify_cli(three, capsys)[0] == 1
    ws = str(three.path.parent)
    assert main(["ledger", "reanchor", "--workspace", ws, "--expect-head", three.get(2).content_hash]) == 2
    assert "is not the ledger's head (entry 3" in capsys.readouterr().err
    assert not three.anchor_path.exists()
    assert main(["ledger", "reanchor", "--workspace", ws, "--expect-head", head]) == 0
    capsys.readouterr()
    assert core(read_anchor(three.anchor_path)) == core(HeadAnchor(three.genesis["ledger_id"], 3, head, 3))
    assert verify_cli(three, capsys)[0] == 0 and three.append(fields(4)).id == 4


def test_reanchor_cannot_hide_deleted_entries(three: Ledger) -> None:
    tamper(three.path, "DELETE FROM entries WHERE id = 3")
    three.anchor_path.unlink()
    with pytest.raises(LedgerError, match="refusing to re-anchor: entry 3: missing: ids up to 3 were given out"):
        three.reanchor(three.head_hash)  # the truncated ledger's own head
    assert not three.anchor_path.exists()
