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

from typing import TYPE_CHECKING, Any

from auditor.record.ledger import Entry, entry_facts
from auditor.record.watchlist import EVENT_COLUMNS, WatchError, WatchItem, Watchlist

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel
    from auditor.run.workspace import Workspace

__all__ = ["EVENT_COLUMNS", "WatchError", "WatchItem", "Watchlist", "check", "check_model", "learned"]

# ---------------------------------------------------------------- checking


def _holds_answers(lm: "LoadedModel", items: list[WatchItem]) -> list[bool]:
    from auditor.measure.metrics import score

    if not items:
        return []
    return [s.accuracy == 1.0 for s in score(lm, [i.prompt for i in items], [i.answer for i in items])]


def _holds_edits(lm: "LoadedModel", entries: list["Entry"]) -> list[bool]:
    from auditor.measure.metrics import success

    # a batch entry holds when all its requests hold (entry_facts)

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
