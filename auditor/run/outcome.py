"""What one edit produced: :class:`EditResult` (the request, delta, diagnostics, measurements,
verdict and fingerprints), its status (:func:`settle`), and :class:`EditFailed`.

``run.edit.Editor`` fills an :class:`EditResult`; ``run.batch`` fills a ``BatchResult`` and settles
it the same way; ``run.workspace`` turns either into a ledger entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from auditor.base import AuditorError
from auditor.engine.deltas import Delta
from auditor.model.requests import EditRequest


class EditFailed(AuditorError, RuntimeError):
    """The edit could not be computed (NaN, out of memory, bad input); the weights are as they were."""


@dataclass
class EditResult:
    request: EditRequest
    method: str
    key_mode: str
    layer: int
    hparams: dict
    delta: Delta | None
    diagnostics: dict
    metrics: dict
    timings: dict
    collapse_risk: bool
    collapse_reasons: list[str]
    status: str  # "applied" | "dry-run" | "rejected" | "failed"
    error: str | None
    device: str
    dtype: str
    fingerprint_before: str
    fingerprint_after: str
    vectors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # v_star, k_cur, u (not serialised)

    def record(self) -> dict[str, Any]:
        """The flat JSON line of ``edit-auditor edit``."""
        m, d = self.metrics, self.diagnostics
        return {
            "case_id": self.request.case_id,
            "subject": self.request.subject,
            "prompt": self.request.prompt,
            "target_new": self.request.target_new,
            "target_true": self.request.target_true,
            "method": self.method,
            "key_mode": self.key_mode,
            "layer": self.layer,
            "status": self.status,
            "error": self.error,
            "denominator": d.get("denominator"),
            "denominator_raw": d.get("denominator_raw"),
            "numerator_norm": d.get("numerator_norm"),
            "update_norm": d.get("update_norm"),
            "weight_norm": d.get("weight_norm"),
            "key_cosine": d.get("key_cosine"),
            "subject_first_token": d.get("subject_first_token"),
            "key_position": d.get("key_position"),
            "ppl_before": m.get("ppl_before"),
            "ppl_after": m.get("ppl_after"),
            "ppl_ratio": m.get("ppl_ratio"),
            "efficacy": m.get("efficacy"),
            "target_prob": m.get("target_prob"),
            "generalization": m.get("generalization"),
            "locality": m.get("locality"),
            "portability": m.get("portability"),
            "prefixed_efficacy": m.get("prefixed_efficacy"),
            "efficacy_before": m.get("efficacy_before"),
            **collateral_fields(m.get("collateral")),
            "collapse_risk": self.collapse_risk,
            "collapse_reasons": self.collapse_reasons,
            "v_steps": d.get("v_steps"),
            "timings": self.timings,
            "seconds": self.timings.get("total"),
            "device": self.device,
            "dtype": self.dtype,
            "fingerprint_before": self.fingerprint_before,
            "fingerprint_after": self.fingerprint_after,
            "delta_hash": self.delta.content_hash() if self.delta is not None else None,
        }


def collateral_fields(report: dict | None) -> dict[str, Any]:
    """The collateral audit's figures in a JSON line (measure/collateral.py; None when not audited)."""
    report = report or {}
    return {"spill_rate": report.get("spill_rate"), "moved": report.get("moved"),
            "preservation_cost": report.get("preservation_cost")}


def settle(result: Any, *, dry_run: bool, allow_collapse: bool) -> None:
    """Set ``collapse_risk`` from ``collapse_reasons``, then the status: dry run, rejected by the
    guard (with the error a user reads), or applied. Shared by single edits and batches."""
    result.collapse_risk = bool(result.collapse_reasons)
    if dry_run:
        result.status = "dry-run"
    elif result.collapse_risk and not allow_collapse:
        result.status = "rejected"
        result.error = "collapse risk: " + "; ".join(result.collapse_reasons) + " (override to apply)"
    else:
        result.status = "applied"
