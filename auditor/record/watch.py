"""The watchlist: answers that must not change, and edits that must keep holding.

A workspace's watchlist has two parts:

* the user's items: a prompt and the answer the model must keep giving (regression facts,
  "The capital of France is" -> "Paris"). An item holds when greedy decoding of the prompt
  begins with the answer (every answer token is the argmax, teacher-forced: metrics.score);
* the workspace's own applied, not reverted edits: each holds while its new target still beats
  its true target on its edit prompt (CounterFact efficacy, metrics.success), or, without a true
  target, while every new-target token is the argmax.

Storage: the ``watchlist`` table of ``ledger.db`` (migration ``m004_watchlist``). Items are never
updated or deleted: ``add`` and ``remove`` are events, appended, each carrying ``prev_hash`` and a
``content_hash`` over its canonical JSON, so the list's history is tamper-evident like the ledger's
(:meth:`Watchlist.verify`). A table rather than a file beside the ledger because it then shares the
ledger's transactions, append-only triggers and backups (copying the folder copies it), and
because :func:`check` puts the watchlist's head hash into every edit entry it checks
(``metrics.watch.head``), so the ledger's own hash chain pins which list each edit was checked
against.

:func:`check` runs after every applied edit (``Workspace.edit``), before the entry is written,
and its result goes into the entry's ``metrics["watch"]``.

Example::

    wl = Watchlist(ws.ledger)
    wl.add("The capital of France is", "Paris")
    report = check(ws)           # {"head", "pass_rate", "retention", "failed": [...], ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .ledger import Ledger, _operator, _utc_now, canonical_json, sha256_text

if TYPE_CHECKING:
    from .checkpoint import LoadedModel
    from .ledger import Entry
    from .workspace import Workspace

EVENT_COLUMNS = ("id", "created_at", "operator", "action", "item", "prompt", "answer", "note", "prev_hash",
                 "content_hash")


class WatchError(ValueError):
    """A watchlist change that cannot be made; ``str(e)`` is one line."""


@dataclass(frozen=True)
class WatchItem:
    id: int  # the id of the "add" event
    prompt: str  # complete prompt
    answer: str  # the answer the model must keep giving (its greedy continuation starts with it)
    note: str | None = None
    created_at: str | None = None


def _event_hash(row: dict[str, Any]) -> str:
    return sha256_text(canonical_json({k: row.get(k) for k in EVENT_COLUMNS if k != "content_hash"}))


class Watchlist:
    """The user's watched answers of one ledger (the ``watchlist`` table)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _events(self) -> list[dict[str, Any]]:
        cur = self.ledger.db.execute(f"SELECT {', '.join(EVENT_COLUMNS)} FROM watchlist ORDER BY id")
        return [dict(zip(EVENT_COLUMNS, r)) for r in cur]

    def items(self) -> list[WatchItem]:
        """Items added and not removed, oldest first."""
        events = self._events()
        removed = {e["item"] for e in events if e["action"] == "remove"}
        return [WatchItem(e["id"], e["prompt"], e["answer"], e["note"], e["created_at"])
                for e in events if e["action"] == "add" and e["id"] not in removed]

    def history(self) -> list[dict[str, Any]]:
        return self._events()

    @property
    def head(self) -> str:
        """The last event's hash (the ledger's genesis hash while the list has no history)."""
        row = self.ledger.db.execute("SELECT content_hash FROM watchlist ORDER BY id DESC LIMIT 1").fetchone()
        return row[0] if row else self.ledger.genesis_hash

    def add(self, prompt: str, answer: str, *, note: str | None = None) -> WatchItem:
        prompt, answer = (prompt or "").rstrip(), (answer or "").strip()
        if not prompt.strip():
            raise WatchError("the prompt is empty")
        if not answer:
            raise WatchError("the answer is empty")
        if any(i.prompt == prompt and i.answer == answer for i in self.items()):
            raise WatchError(f"already watched: {prompt!r} -> {answer!r}")
        row = self._append({"action": "add", "item": None, "prompt": prompt, "answer": answer, "note": note})
        return WatchItem(row["id"], prompt, answer, note, row["created_at"])

    def remove(self, item_id: int, *, note: str | None = None) -> dict[str, Any]:
        item = next((i for i in self.items() if i.id == int(item_id)), None)
        if item is None:
            raise WatchError(f"no watched item {item_id} (see `edit-auditor watch list`)")
        return self._append({"action": "remove", "item": item.id, "prompt": item.prompt, "answer": item.answer,
                             "note": note})

    def _append(self, fields: dict[str, Any]) -> dict[str, Any]:
        conn = self.ledger.db.conn
        conn.execute("BEGIN IMMEDIATE")  # serialises writers across processes, as Ledger.append
        try:
            last = conn.execute("SELECT id, content_hash FROM watchlist ORDER BY id DESC LIMIT 1").fetchone()
            row = {"id": 1 if last is None else last[0] + 1, "created_at": _utc_now(), "operator": _operator(),
                   **fields, "prev_hash": self.ledger.genesis_hash if last is None else last[1]}
            row["content_hash"] = _event_hash(row)
            conn.execute(f"INSERT INTO watchlist ({', '.join(EVENT_COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(EVENT_COLUMNS))})", [row[c] for c in EVENT_COLUMNS])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return row

    def verify(self) -> dict[str, Any]:
        """Re-derive every event's hash and the chain: ``{"ok", "events", "first_bad", "reason"}``."""
        prev = self.ledger.genesis_hash
        events = self._events()
        for expected, row in enumerate(events, start=1):
            reason = None
            if row["id"] != expected:
                reason = f"event ids jump to {row['id']}: events are missing"
            elif _event_hash(row) != row["content_hash"]:
                reason = "its content does not match its content_hash (changed after it was written)"
            elif row["prev_hash"] != prev:
                reason = "its prev_hash does not match the event before it (chain broken)"
            if reason:
                return {"ok": False, "events": len(events), "first_bad": row["id"],
                        "reason": f"watchlist event {row['id']}: {reason}"}
            prev = row["content_hash"]
        return {"ok": True, "events": len(events), "first_bad": None, "reason": None}


