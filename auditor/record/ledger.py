"""The ledger: every edit attempt on the record, append-only and tamper-evident.

One SQLite file (``ledger.db``, WAL mode, opened through sqlite-utils) and a
folder of deltas (``deltas/<sha256>.safetensors``) next to it.

* Entries are only ever inserted (triggers refuse ``UPDATE``/``DELETE``); a revert
  is a new entry whose ``reverts`` column names the entry it undoes.
* Each entry carries ``content_hash`` = ``"sha256:"`` over the canonical JSON
  (sorted keys, no spaces) of all its other columns, which include
  ``prev_hash`` (the previous entry's ``content_hash``, or the genesis hash for
  entry 1) and ``delta_hash`` (the delta's :meth:`Delta.content_hash`). Triggers
  can be dropped by anyone with ``sqlite3``; :meth:`Ledger.verify` cannot be
  fooled that way: it re-derives every hash and names the first entry that
  disagrees.
* The genesis record (base fingerprint, dtype, creation time, a random id) is
  hashed too, so changing the base a ledger was built on breaks entry 1.
* Appends are serialised across processes with ``BEGIN IMMEDIATE``; each thread
  gets its own connection (a file SQLite connection cannot be shared).
* The delta file is written (and fsynced) before its entry is committed: a crash
  between the two leaves an unreferenced file, never an entry without its delta.
* The head is anchored outside the database (``ledger.head``, see anchor.py) and ids are never
  reused (a high-water mark, migration ``m002_head_anchor``), so deleting the newest entries is
  found by :meth:`Ledger.verify`; ``verify(expect_head=...)`` checks a head recorded elsewhere.
  The head file also pins the watchlist's head and a digest of everything else the database holds
  (settings, high-water mark, full-text index: :meth:`Ledger.state_digest`), so ``verify`` covers
  the whole file, not only the chain.
* Nothing is appended to a ledger that does not verify (:meth:`Ledger.check_appendable`, run by
  every writer before it writes): a damaged record is never extended, or laundered by a new head.
* ``Ledger(path, readonly=True)`` opens the file with SQLite's ``mode=ro`` (``immutable=1`` when
  even that cannot open it, e.g. on a read-only folder without the WAL's shared-memory file): no
  write, lock file or WAL is ever made, so a read-only workspace can be listed and verified.

Example::

    ledger = Ledger.create(ws / "ledger.db", {"base_fingerprint": fp, "dtype": "float32"})
    entry = ledger.append({"kind": "edit", "status": "applied", ...}, delta=delta)
    assert ledger.verify()["ok"]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import math
import os
import socket
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

from auditor.base import AuditorError
from auditor.engine.deltas import AnyDelta, load_delta
from auditor.files import ReadError, check_regular
from auditor.record.anchor import (
    AnchorError,
    HeadAnchor,
    anchor_path,
    fsync_dir,
    head_problems,
    kept_head_problems,
    normalise_hash,
    parse_kept,
    read_anchor,
    signing_key,
    state_problems,
    write_anchor,
)
from auditor.record.hashing import canonical_json, sha256_file, sha256_text
from auditor.record.hashing import operator as _operator
from auditor.record.hashing import utc_now as _utc_now
from auditor.record.watchlist import Watchlist

MIGRATION_SET = "edit_auditor_ledger"
migrations = Migrations(MIGRATION_SET)

MAX_DELTA_BYTES = 16 * 2**30  # a delta file larger than this is refused before it is read
FULL_CHECK_ENTRIES = 2000  # appends run a full verify (no delta files) up to this many entries
# What the head file's ``state`` digest covers: every table that is evidence but not hash-chained
STATE_TABLES = ("settings", "high_water", "entries_fts_data", "entries_fts_idx", "entries_fts_docsize",
                "entries_fts_config", "_sqlite_migrations")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class LedgerError(AuditorError, RuntimeError):
    """The ledger cannot be opened or written; ``str(e)`` is a one-line explanation."""


# ---------------------------------------------------------------- columns

# name -> stored type ("int", "real", "text", "json"). The order is the table's.
# A column added by a later migration is appended here *and* in that migration.
COLUMNS: dict[str, str] = {
    "id": "int",
    "created_at": "text",  # UTC, ISO 8601 with microseconds and "Z"
    "operator": "text",  # OS user who ran the edit
    "host": "text",
    "app_version": "text",  # edit-auditor version that wrote the entry
    "kind": "text",  # "edit" | "revert"
    "status": "text",  # edit: applied | dry-run | rejected | failed; revert: applied
    "error": "text",  # why an edit failed (None otherwise)
    "note": "text",  # free text from the operator (e.g. why a revert was made)
    "method": "text",  # "rome"
    "key_mode": "text",  # "consistent" | "original"
    "layer": "int",
    "param": "text",  # the parameter the delta changes
    "hparams": "json",  # every hyper-parameter actually used
    "request": "json",  # the full EditRequest (flat form)
    # the request's searchable parts, copied out so FTS and listings need no JSON
    "subject": "text",
    "prompt": "text",  # the edit prompt with the subject filled in
    "target_new": "text",
    "target_true": "text",
    # diagnostics of the update, as columns so they can be queried and charted
    "denominator": "real",
    "denominator_raw": "real",
    "numerator_norm": "real",
    "update_norm": "real",
    "weight_norm": "real",
    "key_cosine": "real",
    # the measurements
    "efficacy": "real",
    "target_prob": "real",
    "generalization": "real",
    "locality": "real",
    "portability": "real",
    "prefixed_efficacy": "real",
    "ppl_before": "real",
    "ppl_after": "real",
    "ppl_ratio": "real",
    "collapse_risk": "int",  # 0/1: the guard's verdict
    "collapse_reasons": "json",
    "diagnostics": "json",  # everything the engine reported (loss curve included)
    "metrics": "json",
    "timings": "json",  # seconds per phase
    "device": "text",
    "dtype": "text",
    "fingerprint_before": "text",  # model fingerprint before the edit / revert
    "fingerprint_after": "text",  # ... and after (== before unless applied)
    "delta_hash": "text",  # Delta.content_hash(); also names the file in deltas/
    "delta_file_sha256": "text",  # sha256 of the delta file's bytes (catches header edits)
    "reverts": "int",  # the entry this revert undoes
    "prev_hash": "text",  # content_hash of the previous entry (genesis hash for entry 1)
    "content_hash": "text",  # sha256 of the canonical JSON of every other column
}
# Columns added by later migrations (name -> type); appended to COLUMNS below. Such a column enters
# an entry's content hash only when it holds a value, so the entries written before it existed
# (where it reads NULL) keep the hashes they were written with.
LATER_COLUMNS: dict[str, str] = {
    # m003 (issue 8): a batch (MEMIT, AlphaEdit) is one entry listing its requests
    "requests": "json",  # the batch's requests (flat form), in order; NULL for a single edit
    "n_requests": "int",  # how many requests the entry holds; NULL for a single edit
    "params": "json",  # every parameter the delta changes (a batch spans several layers)
}
COLUMNS.update(LATER_COLUMNS)
REAL_COLUMNS = [c for c, t in COLUMNS.items() if t == "real"]
JSON_COLUMNS = [c for c, t in COLUMNS.items() if t == "json"]
FTS_COLUMNS = ["subject", "prompt", "target_new", "target_true"]
_SQL_TYPES = {"int": "INTEGER", "real": "REAL", "text": "TEXT", "json": "TEXT"}


def _normalise(name: str, value: Any) -> Any:
    """The value exactly as SQLite will give it back, so a hash taken now verifies later."""
    kind = COLUMNS[name]
    if value is None and name in LATER_COLUMNS:
        return None
    if kind == "json":
        # stored as its canonical text; a string that already is JSON text is kept
        return value if isinstance(value, str) else canonical_json(value)
    if value is None:
        return None
    if kind == "int":
        return int(value)
    if kind == "real":
        value = float(value)
        return value if math.isfinite(value) else None  # SQLite stores NaN as NULL
    return str(value)


def _watch_head(row: dict[str, Any]) -> str | None:
    """The watchlist head a raw entry row was checked against (``metrics.watch.head``), if any."""
    try:
        metrics = json.loads(row.get("metrics") or "{}")
    except (TypeError, ValueError):
        return None  # a damaged column: its content hash reports it
    watch = metrics.get("watch") if isinstance(metrics, dict) else None
    head = watch.get("head") if isinstance(watch, dict) else None
    return head if isinstance(head, str) else None


def content_hash(row: dict[str, Any]) -> str:
    """The hash an entry's ``content_hash`` column must hold."""
    body = {k: row.get(k) for k in COLUMNS
            if k != "content_hash" and not (k in LATER_COLUMNS and row.get(k) is None)}
    return sha256_text(canonical_json(body))


