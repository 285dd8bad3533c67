"""Ledger entries as the window shows them: a flat mapping of field -> value per entry.

The ledger (``auditor.record.ledger.Entry``) is the source of truth; this module only flattens
an entry for display (nested ``request``/``metrics``/``diagnostics`` fields are lifted to
the top level when they do not clash) and formats values. No SQL, no science.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

NESTED = ("request", "metrics", "diagnostics", "timings", "result")
ALIASES = {
    "time": ("time", "created_at", "timestamp", "utc"),
    "denominator": ("denominator",),
    "ppl_ratio": ("ppl_ratio",),
    "collapse_risk": ("collapse_risk", "flagged"),
    "hash": ("content_hash", "entry_hash"),
    "prev_hash": ("prev_hash", "previous_hash"),
    "delta_hash": ("delta_hash",),
    "reverts": ("reverts", "reverts_id", "reverted_entry"),
}


def as_dict(entry: Any) -> dict[str, Any]:
    if hasattr(entry, "to_json"):  # auditor.record.ledger.Entry: every column, JSON ones decoded
        return dict(entry.to_json())
    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        return {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    if isinstance(entry, dict):
        return dict(entry)
    return dict(vars(entry))


def _decoded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def flatten(entry: Any) -> dict[str, Any]:
    """Top-level fields, then nested dictionaries' fields where the name is still free.

    ``flat["_raw"]`` keeps the entry's own fields, in order, for the detail view.
    """
    top = {k: _decoded(v) for k, v in as_dict(entry).items()}
    flat = dict(top)
    flat["_raw"] = top
    for name in NESTED:
        nested = top.get(name)
        if isinstance(nested, dict):
            for k, v in nested.items():
                flat.setdefault(k, v)
    if top.get("n_requests"):  # a batch entry (MEMIT, AlphaEdit): what it contains, on one line
        reqs = top.get("requests") or []
        shown = ", ".join(f"{r.get('subject')} → {r.get('target_new')}" for r in reqs[:3])
        flat["subject"] = f"batch of {top['n_requests']}: {shown}" + (", …" if len(reqs) > 3 else "")
        flat["target_new"] = f"{len(reqs)} targets"
    audit = flat.get("collateral")
    if isinstance(audit, dict):  # the entry's collateral audit (issue 18): its two headline figures
        for key in ("spill_rate", "preservation_cost"):
            if flat.get(key) is None:
                flat[key] = audit.get(key)
    for canonical, names in ALIASES.items():
        if canonical not in flat or flat[canonical] is None:
            for n in names:
                if flat.get(n) is not None:
                    flat[canonical] = flat[n]
                    break
    return flat


def rows_of(entries: list[Any]) -> list[dict[str, Any]]:
    """Flattened entries, each applied edit marked with the id of the revert that undid it."""
    return _mark_reverts([flatten(e) for e in entries])


class LedgerRows:
    """The rows of a ledger as the window shows them (:func:`rows_of`), read incrementally.

    The ledger only appends, so :meth:`read` reads and flattens the entries added since the last
    read; only the revert marks are worked out again over all rows. (Reading and flattening every
    entry at each state change cost about 1 ms an entry on the GUI thread, at every sequence step.)
    """

    def __init__(self, ledger: Any):
        self.ledger = ledger
        self._flat: list[dict[str, Any]] = []  # flattened, without revert marks

    def read(self) -> list[dict[str, Any]]:
        last = self._flat[-1].get("id") if self._flat else 0
        self._flat.extend(flatten(e) for e in self.ledger.entries(after=int(last or 0)))
        return _mark_reverts([dict(r) for r in self._flat])


def _mark_reverts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r.get("id"): r for r in rows}
    for r in rows:
        if r.get("kind") == "revert" and r.get("reverts") in by_id:
            by_id[r["reverts"]]["reverted_by"] = r.get("id")
    return rows


def revertible(row: dict[str, Any] | None) -> bool:
    return bool(row) and row.get("kind", "edit") == "edit" and row.get("status") == "applied" \
        and not row.get("reverted_by")


def fmt(value: Any) -> str:
    """A short human form of a recorded value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def did_not_take(status: Any, efficacy: Any) -> bool:
    """An applied edit whose request failed: the new target does not beat the old one (efficacy 0)."""
    value = number(efficacy)
    return status == "applied" and value is not None and value == 0