# ---------------------------------------------------------------- checking


def _holds_answers(lm: "LoadedModel", items: list[WatchItem]) -> list[bool]:
    from .metrics import score

    if not items:
        return []
    return [s.accuracy == 1.0 for s in score(lm, [i.prompt for i in items], [i.answer for i in items])]


def _holds_edits(lm: "LoadedModel", entries: list["Entry"]) -> list[bool]:
    from .metrics import success

    from .workspace import entry_facts  # a batch entry holds when all its requests hold

    return [all(success(lm, [p], new, true)[0] >= 1.0 for p, new, true in entry_facts(e)) for e in entries]


def learned(entry: "Entry") -> bool:
    """Whether an applied edit held when it was made (its efficacy then); only those can be lost."""
    efficacy = entry.row.get("efficacy")
    return efficacy is None or efficacy >= 1.0


def check_model(lm: "LoadedModel", items: list[WatchItem], edits: list["Entry"], head: str) -> dict[str, Any]:
    """Which watched answers and which earlier edits still hold on ``lm`` as it is now.

    Only edits that held when they were made count towards ``retention`` (the others are
    ``edits_not_learned``). ``pass_rate`` / ``retention`` are None when there is nothing to check.
    """
    answers = _holds_answers(lm, items)
    not_learned = [e.id for e in edits if not learned(e)]
    edits = [e for e in edits if learned(e)]
    kept = _holds_edits(lm, edits)
    return {
        "head": head,
        "items": len(items),
        "passed": sum(answers),
        "pass_rate": sum(answers) / len(answers) if answers else None,
        "failed": [{"item": i.id, "prompt": i.prompt, "answer": i.answer} for i, ok in zip(items, answers) if not ok],
        "edits": len(edits),
        "edits_held": sum(kept),
        "retention": sum(kept) / len(kept) if kept else None,
        "edits_lost": [e.id for e, ok in zip(edits, kept) if not ok],
        "edits_not_learned": not_learned,
        "holding": [i.id for i, ok in zip(items, answers) if ok],
    }


def check(ws: "Workspace") -> dict[str, Any]:
    """The watchlist of ``ws`` checked on its current model (the user's items and its active edits)."""
    wl = Watchlist(ws.ledger)
    return check_model(ws.lm, wl.items(), ws.ledger.active(), wl.head)
