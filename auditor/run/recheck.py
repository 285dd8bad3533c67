"""After a revert: the later edits re-measured, and the ones whose efficacy changed listed (issue 19).

An edit computed after another was computed on a model that held it: its keys, its residual and
(AlphaEdit) its key memory saw the earlier delta. Reverting the earlier edit leaves the later
deltas in place but changes what they act on, so a later fact can stop holding (or start holding)
without any record of it. :func:`recheck_later` re-measures every applied, not reverted edit after
the reverted one on the model as it is now: each request's efficacy on its own prompt (CounterFact's
success, ``metrics.success``: the new target beats the true one; token accuracy of the new target
without a true one), and compares it with the efficacy recorded in the edit's entry.

The result goes into the revert's entry (``diagnostics["recheck"]``, workspace.py)::

    {"checked": [ids], "requests": n, "changed": [{"entry", "request", "prompt", "recorded", "now"}]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from auditor.measure import metrics
from auditor.record.ledger import Entry, entry_facts

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel
    from auditor.record.ledger import Ledger


def recorded_efficacy(entry: Entry) -> list[float | None]:
    """The efficacy recorded for each request of ``entry`` (a batch: per request; else the entry's)."""
    per = entry["metrics"].get("per_request") if entry.row.get("metrics") is not None else None
    if per:
        return [p.get("efficacy") for p in per]
    return [entry.row.get("efficacy")]


def recheck_later(lm: "LoadedModel", ledger: "Ledger", reverted_id: int, *, upto: int | None = None) -> dict[str, Any]:
    """Re-measure the applied edits after ``reverted_id`` (up to ``upto``) on the model as it is now."""
    later = [e for e in ledger.active_at(upto) if e.id > reverted_id]
    checked, changed, n = [], [], 0
    for e in later:
        checked.append(e.id)
        for i, ((prompt, new, true), was) in enumerate(zip(entry_facts(e), recorded_efficacy(e))):
            now = metrics.success(lm, [prompt], new, true)[0]
            n += 1
            if was is not None and float(was) != float(now):
                changed.append({"entry": e.id, "request": i, "prompt": prompt, "target_new": new,
                                "recorded": float(was), "now": float(now)})
    return {"checked": checked, "requests": n, "changed": changed}
