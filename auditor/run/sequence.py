"""A sequence of edits with the monitor on, stopped (and the offending step rolled back) in time.

:func:`run_sequence` applies requests to a workspace in order, ``batch_size`` per step (with
ROME, a step of N requests is N ledger entries; a method that edits a batch at once writes one
entry per step). After every applied edit the workspace runs the watchlist check and the
:class:`~auditor.run.monitor.Monitor` (``Workspace.after_apply``), so each entry carries its figures
in ``metrics.watch`` and ``metrics.monitor``. After each step the step's figures are handed to
``on_step``; when one crosses a threshold the run is told to stop on, every edit of that step is
reverted (new ledger entries, newest first; nothing is deleted), so the model is bit for bit what
it was before the step, and the run ends. A step that is not applied whole (an edit or batch that
fails, or that the collapse guard refuses) also ends the run, with ``failed`` and the error in the
final record. The final record says whether and why it stopped.

Example::

    monitor = Monitor(*parse_stop_on("ppl,norm=1.3"))
    final = run_sequence(ws, requests, monitor, key_mode="original", allow_collapse=True,
                         on_step=lambda rec: print(rec["ppl_ratio"]))
    final["stopped"], final["reason"]
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterator

from auditor.run.monitor import Monitor

if TYPE_CHECKING:
    from auditor.model.requests import EditRequest
    from auditor.record.ledger import Entry
    from auditor.run.workspace import Workspace

StepFn = Callable[[dict[str, Any]], None]
# figures of a step record, in the order the report shows them
STEP_FIGURES = ("ppl_ratio", "retention", "watch_pass_rate", "norm_ratio", "cond_ratio", "ppl_trend")
STEP_FIGURES += ("cumulative_spill",)  # issue 18: the watch bank's share moved since the run started
STEP_FIGURES += ("ppl_jump", "norm_jump")  # relative to the previous step (issue 19)


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_sequence(ws: "Workspace", requests: list["EditRequest"], monitor: Monitor, *, batch_size: int = 1,
                 on_step: StepFn | None = None, cancel: threading.Event | None = None,
                 **edit_kwargs: Any) -> dict[str, Any]:
    """Apply ``requests`` with ``monitor`` on; returns the final record (see the module docstring).

    ``edit_kwargs`` go to :meth:`Workspace.edit` (``method``, ``key_mode``, ``hparams``,
    ``allow_collapse``, ``progress``, ...).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ws.editor.check_requests(requests)  # all of them fit the model's context, before the first step
    monitor.run = monitor.run or new_run_id()
    monitor.label = monitor.label or f"{edit_kwargs.get('method', 'rome')}/{edit_kwargs.get('key_mode', 'consistent')}"
    t0 = time.perf_counter()
    if monitor.watch_bank is None:
        monitor.watch(ws, requests)  # the cumulative spill's watch bank (monitor.py)
    monitor.start(ws)
    ws.after_apply.append(monitor.hook)
    applied_total, step = 0, 0
    final: dict[str, Any] = {"stopped": False, "reason": None, "cancelled": False}
    try:
        for step, batch in enumerate(batches(requests, batch_size), start=1):
            if cancel is not None and cancel.is_set():
                final.update(stopped=True, cancelled=True, reason="cancelled by the user")
                break
            fp_before = ws.fingerprint
            entries, failure = _edit_batch(ws, batch, cancel=cancel, note=f"sequence {monitor.run} step {step}",
                                           **edit_kwargs)
            if entries is None:
                final.update(stopped=True, cancelled=True, reason="cancelled by the user")
                break
            applied = [e for e in entries if e.kind == "edit" and e.status == "applied"]
            applied_total += _n_edits(applied)
            record = _step_record(monitor, step, batch, entries, applied, applied_total, ws)
            failure = failure or _not_applied(entries)
            stops = [c for c in record["crossed"] if c["stops"]] if applied else []
            if stops:
                reason = "; ".join(c["reason"] for c in stops)
                reverts = [ws.revert(e.id, note=f"sequence {monitor.run}: step {step} rolled back: {reason}")
                           for e in reversed(applied)]
                applied_total -= _n_edits(applied)
                record["rolled_back"] = [e.id for e in applied]
                if on_step:
                    on_step(record)
                final.update(stopped=True, reason=reason, stopped_at_step=step, crossed=stops,
                             rolled_back=[e.id for e in applied], reverts=[r.id for r in reverts],
                             fingerprint_before_step=fp_before)
                break
            if failure:
                # a step that was not applied whole (failed, refused by the guard) ends the run: going
                # on would report fewer edits than requested as a finished run
                record["failed"] = failure
                if on_step:
                    on_step(record)
                final.update(stopped=True, failed=True, reason=f"step {step} not applied: {failure}",
                             stopped_at_step=step)
                break
            if on_step:
                on_step(record)
    finally:
        ws.after_apply.remove(monitor.hook)
    final.update(final=True, run=monitor.run, label=monitor.label, steps=step, edits_applied=applied_total,
                 requests=len(requests), fingerprint=ws.fingerprint, ledger_head=ws.ledger.head_hash,
                 thresholds=monitor.thresholds.to_dict(), stop_on=list(monitor.stop_on),
                 seconds=round(time.perf_counter() - t0, 3))
    final["thresholds_source"] = monitor.thresholds_source
    return final


