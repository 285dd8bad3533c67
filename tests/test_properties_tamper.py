"""Issue 17, item 8 (tampering): random tampering of a real ledger is always found by ``verify``.

One real workspace is built per module on the demo model: two real rank-one edits applied to the
live weights (test_workspace.synthetic_result, as the engine records them), a revert, a watchlist
with two items and a removal, a setting, every head file along the way kept, and the head signed
with a key (``EDIT_AUDITOR_HEAD_KEY``: without one, a head file's counter and time can be rewritten
by anyone, see README). Each example copies that folder, changes one thing, and runs
``Ledger.verify`` read-only on the copy:

* a row edit (any column, any value) or a row deletion in every table: entries, watchlist,
  high_water, settings, genesis, and the full-text index's tables (and the FTS table itself);
* a byte flip anywhere in ledger.db, ledger.head and every delta file;
* ledger.head swapped for any older one.

``verify`` must never say ok. An example whose change leaves the record as it was is discarded
(``assume``), by an oracle independent of ``verify``: every row of every table the same and SQLite's
integrity check clean (a flipped byte in a page's unused space); the head file parsing to the same
head (a JSON space turned into a tab); an UPDATE that SQLite's type affinity turns into the same
value. The append-only triggers are left out of that oracle: every tamper drops them, and verify
does not rely on them.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_workspace import synthetic_result

from auditor.base import AuditorError
from auditor.record.anchor import KEY_ENV, parse_anchor
from auditor.record.ledger import Ledger
from auditor.record.watchlist import Watchlist
from auditor.run.workspace import Workspace

TABLES = ["entries", "watchlist", "high_water", "settings", "genesis", "entries_fts_data", "entries_fts_idx",
          "entries_fts_docsize", "entries_fts_config", "_sqlite_migrations"]
def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VALUES = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=12),
                   st.binary(max_size=12), st.sampled_from(["sha256:" + "0" * 64, "applied", "revert", "{}", "[]"]))


@pytest.fixture(scope="module")
def built(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tamper")
    key = root / "head.key"
    key.write_bytes(os.urandom(32))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, str(key))
        folder = root / "ws"
        ws = Workspace.init(demo_dir, folder, device="cpu")
        heads = [(folder / "ledger.head").read_bytes()]
        try:
            first = ws.record(synthetic_result(ws, 4, 1))
            heads.append((folder / "ledger.head").read_bytes())
            wl = Watchlist(ws.ledger)
            for step in (lambda: wl.add("The capital of France is", "Paris"),
                         lambda: wl.add("The Eiffel Tower is in", "Paris"), lambda: wl.remove(1)):
                step()
                heads.append((folder / "ledger.head").read_bytes())
            ws.record(synthetic_result(ws, 5, 2))
            heads.append((folder / "ledger.head").read_bytes())
            ws.revert(first.id, note="property test")
        finally:
            ws.close()
        (folder / "workspace.lock").unlink(missing_ok=True)
        assert not (folder / "ledger.db-wal").exists()
        with Ledger(folder / "ledger.db", readonly=True) as led:
            report = led.verify()
            assert report["ok"] and report["warnings"] == [], report
        yield {"folder": folder, "heads": heads, "key": key, "scratch": root / "scratch", "dump": dump(folder),
               "head": (folder / "ledger.head").read_bytes()}


@pytest.fixture(autouse=True)
def signing_key(built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, str(built["key"]))


def copy(built: dict[str, Any]) -> Path:
    built["scratch"].mkdir(exist_ok=True)
    target = Path(tempfile.mkdtemp(dir=built["scratch"])) / "ws"
    shutil.copytree(built["folder"], target)
    return target


def detected(folder: Path) -> bool:
    """verify's verdict on ``folder``: True unless it says ok. A ledger it cannot even open is found too."""
    try:
        with Ledger(folder / "ledger.db", readonly=True) as led:
            return not led.verify()["ok"]
    except AuditorError:
        return True


def dump(folder: Path) -> Any:
    """Every row of every table, typed, and the schema; or the error SQLite gives reading them."""
    conn = sqlite3.connect(f"file:{folder / 'ledger.db'}?mode=ro&immutable=1", uri=True)
    try:
        if [r[0] for r in conn.execute("PRAGMA integrity_check")] != ["ok"]:
            return "damaged"
        # the append-only triggers are a first line of defence, not part of the record (every tamper drops them)
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE "
                              "'%append_only%' ORDER BY name").fetchall()
        out = [schema]
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE "
                                    "'CREATE VIRTUAL%' ORDER BY name").fetchall():
            rows = conn.execute(f"SELECT * FROM [{name}]").fetchall()
            types = conn.execute(f"SELECT * FROM [{name}]").description
            out.append((name, len(types), sorted(map(repr, rows))))
        return out
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # text that is no longer UTF-8 is a change too
        return f"unreadable: {e}"
    finally:
        conn.close()


