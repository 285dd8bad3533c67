"""Applying a patch (``export --patch``) to a workspace: checked whole, recorded as one entry.

:func:`apply_patch_to_workspace` reads and checks the whole patch first
(:func:`~auditor.record.export.check_patch`: manifest, base fingerprint, every file inside the
patch, hashes, every delta an editable matrix of the family with factors of its exact shape), then
applies its deltas in order under the workspace lock and appends ONE ledger entry (method
``patch``) whose delta is the ordered set of the patch's deltas: a revert of that entry undoes the
whole patch, and a replay gives the same bits. Any failure before the entry is written restores the
weights, so the workspace is as it was.

Example::

    entry = apply_patch_to_workspace(ws, "out/eiffel-italy.patch")
    entry.fingerprint_after == manifest["fingerprint"]   # when the workspace had no edits
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.engine.deltas import DeltaSet
from auditor.model.checkpoint import fingerprint_model
from auditor.model.offload import restore_params, snapshot_params
from auditor.record.export import CheckedPatch, apply_checked, check_patch

if TYPE_CHECKING:
    from auditor.record.ledger import Entry
    from auditor.run.workspace import Workspace


def patch_delta(patch: CheckedPatch) -> DeltaSet:
    """The patch's deltas as one ordered set (parts of a MEMIT/AlphaEdit set kept in their order)."""
    return DeltaSet([part for delta in patch.deltas for part in delta.parts_on(None)],
                    meta={"patch_ledger_head": str(patch.manifest.get("ledger_head"))[:80]})


def patch_requests(patch: CheckedPatch) -> list[dict[str, Any]]:
    """The requests of the source ledger's entries, as the entry records them."""
    out = []
    for e in patch.entries:
        reqs = e.get("requests")
        reqs = json.loads(reqs) if isinstance(reqs, str) else reqs
        if isinstance(reqs, list):
            out += [r for r in reqs if isinstance(r, dict)]
        elif isinstance(e.get("prompt"), str) and isinstance(e.get("subject"), str):
            out.append({k: e.get(k) for k in ("prompt", "subject", "target_new", "target_true")})
    return out


def apply_patch_to_workspace(ws: "Workspace", patch_dir: str | Path, *, note: str | None = None) -> "Entry":
    """Check the whole patch, apply it, record it as one entry; nothing changes on any failure."""
    from auditor.run.workspace import dtype_name

    with ws._locked():
        ws._sync()
        patch = check_patch(ws.lm, patch_dir, base_fingerprint=ws.base_fingerprint)
        delta = patch_delta(patch)
        before = ws.fingerprint
        saved = snapshot_params(ws.lm.model, patch.params)  # offloaded weights: read from their store
        try:
            apply_checked(ws.lm.model, patch)
            after = fingerprint_model(ws.lm.model)
            requests = patch_requests(patch)
            entry = ws.ledger.append({
                "kind": "edit", "status": "applied", "method": "patch",
                "params": patch.params, "param": patch.params[0], "requests": requests or None,
                "n_requests": len(requests) or None,
                "note": note or f"patch {patch.folder} (source head {str(patch.manifest.get('ledger_head'))[:80]})",
                "hparams": {"patch": str(patch.folder), "source_ledger_head": patch.manifest.get("ledger_head"),
                            "source_entries": [e.get("id") for e in patch.entries],
                            "source_fingerprint": patch.manifest.get("fingerprint")},
                "device": str(ws.lm.device), "dtype": dtype_name(ws.lm.dtype),
                "fingerprint_before": before, "fingerprint_after": after,
            }, delta=delta)
        except BaseException:
            restore_params(ws.lm.model, saved)
            raise
        ws._synced_id = entry.id
        ws._weights_changed()
        return entry
