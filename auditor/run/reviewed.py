"""Apply exactly the delta a user reviewed: the "Apply anyway" of a flagged dry run.

A dry run (or an edit the collapse guard rejected) is recorded with its delta, its measurements
and the model fingerprint it was computed on, and the weights are restored. When the user has
read that record and decides to apply it anyway, computing the edit again would apply a delta
nobody reviewed (the v* optimisation is not bit-reproducible across devices and thread counts).
:func:`apply_reviewed` instead loads the recorded delta (checked against its hash), applies it with
:func:`deltas.apply_delta` to the same weights it was computed on, and records a new ``applied``
entry carrying the same ``delta_hash`` and measurements, linked to the reviewed entry by
``diagnostics["applies_entry"]`` (hashed into the chain like every column).

Example::

    result, dry = ws.edit(request, dry_run=True)          # flagged: collapse risk
    entry = apply_reviewed(ws, dry.id, note="reviewed by ana")
    assert entry.delta_hash == dry.delta_hash
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from auditor.engine.deltas import apply_delta
from auditor.record.ledger import COLUMNS, Entry, entry_params

if TYPE_CHECKING:
    from auditor.run.workspace import Workspace

REVIEWABLE = ("dry-run", "rejected")
# The columns the new entry sets itself; every other column of the reviewed entry (the request or a
# batch's requests, the parameters, the measurements, the delta...) is copied unchanged, so a column
# added later is carried over without anyone listing it (issue 17: a MEMIT batch lost its ``params``).
OWN = ("id", "created_at", "operator", "host", "app_version", "kind", "status", "error", "note", "diagnostics",
       "fingerprint_before", "fingerprint_after", "reverts", "prev_hash", "content_hash")
# the columns copied (kept under its 0.1 name; derived, so it cannot fall behind the ledger's columns)
COPIED = tuple(c for c in COLUMNS if c not in OWN)


def apply_reviewed(ws: "Workspace", entry_id: int, *, note: str | None = None) -> Entry:
    """Apply the delta recorded in ``entry_id`` (a dry run or a rejected edit) as a new entry."""
    from auditor.run.workspace import WorkspaceError

    with ws._locked():
        ws._sync()
        reviewed = ws.ledger.get(entry_id)
        if reviewed.kind != "edit" or reviewed.status not in REVIEWABLE or not reviewed.delta_hash:
            raise WorkspaceError(f"entry {entry_id} is a {reviewed.status} {reviewed.kind} without a reviewable "
                                 "delta; only a dry run or a rejected edit can be applied as reviewed")
        if reviewed.fingerprint_before != ws.fingerprint:
            raise WorkspaceError(f"the model changed since entry {entry_id} was computed; its delta was reviewed "
                                 "on other weights. Run the edit again")
        delta = ws.ledger.load_delta(reviewed.delta_hash)  # checked against its hash
        if sorted(entry_params(reviewed)) != sorted(delta.params):
            raise WorkspaceError(f"entry {entry_id} names the parameters {entry_params(reviewed)} but its delta "
                                 f"changes {delta.params}; run `edit-auditor ledger verify`")
        before = ws.fingerprint
        apply_delta(ws.lm.model, delta)
        ws._weights_changed()
        if ws.fingerprint == before:
            raise WorkspaceError(f"applying the delta of entry {entry_id} did not change the weights; nothing recorded")
        diagnostics = {**reviewed["diagnostics"], "applies_entry": entry_id}
        entry = ws.ledger.append({
            **{k: v for k, v in reviewed.row.items() if k not in OWN}, "kind": "edit", "status": "applied",
            "diagnostics": diagnostics, "error": None,
            "note": note or f"applied as reviewed in entry {entry_id} (collapse-risk override)",
            "fingerprint_before": before, "fingerprint_after": ws.fingerprint,
        })
        ws._synced_id = entry.id
        return entry