# ---------------------------------------------------------------- migrations


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    cols = ",\n  ".join(
        f"{name} {_SQL_TYPES[kind]}" + (" PRIMARY KEY" if name == "id" else "")
        for name, kind in COLUMNS.items()
    )
    db.execute(f"CREATE TABLE entries (\n  {cols},\n  FOREIGN KEY (reverts) REFERENCES entries(id)\n)")
    db.execute("CREATE INDEX entries_reverts ON entries(reverts)")
    db.execute("CREATE INDEX entries_delta_hash ON entries(delta_hash)")
    # What the ledger was started on; hashed into entry 1's prev_hash.
    db.execute("CREATE TABLE genesis (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)")
    # Mutable facts that are not evidence (where the base checkpoint lives now).
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)")
    # Full-text search over subjects, prompts and targets (kept in step by sqlite-utils' triggers).
    db["entries"].enable_fts(FTS_COLUMNS, fts_version="FTS5", create_triggers=True, tokenize="unicode61")
    # A first line of defence; verify() is the real one (triggers can be dropped).
    for table in ("entries", "genesis"):
        for op in ("UPDATE", "DELETE"):
            db.execute(
                f"CREATE TRIGGER {table}_append_only_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: {op} on {table} refused'); END"
            )


@migrations()
def m002_head_anchor(db: sqlite_utils.Database) -> None:
    # The highest entry id ever given out. SQLite reuses max(id) + 1 after a DELETE (and
    # AUTOINCREMENT cannot be added to an existing table): with this mark an id is never reused,
    # so a deleted newest entry leaves a gap that verify() names. The head itself is also kept
    # outside the database (ledger.head, see anchor.py), written after every append.
    db.execute("CREATE TABLE high_water (id INTEGER PRIMARY KEY CHECK (id = 1), last_id INTEGER NOT NULL)")
    db.execute("INSERT INTO high_water (id, last_id) VALUES (1, (SELECT coalesce(max(id), 0) FROM entries))")
    db.execute("CREATE TRIGGER high_water_append_only_delete BEFORE DELETE ON high_water "
               "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: DELETE on high_water refused'); END")
    db.execute("CREATE TRIGGER high_water_append_only_update BEFORE UPDATE ON high_water "
               "WHEN NEW.last_id < OLD.last_id "
               "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only: the high-water mark only goes up'); END")


@migrations()
def m004_watchlist(db: sqlite_utils.Database) -> None:
    """The watchlist's history (record/watchlist.py): add/remove events, append-only and hash-chained on their
    own; every edit entry's ``metrics.watch.head`` pins the watchlist state it was checked against."""
    db.execute(
        "CREATE TABLE watchlist (\n  id INTEGER PRIMARY KEY,\n  created_at TEXT,\n  operator TEXT,\n"
        "  action TEXT,\n  item INTEGER,\n  prompt TEXT,\n  answer TEXT,\n  note TEXT,\n"
        "  prev_hash TEXT,\n  content_hash TEXT,\n  FOREIGN KEY (item) REFERENCES watchlist(id)\n)"
    )
    for op in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER watchlist_append_only_{op.lower()} BEFORE {op} ON watchlist "
            f"BEGIN SELECT RAISE(ABORT, 'the watchlist is append-only: {op} on watchlist refused'); END"
        )


@migrations()
def m003_batches(db: sqlite_utils.Database) -> None:
    """Issue 8: batch entries (requests, n_requests, params). Plain ALTER TABLE keeps the triggers.

    A ledger created by this version already has them (m001 builds the table from COLUMNS).
    """
    have = {row[1] for row in db.execute("PRAGMA table_info(entries)").fetchall()}
    for name in ("requests", "n_requests", "params"):
        if name not in have:
            db.execute(f"ALTER TABLE entries ADD COLUMN {name} {_SQL_TYPES[LATER_COLUMNS[name]]}")


# ---------------------------------------------------------------- entries


