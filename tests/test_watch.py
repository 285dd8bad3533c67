"""The watchlist: append-only, hash-chained storage in the ledger, the command line, and the check
on the real demo model (no edit here: the edits that break a watched answer are in
test_sequence.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from auditor.cli import main
from auditor.record.ledger import Ledger
from auditor.record.watch import WatchError, Watchlist, check_model

GENESIS = {"base_fingerprint": "sha256:" + "0" * 64, "dtype": "float32"}


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger.create(tmp_path / "ws" / "ledger.db", GENESIS)
    yield led
    led.close()


def test_add_remove_keeps_the_history_and_verifies(ledger: Ledger) -> None:
    wl = Watchlist(ledger)
    paris = wl.add("The capital of France is", "Paris", note="regression fact")
    wl.add("Water is made of hydrogen and", "oxygen")
    wl.remove(paris.id, note="no longer needed")
    assert [i.answer for i in wl.items()] == ["oxygen"]
    assert [e["action"] for e in wl.history()] == ["add", "add", "remove"]
    assert wl.history()[2]["item"] == paris.id
    assert wl.verify()["ok"] and wl.head == wl.history()[-1]["content_hash"]
    with pytest.raises(WatchError, match="already watched"):
        wl.add("Water is made of hydrogen and", "oxygen")
    with pytest.raises(WatchError, match="no watched item"):
        wl.remove(paris.id)
    with pytest.raises(WatchError, match="empty"):
        wl.add("Some prompt", "  ")


def test_the_watchlist_is_append_only_and_tampering_is_found(ledger: Ledger) -> None:
    wl = Watchlist(ledger)
    wl.add("The capital of France is", "Paris")
    wl.add("The capital of Japan is", "Tokyo")
    conn = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE watchlist SET answer = 'Lyon' WHERE id = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM watchlist WHERE id = 2")
    conn.execute("DROP TRIGGER watchlist_append_only_update")  # anyone with sqlite3 can do this
    conn.execute("UPDATE watchlist SET answer = 'Lyon' WHERE id = 1")
    conn.commit()
    conn.close()
    report = wl.verify()
    assert not report["ok"] and report["first_bad"] == 1 and "content_hash" in report["reason"]
    # `ledger verify` checks the watchlist's chain too
    ledger_report = ledger.verify()
    assert not ledger_report["ok"] and ledger_report["reason"].startswith("watchlist: watchlist event 1")


def test_ledger_verify_finds_a_deleted_watchlist_head_an_entry_pinned(ledger: Ledger,
                                                                       capsys: pytest.CaptureFixture) -> None:
    wl = Watchlist(ledger)
    wl.add("The capital of France is", "Paris")
    wl.add("The capital of Japan is", "Tokyo")
    ledger.append({"status": "applied", "metrics": {"watch": {"head": wl.head, "pass_rate": 1.0}}})
    ws = str(ledger.path.parent)
    assert ledger.verify()["ok"] and main(["ledger", "verify", "--workspace", ws]) == 0
    assert "watchlist intact" in capsys.readouterr().out
    conn = sqlite3.connect(ledger.path)
    conn.execute("DROP TRIGGER watchlist_append_only_delete")
    conn.execute("DELETE FROM watchlist WHERE id = 2")  # the chain of what is left still holds
    conn.commit()
    conn.close()
    assert wl.verify()["ok"]
    report = ledger.verify()
    assert not report["ok"] and report["first_bad"] == 1 and "no longer holds" in report["reason"]
    assert main(["ledger", "verify", "--workspace", ws]) == 1
    assert "entry 1" in capsys.readouterr().out


def test_cli_add_list_remove(ledger: Ledger, capsys: pytest.CaptureFixture) -> None:
    ws = str(ledger.path.parent)
    assert main(["watch", "add", "--workspace", ws, "--prompt", "The capital of France is", "--answer", "Paris"]) == 0
    assert main(["watch", "add", "--workspace", ws, "--prompt", "The capital of France is", "--answer", "Paris"]) == 2
    assert "already watched" in capsys.readouterr().err
    assert main(["watch", "list", "--workspace", ws]) == 0
    assert "Paris" in capsys.readouterr().out
    assert main(["watch", "remove", "--workspace", ws, "9"]) == 2
    assert capsys.readouterr().err.startswith("edit-auditor: error: no watched item 9")
    assert main(["watch", "remove", "--workspace", ws, "1", "--note", "done"]) == 0
    capsys.readouterr()
    assert main(["watch", "list", "--workspace", ws, "--history"]) == 0
    out = capsys.readouterr().out
    assert "remove" in out and "add" in out
    assert main(["watch", "list", "--workspace", str(ledger.path.parent / "nowhere")]) == 2


def test_check_on_the_demo_model(demo: Any, ledger: Ledger) -> None:
    """Known answers of the demo model hold; a wrong one does not."""
    wl = Watchlist(ledger)
    wl.add("The Eiffel Tower is located in the country of", "France")
    wrong = wl.add("Toyota is a company from the country of", "Brazil")
    report = check_model(demo, wl.items(), [], wl.head)
    assert report["items"] == 2 and report["passed"] == 1 and report["pass_rate"] == 0.5
    assert [f["item"] for f in report["failed"]] == [wrong.id]
    assert report["retention"] is None and report["head"] == wl.head