def raw(folder: Path, sql: str, params: tuple = ()) -> bool:
    """Drop the guarding triggers and run ``sql`` with plain sqlite3; False when SQLite refuses it."""
    conn = sqlite3.connect(folder / "ledger.db")
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE "
                                    "'%append_only%'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, params)
        conn.commit()
        return True
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def rows_of(folder: Path, table: str) -> tuple[list[str], list[tuple]]:
    conn = sqlite3.connect(f"file:{folder / 'ledger.db'}?mode=ro&immutable=1", uri=True)
    try:
        cur = conn.execute(f"SELECT * FROM [{table}]")
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        conn.close()


def where(columns: list[str], row: tuple) -> tuple[str, tuple]:
    return " AND ".join(f"[{c}] IS ?" for c in columns), tuple(row)


# ---------------------------------------------------------------- rows


@fast(500)
@given(table=st.sampled_from(TABLES), pick=st.integers(0, 10**6), column=st.integers(0, 20), value=VALUES)
def test_any_row_edit_is_found(built: dict[str, Any], table: str, pick: int, column: int, value: Any) -> None:
    folder = copy(built)
    columns, rows = rows_of(folder, table)
    assume(rows)
    row = rows[pick % len(rows)]
    name = columns[column % len(columns)]
    clause, params = where(columns, row)
    assume(raw(folder, f"UPDATE [{table}] SET [{name}] = ? WHERE {clause}", (value, *params)))
    assume(dump(folder) != built["dump"])
    assert detected(folder), (table, name, value)


@fast(200)
@given(table=st.sampled_from(TABLES + ["entries_fts"]), pick=st.integers(0, 10**6))
def test_any_row_deletion_is_found(built: dict[str, Any], table: str, pick: int) -> None:
    folder = copy(built)
    if table == "entries_fts":  # the index itself: a row deleted from it, the entry kept
        columns, rows = rows_of(folder, "entries")
        eid = rows[pick % len(rows)][0]
        cols = "subject, prompt, target_new, target_true"
        assume(raw(folder, f"INSERT INTO entries_fts(entries_fts, rowid, {cols}) SELECT 'delete', id, {cols} "
                           "FROM entries WHERE id = ?", (eid,)))
    else:
        columns, rows = rows_of(folder, table)
        assume(rows)
        clause, params = where(columns, rows[pick % len(rows)])
        assume(raw(folder, f"DELETE FROM [{table}] WHERE {clause}", params))
    assume(dump(folder) != built["dump"])
    assert detected(folder), table


@pytest.mark.parametrize("sql", [
    "INSERT INTO entries_fts(entries_fts) VALUES ('delete-all')",
    "INSERT INTO entries_fts(entries_fts) VALUES ('rebuild')",
    "INSERT INTO entries_fts(entries_fts) VALUES ('optimize')",
    "INSERT INTO entries_fts(rowid, subject, prompt, target_new, target_true) VALUES (99, 'x', 'y', 'z', 'w')",
    "DROP TABLE entries_fts",
    *[f"DROP TRIGGER entries_{t}" for t in ("ai", "ad", "au")],
    *[f"DELETE FROM [{t}]" for t in TABLES],
])
def test_wholesale_changes_are_found(built: dict[str, Any], sql: str) -> None:
    folder = copy(built)
    assert raw(folder, sql)
    assert dump(folder) != built["dump"]
    assert detected(folder), sql


# ---------------------------------------------------------------- bytes and head files


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@fast(900)
@given(which=st.integers(0, 10**6), where_=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_any_byte_flip_in_any_file_is_found(built: dict[str, Any], which: int, where_: float, mask: int) -> None:
    folder = copy(built)
    names = files(folder)
    name = names[which % len(names)]
    path = folder / name
    data = bytearray(path.read_bytes())
    at = int(where_ * len(data))
    data[at] ^= mask
    path.write_bytes(bytes(data))
    if name == "ledger.db":
        assume(dump(folder) != built["dump"])  # a flip in unused space changes no record
    elif name == "ledger.head":
        try:
            same = parse_anchor(json.loads(bytes(data))) == parse_anchor(json.loads(built["head"]))
        except (ValueError, UnicodeDecodeError):
            same = False
        assume(not same)  # e.g. a space turned into a tab: the same head
    assert detected(folder), (name, at, mask)


def test_every_older_head_file_put_back_is_found(built: dict[str, Any]) -> None:
    current = (built["folder"] / "ledger.head").read_bytes()
    older = [h for h in built["heads"] if h != current]
    assert len(older) >= 6
    for head in older:
        folder = copy(built)
        (folder / "ledger.head").write_bytes(head)
        assert detected(folder)


def test_two_tampers_at_once_are_found(built: dict[str, Any]) -> None:
    """The thorough attacker: drop the newest entry and put back the head file that named its predecessor."""
    for head, table in itertools.product(built["heads"][-2:], ["entries", "watchlist"]):
        folder = copy(built)
        assert raw(folder, f"DELETE FROM {table} WHERE id = (SELECT max(id) FROM {table})")
        raw(folder, "UPDATE high_water SET last_id = (SELECT max(id) FROM entries)")
        (folder / "ledger.head").write_bytes(head)
        assert detected(folder), (table,)
