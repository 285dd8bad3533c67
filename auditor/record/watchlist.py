"""The watchlist's storage: ``add`` and ``remove`` events in the ``watchlist`` table of ``ledger.db``.

Items are never updated or deleted: each event carries ``prev_hash`` and a ``content_hash`` over
its canonical JSON, so the list's history is tamper-evident like the ledger's
(:meth:`Watchlist.verify`, which ``Ledger.verify`` runs). Events are written through
:meth:`Ledger.writing`, so the ledger's head file pins the newest event and its hash (and signs
them with the ledger's head): deleting the newest events, or rewriting one with every later hash
recomputed, no longer passes. What the items mean and how they are
checked against a model is in ``record.watch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditor.base import AuditorError
from auditor.record.hashing import canonical_json, operator, sha256_text, utc_now

if TYPE_CHECKING:
    from auditor.record.ledger import Ledger

EVENT_COLUMNS = ("id", "created_at", "operator", "action", "item", "prompt", "answer", "note", "prev_hash",
                 "content_hash")


class WatchError(AuditorError, ValueError):
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
        # the ledger's one write path: checked first, the head file (which pins the watchlist's head) after
        with self.ledger.writing() as conn:
            last = conn.execute("SELECT id, content_hash FROM watchlist ORDER BY id DESC LIMIT 1").fetchone()
            row = {"id": 1 if last is None else last[0] + 1, "created_at": utc_now(), "operator": operator(),
                   **fields, "prev_hash": self.ledger.genesis_hash if last is None else last[1]}
            row["content_hash"] = _event_hash(row)
            conn.execute(f"INSERT INTO watchlist ({', '.join(EVENT_COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(EVENT_COLUMNS))})", [row[c] for c in EVENT_COLUMNS])
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