@dataclass
class Entry:
    """One ledger row; JSON columns decoded. ``row`` keeps the stored form."""

    id: int
    kind: str
    status: str
    created_at: str
    subject: str | None
    prompt: str | None
    target_new: str | None
    param: str | None
    delta_hash: str | None
    reverts: int | None
    fingerprint_before: str | None
    fingerprint_after: str | None
    content_hash: str
    prev_hash: str
    row: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Entry":
        names = cls.__dataclass_fields__.keys() - {"row"}
        return cls(**{k: row.get(k) for k in names}, row=dict(row))

    def __getattr__(self, name: str) -> Any:
        """Columns without their own field (``entry.efficacy``), JSON ones decoded."""
        row = self.__dict__.get("row")
        if row is not None and name in COLUMNS:
            return self[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Any:
        """Any column, JSON ones decoded: ``entry["metrics"]["efficacy"]``."""
        value = self.row[name]
        if name in JSON_COLUMNS and value is not None:
            return json.loads(value)
        return value

    def to_json(self) -> dict[str, Any]:
        return {k: self[k] for k in COLUMNS if k in self.row}

    @property
    def summary(self) -> dict[str, Any]:
        """The short form ``ledger list`` shows."""
        keys = ("id", "created_at", "kind", "status", "subject", "target_new", "layer",
                "efficacy", "ppl_ratio", "collapse_risk", "reverts")
        return {k: self.row.get(k) for k in keys}


# ---------------------------------------------------------------- the ledger


@functools.lru_cache(maxsize=1)
def app_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edit-auditor")
    except PackageNotFoundError:
        return "unknown"


_SCOPES = threading.local()


@contextlib.contextmanager
def closing_opened() -> Iterator[None]:
    """Close, at the end of the block, every :class:`Ledger` opened inside it that is still open.

    The command line runs each command in one (``cli.parser``): a command that forgets to close
    what it opened still releases the database and its WAL files when it returns, so a folder it
    only read can be unmounted, moved or deleted right after (the same process goes on in tests,
    the window and scripts). Scopes nest; only the thread that opened a ledger closes it here.
    """
    opened: list[Ledger] = []  # strong references: a dropped Ledger keeps its connection until gc
    stack = getattr(_SCOPES, "stack", None)
    if stack is None:
        stack = _SCOPES.stack = []
    stack.append(opened)
    try:
        yield
    finally:
        stack.pop()
        for ledger in opened:
            ledger.close()


class Ledger:
    """An append-only, hash-chained SQLite ledger plus its folder of deltas."""

    def __init__(self, path: str | Path, *, deltas_dir: str | Path | None = None, readonly: bool = False) -> None:
        self.path = Path(path)
        self.deltas_dir = Path(deltas_dir) if deltas_dir else self.path.parent / "deltas"
        self.readonly = readonly
        if not self.path.is_file():
            raise LedgerError(f"{self.path}: no ledger here (create one with `edit-auditor workspace init`)")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        for scope in getattr(_SCOPES, "stack", ())[-1:]:
            scope.append(self)
        try:
            self._check_and_migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise LedgerError(f"{self.path}: not a readable SQLite ledger ({e})") from None
        except AuditorError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file (undecodable text, wrong types) is one line
            self.close()
            raise LedgerError(f"{self.path}: a damaged ledger ({type(e).__name__}: {e})") from None

    def _check_and_migrate(self) -> None:
        db = self.db
        applied = {m.name for m in migrations.applied(db)}
        if not applied:  # never migrate a file that is not ours
            raise LedgerError(f"{self.path}: not an Edit Auditor ledger (no migrations recorded)")
        unknown = applied - {m.name for m in migrations._migrations}
        if unknown:
            raise LedgerError(
                f"{self.path}: written by a newer Edit Auditor (unknown migrations: {', '.join(sorted(unknown))}); upgrade"
            )
        pending = {m.name for m in migrations.pending(db)}
        if pending and self.readonly:
            raise LedgerError(f"{self.path}: written by an older Edit Auditor and not yet upgraded; open it once "
                              "where it can be written (any command that appends) before reading it read-only")
        if pending:
            self._migrate()
            try:
                old = read_anchor(self.anchor_path)
            except AnchorError:
                old = None
            # A version-1 head is brought up to the migrated schema (which the state digest covers). A
            # version-2 head was written with every migration this version knows applied: pending ones
            # under it mean the migrations table was changed, and re-anchoring would launder that.
            if old is not None and old.version < 2:
                self._advance_anchor()
        if not db["genesis"].exists() or db.execute("SELECT count(*) FROM genesis").fetchone()[0] != 1:
            raise LedgerError(f"{self.path}: the ledger has no genesis record; it is not an Edit Auditor ledger")
        if "m002_head_anchor" in pending and not self.anchor_path.exists():
            self._advance_anchor()  # a ledger from before the anchor: its head as it stands now

    @classmethod
    def create(cls, path: str | Path, genesis: dict[str, Any], *, deltas_dir: str | Path | None = None) -> "Ledger":
        """A new, empty ledger whose genesis record is ``genesis`` (plus a creation time and id)."""
        path = Path(path)
        if path.exists():
            raise LedgerError(f"{path}: a ledger already exists here")
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None)
        try:
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            migrations.apply(db)
            body = {"created_at": _utc_now(), "ledger_id": str(uuid.uuid4()), **genesis}
            db.execute("INSERT INTO genesis (id, body) VALUES (1, ?)", [canonical_json(body)])
        finally:
            conn.close()
        ledger = cls(path, deltas_dir=deltas_dir)
        ledger._advance_anchor()
        return ledger

    # -------------------------------------------------------- connections

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (created on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            conn = self._readonly_connection() if self.readonly else sqlite3.connect(
                str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            db = sqlite_utils.Database(conn)  # WAL is set once, by create(), and persists in the file
            self._local.db = db
            with self._lock:
                self._connections.append(conn)
        return db

    def _readonly_connection(self) -> sqlite3.Connection:
        """A connection that writes nothing, not even SQLite's ``-wal``/``-shm`` files.

        Without a ``-wal`` file no writer has the ledger open (the last one to close removes it), so
        the main file is complete and is read with ``immutable=1`` (a writer starting meanwhile
        writes to its new WAL, not to the main file, until a checkpoint). With one, ``mode=ro``
        reads the WAL too (it needs the ``-shm`` file, which a writer made).
        """
        uri = self.path.absolute().as_uri()
        wal = self.path.with_name(self.path.name + "-wal")
        queries = ("?mode=ro", "?mode=ro&immutable=1") if wal.exists() else ("?mode=ro&immutable=1",)
        for query in queries:
            conn = sqlite3.connect(uri + query, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
                if query.endswith("immutable=1"):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every thread's connection, folding the WAL into ledger.db first (a copy of
        the folder without ``ledger.db-wal`` is then complete)."""
        with self._lock:
            for conn in self._connections:
                try:
                    if not conn.in_transaction and not self.readonly:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _migrate(self) -> None:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then find nothing pending
        try:
            migrations.apply(self.db)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @property
    def schema_version(self) -> list[str]:
        """The migrations applied to this file, in order."""
        return [m.name for m in migrations.applied(self.db)]

    def schema(self) -> str:
        """The SQL of every table, index and trigger (documentation generated from the migrations)."""
        rows = self.db.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'entries_fts_%' ORDER BY type DESC, name"
        ).fetchall()
        return ";\n\n".join(r[0] for r in rows) + ";\n"

    # -------------------------------------------------------- genesis and settings

    @property
    def genesis(self) -> dict[str, Any]:
        try:
            body = json.loads(self._genesis_body())
        except (TypeError, ValueError):
            body = None
        if not isinstance(body, dict):
            raise LedgerError(f"{self.path}: the genesis record is damaged (not a JSON object)")
        return body

    def _genesis_body(self) -> str:
        row = self.db.execute("SELECT body FROM genesis WHERE id = 1").fetchone()
        if row is None:
            raise LedgerError(f"{self.path}: the genesis record is missing")
        if not isinstance(row[0], str):
            raise LedgerError(f"{self.path}: the genesis record is damaged (not text)")
        return row[0]

    @property
    def genesis_hash(self) -> str:
        return sha256_text(self._genesis_body())

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return default if row is None else row[0]

    def set_setting(self, key: str, value: str) -> None:
        """Change a setting; refused on a ledger that does not verify, and anchored like an append."""
        if self.get_setting(key) == value:
            return
        with self.writing() as conn:
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", [key, value])

    # -------------------------------------------------------- deltas

    def delta_path(self, delta_hash: str) -> Path:
        if not isinstance(delta_hash, str) or not _HASH_RE.match(delta_hash):
            raise LedgerError(f"{str(delta_hash)[:80]!r} is not a delta hash (sha256:<64 hex digits>)")
        return self.deltas_dir / (delta_hash.split(":", 1)[-1] + ".safetensors")

    def store_delta(self, delta: AnyDelta) -> tuple[str, str]:
        """Write ``delta`` under its hash (if not there yet), fsynced; return (content hash, file sha256)."""
        h = delta.content_hash()
        path = self.delta_path(h)
        if not path.is_file() or _delta_hash_of(path) != h:
            self.deltas_dir.mkdir(parents=True, exist_ok=True)
            # Delta.save writes "<name>.tmp" then renames; a per-process name keeps two writers apart
            tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}-{threading.get_ident()}.safetensors")
            try:
                delta.save(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                tmp.replace(path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(self.deltas_dir)
        return h, sha256_file(path)

    def load_delta(self, delta_hash: str) -> AnyDelta:
        """The stored delta, checked against its hash."""
        path = self.delta_path(delta_hash)
        if not path.is_file():
            raise LedgerError(f"delta {delta_hash} is missing from {self.deltas_dir}")
        try:
            check_regular(path, limit=MAX_DELTA_BYTES, what="delta file")
        except ReadError as e:
            raise LedgerError(str(e)) from None
        try:
            delta = load_delta(path)
        except Exception as e:  # noqa: BLE001 - a corrupt file raises many kinds
            raise LedgerError(f"{path}: unreadable delta file ({type(e).__name__}: {e})") from None
        if delta.content_hash() != delta_hash:
            raise LedgerError(f"{path}: the delta does not match its hash {delta_hash}")
        return delta

    # -------------------------------------------------------- writing

    def append(self, fields: dict[str, Any], *, delta: AnyDelta | None = None) -> Entry:
        """Append one entry; returns it as stored. ``delta`` is written first, then the entry."""
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise LedgerError(f"unknown ledger column(s): {', '.join(sorted(unknown))}")
        row = {k: None for k in COLUMNS}
        row.update({"created_at": _utc_now(), "operator": _operator(), "host": socket.gethostname(),
                    "app_version": app_version(), "kind": "edit"})
        row.update(fields)
        for k in JSON_COLUMNS:
            if row[k] is None and k not in LATER_COLUMNS:
                row[k] = {} if k in ("hparams", "diagnostics", "metrics", "timings", "request") else []
        try:
            return self._append(row, delta)
        except BaseException:
            self._remove_unreferenced(delta)
            raise

    def _remove_unreferenced(self, delta: AnyDelta | None) -> None:
        """After a failed append (a full disk, an I/O error): the delta file it wrote, if no entry refers to it."""
        if delta is None:
            return
        h = delta.content_hash()
        try:
            referenced = self.db.conn.execute("SELECT 1 FROM entries WHERE delta_hash = ? LIMIT 1", [h]).fetchone()
        except sqlite3.Error:
            return  # cannot tell: keep the file (verify lists it)
        if referenced is None:
            self.delta_path(h).unlink(missing_ok=True)

    def _append(self, row: dict[str, Any], delta: AnyDelta | None) -> Entry:
        with self.writing() as conn:  # checked first: a refused append leaves no delta behind
            if delta is not None:
                row["delta_hash"], row["delta_file_sha256"] = self.store_delta(delta)
            row = {k: _normalise(k, v) for k, v in row.items()}
            head = conn.execute("SELECT id, content_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            anchor = self._refuse_a_damaged_head(head[0] if head else 0)
            # never reuse an id, even one whose entry was deleted
            row["id"] = max(head[0] if head else 0, self._high_water(), anchor.high_water) + 1
            row["prev_hash"] = self.genesis_hash if head is None else head[1]
            row["content_hash"] = content_hash(row)
            names = list(COLUMNS)
            conn.execute(
                f"INSERT INTO entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [row[n] for n in names],
            )
            conn.execute("UPDATE high_water SET last_id = ? WHERE id = 1", [row["id"]])
        return Entry.from_row(row)

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The one way anything is written into the ledger (entries, watchlist events, settings).

        Takes the write lock (``BEGIN IMMEDIATE``, serialising writers across threads and processes),
        refuses a ledger that does not verify (:meth:`check_appendable`), runs the body, then writes
        ``ledger.head`` for the new state *before* the commit, so that no committed change is ever
        left outside the head file. That head file also holds the previous head (``prev``): if
        the commit fails it is put back; a kill between the two leaves a head that ``verify`` accepts
        for either state (with a warning); right after the commit it is rewritten without ``prev``.
        """
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_locked()
            yield conn
            head = conn.execute("SELECT id, content_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            old = read_anchor(self.anchor_path)  # checked above: readable
            new = self._write_anchor(head[0] if head else 0, head[1] if head else self.genesis_hash, old,
                                     prev=old)
            try:
                conn.execute("COMMIT")
            except BaseException:
                if old is not None:
                    write_anchor(self.anchor_path, old)
                raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        final = replace(new, prev=None, signature=None)
        key = signing_key()
        write_anchor(self.anchor_path, final.signed(key) if key else final)

    # -------------------------------------------------------- the head anchor

    @property
    def anchor_path(self) -> Path:
        """``ledger.head`` beside ``ledger.db`` (see anchor.py)."""
        return anchor_path(self.path)

    def anchor(self) -> HeadAnchor | None:
        """The head recorded outside the database (None when the file is missing)."""
        try:
            return read_anchor(self.anchor_path)
        except AnchorError as e:
            raise LedgerError(str(e)) from None

    def _high_water(self) -> int:
        row = self.db.execute("SELECT last_id FROM high_water WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def _hash_of(self, entry_id: int) -> str | None:
        if entry_id == 0:
            return self.genesis_hash
        row = self.db.execute("SELECT content_hash FROM entries WHERE id = ?", [int(entry_id)]).fetchone()
        return row[0] if row else None

    def _refuse_a_damaged_head(self, newest_id: int) -> HeadAnchor:
        """The anchor, when it and the high-water mark agree with the entries; else LedgerError."""
        try:
            anchor = self.anchor()
        except LedgerError as e:
            anchor, problems = None, [(None, str(e))]
        else:
            problems, _ = head_problems(anchor, newest_id, self._hash_of, self._high_water(),
                                        self.genesis.get("ledger_id"), self.anchor_path.name)
        if problems:
            eid, reason = problems[0]
            where = f"entry {eid}: " if eid is not None else ""
            raise LedgerError(f"{self.path}: refusing to append: {where}{reason}; run `edit-auditor ledger verify`")
        assert anchor is not None
        return anchor

    def _advance_anchor(self) -> None:
        """Write ``ledger.head`` for the newest committed entry and watchlist event, under the write
        lock (so concurrent appenders write it in order), never moving it backwards."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            head = conn.execute("SELECT id, content_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            newest = head[0] if head else 0
            try:
                old = read_anchor(self.anchor_path)
            except AnchorError:
                old = None
            if old is None or old.last_id <= newest:
                self._write_anchor(newest, head[1] if head else self.genesis_hash, old)
        finally:
            conn.execute("COMMIT")

    def _write_anchor(self, last_id: int, head_hash: str, old: HeadAnchor | None,
                      counter_at_least: int = 0, prev: HeadAnchor | None = None) -> HeadAnchor:
        """The head file for the database as it is now (call under the write lock); ``prev``: the
        head before an uncommitted change (see :meth:`writing`)."""
        watch_id, watch_head = self._watch_newest()
        high = max(last_id, self._high_water(), old.high_water if old else 0)
        anchor = HeadAnchor(str(self.genesis.get("ledger_id")), last_id, head_hash, high,
                            counter=max((old.counter or 0) if old else 0, counter_at_least) + 1, time=_utc_now(),
                            watch_last_id=watch_id, watch_head=watch_head, state=self.state_digest(),
                            prev=None if prev is None else replace(prev, prev=None))
        key = signing_key()
        anchor = anchor.signed(key) if key else anchor
        write_anchor(self.anchor_path, anchor)
        return anchor

    def _watch_newest(self) -> tuple[int, str]:
        """The watchlist's newest event id and hash (0 and the genesis hash while it is empty)."""
        if not self.db["watchlist"].exists():
            return 0, self.genesis_hash
        row = self.db.execute("SELECT id, content_hash FROM watchlist ORDER BY id DESC LIMIT 1").fetchone()
        return (int(row[0]), row[1]) if row else (0, self.genesis_hash)

    def _watch_hash_of(self, event_id: int) -> str | None:
        if event_id == 0:
            return self.genesis_hash
        if not self.db["watchlist"].exists():
            return None
        row = self.db.execute("SELECT content_hash FROM watchlist WHERE id = ?", [int(event_id)]).fetchone()
        return row[0] if row else None

    def state_digest(self) -> str:
        """sha256 over everything the database holds that is evidence but outside the hash chains:
        the settings, the high-water mark, the full-text index's tables, the migrations applied, and the
        schema (every table, index and trigger but the append-only triggers, which are a first line of
        defence that verify does not rely on)."""
        h = hashlib.sha256()
        names = set(self.db.table_names())
        schema = self.db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE "
                                 "'%append_only%' ORDER BY type, name").fetchall()
        h.update(canonical_json(schema).encode("utf-8"))
        for table in STATE_TABLES:
            h.update(f"\n{table}\n".encode("utf-8"))
            if table not in names:
                h.update(b"(missing)")
                continue
            for row in self.db.execute(f"SELECT * FROM [{table}] ORDER BY 1, 2"):
                typed = [{"blob": v.hex()} if isinstance(v, bytes) else v for v in row]  # b"" is not ""
                h.update(canonical_json(typed).encode("utf-8"))
                h.update(b"\n")
        return "sha256:" + h.hexdigest()

    def check_appendable(self) -> None:
        """Refuse (LedgerError, one line) to write into a ledger that does not verify.

        Up to :data:`FULL_CHECK_ENTRIES` entries this is :meth:`verify` without the delta files and the
        index's integrity check; beyond, the cheap part: the head file against the entries, the
        watchlist and the state digest, and the newest entry's hash and link.
        """
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only; nothing can be appended")
        conn = self.db.conn
        if conn.in_transaction:
            self._check_locked()
            return
        conn.execute("BEGIN IMMEDIATE")  # a consistent view: no writer between the database and the head file
        try:
            self._check_locked()
        finally:
            conn.execute("ROLLBACK")

    def _check_locked(self) -> None:
        if self.readonly:
            raise LedgerError(f"{self.path}: opened read-only; nothing can be appended")
        if len(self) <= FULL_CHECK_ENTRIES:
            problems = self.verify(check_deltas=False, check_index=False)["problems"]
        else:
            problems = []
            self._verify_head_and_state(self.head_id, self._hash_of, problems, [])
            newest = self.head()
            if newest is not None:
                if content_hash(newest.row) != newest.content_hash:
                    problems.append({"id": newest.id, "reason": "its content does not match its content_hash"})
                elif newest.prev_hash != self._hash_of(newest.id - 1):
                    problems.append({"id": newest.id, "reason": "its prev_hash does not match the entry before it"})
        if problems:
            first = problems[0]
            where = f"entry {first['id']}: " if first["id"] is not None else f"{first.get('where', 'ledger head')}: "
            raise LedgerError(f"{self.path}: refusing to append to a ledger that does not verify ({where}"
                              f"{first['reason']}); run `edit-auditor ledger verify`")

    def reanchor(self, expected_head: str) -> HeadAnchor:
        """A new ``ledger.head`` for a ledger whose head file was lost or damaged (a copy of
        ``ledger.db`` alone, a disk error), written only when every entry verifies and
        ``expected_head``, a head kept elsewhere, is the ledger's head exactly."""
        try:
            wanted = normalise_hash(expected_head)
        except AnchorError as e:
            raise LedgerError(f"--expect-head: {e}") from None
        report = self.verify(expect_head=wanted)
        found = [p for p in report["problems"] if p["id"] is not None or p.get("where") == "watchlist"]
        if found:
            where = f"entry {found[0]['id']}" if found[0]["id"] is not None else found[0]["where"]
            raise LedgerError(f"refusing to re-anchor: {where}: {found[0]['reason']}")
        if report["head"] != wanted:
            raise LedgerError(f"refusing to re-anchor: {wanted[:23]}... is not the ledger's head "
                              f"(entry {report['head_id']}, {report['head'][:23]}...)")
        try:
            old = read_anchor(self.anchor_path)
        except AnchorError:
            old = None
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            return self._write_anchor(report["head_id"], wanted, None, counter_at_least=old.counter or 0 if old else 0)
        finally:
            conn.execute("COMMIT")

    # -------------------------------------------------------- reading

    def _rows(self, sql: str, params: Any = ()) -> Iterator[dict[str, Any]]:
        cur = self.db.execute(sql, params)
        names = [d[0] for d in cur.description]
        for values in cur:
            yield dict(zip(names, values))

    def get(self, entry_id: int) -> Entry:
        for row in self._rows("SELECT * FROM entries WHERE id = ?", [int(entry_id)]):
            return Entry.from_row(row)
        raise LedgerError(f"no ledger entry {entry_id} (the ledger has {len(self)})")

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def entries(self, *, after: int = 0, limit: int | None = None, kind: str | None = None,
                status: str | None = None) -> list[Entry]:
        """Entries with ``id > after``, oldest first."""
        where, params = ["id > ?"], [int(after)]
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if status:
            where.append("status = ?")
            params.append(status)
        sql = f"SELECT * FROM entries WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Entry.from_row(r) for r in self._rows(sql, params)]

    def head(self) -> Entry | None:
        for row in self._rows("SELECT * FROM entries ORDER BY id DESC LIMIT 1"):
            return Entry.from_row(row)
        return None

    @property
    def head_hash(self) -> str:
        """The last entry's content hash (the genesis hash while the ledger is empty)."""
        head = self.db.execute("SELECT content_hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        return self.genesis_hash if head is None else head[0]

    @property
    def head_id(self) -> int:
        """The last entry's id (0 while the ledger is empty)."""
        row = self.db.execute("SELECT max(id) FROM entries").fetchone()
        return int(row[0] or 0)

    def reverted_ids(self) -> set[int]:
        rows = self.db.execute("SELECT reverts FROM entries WHERE kind = 'revert' AND reverts IS NOT NULL")
        return {r[0] for r in rows}

    def active(self) -> list[Entry]:
        """Applied edits not reverted, in ledger order: the deltas that make up the current model."""
        return self.active_at(None)

    def active_at(self, upto: int | None) -> list[Entry]:
        """:meth:`active` as the ledger stood after entry ``upto`` (None: now)."""
        bound = 2**62 if upto is None else int(upto)
        return [Entry.from_row(r) for r in self._rows(
            "SELECT * FROM entries WHERE kind = 'edit' AND status = 'applied' AND delta_hash IS NOT NULL "
            "AND id <= :b AND id NOT IN (SELECT reverts FROM entries WHERE kind = 'revert' "
            "AND reverts IS NOT NULL AND id <= :b) ORDER BY id", {"b": bound}
        )]

    def search(self, text: str, *, limit: int = 100) -> list[Entry]:
        """Entries whose subject, prompt or targets contain every word of ``text``, best match first."""
        words = [w for w in text.replace('"', " ").split() if w]
        if not words:
            return []
        query = " ".join(f'"{w}"' for w in words)  # quoted: user text is never FTS syntax
        sql = ("SELECT entries.* FROM entries JOIN entries_fts ON entries_fts.rowid = entries.rowid "
               "WHERE entries_fts MATCH ? ORDER BY entries_fts.rank, entries.id LIMIT ?")
        return [Entry.from_row(r) for r in self._rows(sql, [query, int(limit)])]

    # -------------------------------------------------------- verification

    def verify(self, *, check_deltas: bool = True, expect_head: str | None = None,
               check_index: bool = True) -> dict[str, Any]:
        """Re-derive every content hash, the chain, every delta file's hashes, and the head; check the
        watchlist, the state digest and the full-text index against the head file.

        Returns ``{"ok", "entries", "first_bad", "reason", "problems": [{"id", "reason"}], "warnings",
        "head", "head_id", "anchor", "expected_head"}``; ``first_bad`` is the lowest entry id with a
        problem (None when all is well, or when the problem is the ledger's as a whole, e.g. a
        missing head file). ``warnings`` (which do not make ``ok`` false) name entries whose
        ``fingerprint_before`` is not the state recorded before them: a history that forked, not
        a changed record. The head is checked against ``ledger.head`` and the high-water mark
        (anchor.py); ``expect_head`` (a content hash recorded elsewhere: an export's metadata, an
        append's output) must be the head or an entry of the chain; a head kept with ``ledger head``
        (its line or JSON) must in addition not be newer than ``ledger.head`` (its counter).
        Every applied edit must name exactly the parameters its delta changes, and every applied
        edit or revert must record a change of the model's fingerprint. A database file too damaged to
        read, or holding values of the wrong type, is a failed check (``problems`` names the error),
        never an exception.
        """
        try:
            return self._verify(check_deltas=check_deltas, expect_head=expect_head, check_index=check_index)
        except AuditorError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever a damaged file makes fail is a finding, not a crash
            reason = f"the database is damaged ({type(e).__name__}: {e}); nothing in it can be trusted"
            return {"ok": False, "entries": None, "first_bad": None, "reason": f"ledger.db: {reason}",
                    "problems": [{"id": None, "where": "ledger.db", "reason": reason}], "warnings": [],
                    "head": None, "head_id": None, "anchor": None, "expected_head": None}

    def _verify(self, *, check_deltas: bool, expect_head: str | None, check_index: bool) -> dict[str, Any]:
        problems: list[dict[str, Any]] = []
        warnings: list[dict[str, Any]] = []  # consistent hashes, inconsistent history
        state = self.genesis.get("base_fingerprint")  # the model fingerprint the entries should start from
        prev = self.genesis_hash
        expected_id = 1
        checked_files: dict[str, tuple[str | None, list[str] | None]] = {}
        params_of: dict[int, list[str]] = {}
        applied_edits: set[int] = set()
        hashes: dict[int, str] = {0: self.genesis_hash}
        pinned: dict[int, str] = {}  # entry id -> the watchlist head it was checked against
        n = 0
        for row in self._rows("SELECT * FROM entries ORDER BY id"):
            n += 1
            eid = row["id"]
            hashes[eid] = row.get("content_hash")

            def bad(reason: str, eid: int = eid) -> None:
                problems.append({"id": eid, "reason": reason})

            if eid != expected_id:
                bad(f"entry ids jump from {expected_id - 1} to {eid}: entries are missing")
            expected_id = eid + 1
            if set(row) != set(COLUMNS):
                bad("the entries table does not have the expected columns")
            elif content_hash(row) != row["content_hash"]:
                bad("its content does not match its content_hash (changed after it was written)")
            if row.get("prev_hash") != prev:
                bad("its prev_hash does not match the entry before it (chain broken)")
            prev = row.get("content_hash")
            if check_deltas and row.get("delta_hash"):
                key = f"{row['delta_hash']}|{row.get('delta_file_sha256')}"
                if key not in checked_files:
                    checked_files[key] = self._check_delta(row["delta_hash"], row.get("delta_file_sha256"))
                problem, delta_params = checked_files[key]
                if problem:
                    bad(problem)
                elif delta_params is not None and row.get("status") == "applied":
                    recorded = _row_params(row)
                    if sorted(recorded) != sorted(delta_params):
                        bad(f"it records the parameters {recorded} but its delta changes {delta_params}: "
                            "a revert, replay or export would not undo or rebuild it")
            if row.get("status") == "applied" and row.get("fingerprint_before") and \
                    row.get("fingerprint_before") == row.get("fingerprint_after"):
                bad(f"it is recorded as an applied {row.get('kind')} but its fingerprints before and after are "
                    "the same: the weights did not change")
            if row.get("fingerprint_before") and state and row["fingerprint_before"] != state:
                warnings.append({"id": eid, "reason": "its fingerprint_before is not the model state recorded "
                                                      "before it (written by a writer that had not caught up)"})
            state = row.get("fingerprint_after") or state
            if row.get("kind") == "revert":
                if row.get("reverts") not in applied_edits:
                    bad(f"it reverts entry {row.get('reverts')}, which is not an earlier applied edit")
                elif sorted(_row_params(row)) != sorted(params_of.get(row["reverts"], [])):
                    bad(f"it reverts entry {row['reverts']} but names other parameters than that entry")
                applied_edits.discard(row.get("reverts"))
            elif row.get("status") == "applied":
                applied_edits.add(eid)
                params_of[eid] = _row_params(row)
            watched = _watch_head(row)
            if watched:
                pinned[eid] = watched
        self._verify_watchlist(pinned, problems)
        head_id = expected_id - 1
        anchor = self._verify_head_and_state(head_id, hashes.get, problems, warnings)
        if check_index:
            self._verify_index(problems)
        expected = self._check_expected_head(expect_head, hashes, head_id, problems, anchor)
        problems.sort(key=lambda p: (p["id"] is None, p["id"] or 0))
        first = problems[0] if problems else None
        return {
            "ok": not problems,
            "entries": n,
            "first_bad": min((p["id"] for p in problems if p["id"] is not None), default=None),
            "reason": None if first is None else (f"entry {first['id']}: {first['reason']}" if first["id"] is not None
                                                  else f"{first.get('where', 'ledger head')}: {first['reason']}"),
            "problems": problems,
            "warnings": warnings,
            "head": prev,
            "head_id": head_id,
            "anchor": anchor.to_json() if anchor else None,
            "expected_head": expected,
        }

    def _verify_watchlist(self, pinned: dict[int, str], problems: list[dict[str, Any]]) -> None:
        """The watchlist's own chain (record/watchlist.py), and every watchlist head an entry was checked
        against must still be in its history: deleting the list's last events breaks no chain,
        but it drops a head the ledger pinned."""
        if "watchlist" not in self.db.table_names():
            return
        watchlist = Watchlist(self)
        report = watchlist.verify()
        if not report["ok"]:
            problems.append({"id": None, "where": "watchlist", "reason": report["reason"]})
            return
        known = {self.genesis_hash} | {event["content_hash"] for event in watchlist.history()}
        for eid, head in pinned.items():
            if head not in known:
                problems.append({"id": eid, "reason": f"it was checked against watchlist state {head[:19]}..., which "
                                                      "the watchlist's history no longer holds (events deleted)"})

    def _verify_head_and_state(self, head_id: int, hash_of: Any, problems: list[dict[str, Any]],
                               warnings: list[dict[str, Any]]) -> HeadAnchor | None:
        """Check the anchor file against the entries, the high-water mark, the watchlist and the state
        digest; return the anchor (None when missing or unreadable)."""
        try:
            anchor = self.anchor()
        except LedgerError as e:
            problems.append({"id": None, "reason": str(e)})
            return None
        if self.db.execute("SELECT count(*) FROM high_water WHERE id = 1").fetchone()[0] != 1:
            problems.append({"id": None, "where": "ledger state", "reason": "the high-water mark is missing"})
        found, warned = self._head_findings(anchor, head_id, hash_of)
        if found and anchor is not None and anchor.prev is not None:
            # a write was interrupted before its commit: the head before it must then hold
            prev_found, prev_warned = self._head_findings(anchor.prev, head_id, hash_of, signature_of=anchor)
            if not prev_found:
                found, warned = prev_found, prev_warned + [
                    {"id": None, "where": "ledger head", "reason": "the last write was interrupted before it was "
                                                                   "committed; the next append completes the head"}]
        elif anchor is not None and anchor.prev is not None:
            warned.append({"id": None, "where": "ledger head", "reason": "the head file was not finalised after "
                                                                         "the last commit; the next append does it"})
        problems.extend(found)
        warnings.extend(warned)
        return anchor

    def _head_findings(self, anchor: HeadAnchor | None, head_id: int, hash_of: Any,
                       signature_of: HeadAnchor | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Problems and warnings of the database against one head (anchor.py's checks)."""
        found, warned = head_problems(anchor, head_id, hash_of, self._high_water(), self.genesis.get("ledger_id"),
                                      self.anchor_path.name, signature_of=signature_of)
        problems = [{"id": eid, "reason": reason} for eid, reason in found]
        warnings = [{"id": eid, "reason": reason} for eid, reason in warned]
        current = anchor is not None and anchor.last_id == head_id and not found
        watch_newest, _ = self._watch_newest()
        found2, warned2 = state_problems(anchor, watch_newest, self._watch_hash_of, self.state_digest(), current,
                                         self.anchor_path.name)
        problems += [{"id": None, "where": where, "reason": reason} for where, reason in found2]
        warnings += [{"id": None, "where": where, "reason": reason} for where, reason in warned2]
        return problems, warnings

    def _verify_index(self, problems: list[dict[str, Any]]) -> None:
        """The full-text index is there, kept in step by its triggers, and consistent with the entries
        (FTS5's ``integrity-check`` on a copy in memory, so a read-only ledger is never written)."""
        damage = [r[0] for r in self.db.execute("PRAGMA integrity_check(10)")]
        if damage != ["ok"]:
            problems.append({"id": None, "where": "ledger.db", "reason": f"SQLite's integrity check fails: {damage[0]}"})
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        missing = [n for n in ("entries_fts", "entries_ai", "entries_ad", "entries_au") if n not in names]
        if missing:
            problems.append({"id": None, "where": "full-text index",
                             "reason": f"{', '.join(missing)} missing: `ledger search` would not find every entry"})
            return
        copy = sqlite3.connect(":memory:")
        try:
            self.db.conn.backup(copy)
            copy.execute("INSERT INTO entries_fts(entries_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError as e:
            problems.append({"id": None, "where": "full-text index",
                             "reason": f"it does not match the entries ({e}): `ledger search` would give wrong results"})
        finally:
            copy.close()

    def _check_expected_head(self, expect_head: str | None, hashes: dict[int, str], head_id: int,
                             problems: list[dict[str, Any]], anchor: HeadAnchor | None) -> dict[str, Any] | None:
        if expect_head is None:
            return None
        try:
            kept = parse_kept(expect_head)
        except (AnchorError, ReadError) as e:
            raise LedgerError(f"--expect-head: {e}") from None
        if isinstance(kept, HeadAnchor):
            for reason in kept_head_problems(kept, anchor, hashes.get, self.genesis.get("ledger_id")):
                problems.append({"id": None, "where": "kept head", "reason": reason})
            return {"hash": kept.head, "found": hashes.get(kept.last_id) == kept.head, "id": kept.last_id,
                    "counter": kept.counter, "entries_after": head_id - kept.last_id}
        wanted = kept
        at = next((eid for eid, h in hashes.items() if h == wanted), None)
        if at is None:
            problems.append({"id": None, "reason": f"the expected head {wanted[:23]}... is not in this ledger: "
                                                   "entries recorded before it were deleted or rewritten"})
            return {"hash": wanted, "found": False}
        return {"hash": wanted, "found": True, "id": at, "entries_after": head_id - at}

    def _check_delta(self, delta_hash: str, file_sha: str | None) -> tuple[str | None, list[str] | None]:
        """(why the delta file is wrong or None, the parameters it changes)."""
        try:
            path = self.delta_path(delta_hash)
            check_regular(path, limit=MAX_DELTA_BYTES, what="delta file")
        except (LedgerError, ReadError) as e:
            return f"its delta: {e}", None
        if file_sha and sha256_file(path) != file_sha:
            return f"its delta file {path.name} has changed (file sha256 differs)", None
        try:
            delta = load_delta(path)
            actual = delta.content_hash()
        except Exception as e:  # noqa: BLE001 - any unreadable file is a finding, not a crash
            return f"its delta file {path.name} is unreadable ({type(e).__name__})", None
        if actual != delta_hash:
            return f"its delta file {path.name} does not match the delta hash", None
        return None, list(delta.params)


def _row_params(row: dict[str, Any]) -> list[str]:
    """The parameters a raw entry row names (``params``, else ``param``); [] when unreadable."""
    try:
        params = json.loads(row["params"]) if row.get("params") else None
    except (TypeError, ValueError):
        return []
    if isinstance(params, list):
        return [str(p) for p in params]
    return [row["param"]] if row.get("param") else []


def _delta_hash_of(path: Path) -> str:
    check_regular(path, limit=MAX_DELTA_BYTES, what="delta file")
    return load_delta(path).content_hash()


def entry_params(entry: Entry) -> list[str]:
    """The parameters an entry's delta changes (a batch lists several in ``params``)."""
    params = entry.row.get("params")
    if params is not None:
        return list(json.loads(params)) if isinstance(params, str) else list(params)
    return [entry.param] if entry.param else []


def entry_facts(entry: Entry) -> list[tuple[str, str, str | None]]:
    """(prompt with the subject, target_new, target_true) of every request an entry holds."""
    reqs = entry.row.get("requests")
    if reqs is None:
        return [(entry.prompt, entry.target_new, entry.row.get("target_true"))]
    reqs = json.loads(reqs) if isinstance(reqs, str) else reqs
    return [(r["prompt"].replace("{}", r["subject"]), r["target_new"], r.get("target_true")) for r in reqs]