def _edit_batch(ws: "Workspace", batch: list["EditRequest"],
                **kwargs: Any) -> tuple[list["Entry"] | None, str | None]:
    """One step's edits as ledger entries (a failed edit is recorded too), and why the step failed
    when it failed without an entry; ``(None, None)`` when cancelled.

    ROME: one entry per request, in order, up to the first that is not applied. MEMIT / AlphaEdit:
    the step is one batch, one entry (a batch that fails to compute leaves no entry: batch.py;
    its error is returned instead)."""
    from auditor.base import EditCancelled
    from auditor.run.batch import BatchFailed
    from auditor.run.outcome import EditFailed

    if kwargs.get("method", "rome") != "rome":
        try:
            return [ws.edit_batch(batch, **kwargs)[1]], None
        except BatchFailed as e:
            return [], f"the batch failed: {e}"
        except EditCancelled:
            return None, None
    entries = []
    for request in batch:
        try:
            _result, entry = ws.edit(request, **kwargs)
        except EditFailed as e:
            entry = e.entry  # type: ignore[attr-defined]
        except EditCancelled:
            return None, None
        entries.append(entry)
        if entry.status != "applied":
            break
    return entries, None


def _not_applied(entries: list["Entry"]) -> str | None:
    """Why some of a step's entries were not applied (None when all were)."""
    bad = [e for e in entries if e.status != "applied"]
    return "; ".join(f"entry {e.id} {e.status}: {e.row.get('error') or 'no error recorded'}" for e in bad) or None


def _n_edits(entries: list["Entry"]) -> int:
    """Requests in these entries (a MEMIT / AlphaEdit batch entry holds several)."""
    from auditor.record.ledger import entry_facts

    return sum(len(entry_facts(e)) for e in entries)


def _step_record(monitor: Monitor, step: int, batch: list["EditRequest"], entries: list["Entry"],
                 applied: list["Entry"], applied_total: int, ws: "Workspace") -> dict[str, Any]:
    """The step's JSON line: the last applied entry's monitor figures (or, when nothing was applied,
    the previous step's figures: the model did not change)."""
    if applied:
        figures = applied[-1]["metrics"]["monitor"]
        monitor.record(figures)
    else:
        figures = {**(monitor.history[-1] if monitor.history else monitor.measure(ws)), "crossed": []}
    return {
        "step": step, "edits": applied_total, "changed": bool(applied),
        "requests": [r.case_id or r.subject for r in batch], "entries": [e.id for e in entries],
        "status": [e.status for e in entries], "errors": [e.row.get("error") for e in entries if e.row.get("error")],
        **{k: v for k, v in figures.items() if k not in ("thresholds", "stop_on")},
        "collateral": [entry_collateral(e) for e in applied],
        "fingerprint": ws.fingerprint,
    }


def entry_collateral(entry: "Entry") -> dict[str, Any]:
    """Who else one applied entry changed, from its recorded collateral audit (measure/collateral.py):
    ``{"entry", "edit", "spill_rate", "preservation_cost", "moved"}``, the figures None when the
    entry was not audited (``--no-audit``, or recorded before issue 18)."""
    from auditor.record.ledger import entry_facts

    audit = (entry["metrics"] or {}).get("collateral") or {}
    return {"entry": entry.id, "edit": "; ".join(f"{p} -> {new}" for p, new, _ in entry_facts(entry)),
            "spill_rate": audit.get("spill_rate"), "preservation_cost": audit.get("preservation_cost"),
            "moved": list(audit["moved"]) if "moved" in audit else None}
