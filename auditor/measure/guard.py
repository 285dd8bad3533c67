"""The collapse guard: the verdict on one edit or batch before it is kept.

A single ROME edit is flagged when its denominator ``|u . k*|`` (unit ``u``) or its ratio to the
consistent denominator falls too low, or when the reference perplexity rises too much (Yang et
al. 2024, arXiv 2406.11263 and 2402.09656); a batch (MEMIT, AlphaEdit) when the largest
``||Delta_l|| / ||W_l||`` or the perplexity ratio is too high. The defaults come from measurements
on the demo model (see :class:`CollapseGuard`). ``run.outcome.settle`` turns the reasons into a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class CollapseGuard:
    # The demo model's consistent-mode denominators are O(1-10) (see the issue notes of the
    # engine); collapse cases in the papers sit two orders of magnitude lower.
    min_denominator: float = 0.5
    # Single healthy edits move reference perplexity by a few percent at most; the butterfly
    # paper's collapses multiply it many times over.
    max_ppl_ratio: float = 1.5
    # Batches (MEMIT, AlphaEdit; batch.py): the largest ||Delta_l|| / ||W_l||, free of the model's
    # scale. On the demo model a healthy ROME edit moves W by ~5 % (8 / 171), the original-mode
    # collapse by ~118 % (202 / 171); healthy batches stay in the low per cent (issue-8 notes).
    max_update_ratio: float = 0.5

    # ROME, free of the model's scale: u . k* over the consistent denominator u . k_bar (1 in
    # consistent and joint mode). Demo: 0.93-0.98 for subjects inside the prompt, 0.03-0.04 for the
    # original-mode first-token collapse; tiny random models of GPT-2/GPT-J/NeoX/Llama: 0.27-1.0 with
    # no collapse (issue-10 notes). ||update|| / ||W|| is recorded for ROME edits but not thresholded
    # (max_update_ratio is for batches): tiny random models give 2-17 on edits that leave their
    # perplexity unchanged, because their W is small, not because the edit collapses.
    min_denominator_ratio: float = 0.2

    # The collateral audit (collateral.py), both free of the model's scale: the share of same-type
    # swaps an edit moved, and tr(Delta C Delta^T) / tr(W C W^T) at its worst layer.
    # Demo (docs/notes/session-5/issue-18.md): healthy ROME, MEMIT and AlphaEdit edits spill 0.00
    # and cost 0.0008-0.013; the joint-mode France -> Asia edit spills 0.95, the original-mode
    # first-token collapse 0.40 at a cost of 0.59.
    max_spill_rate: float = 0.2
    max_preservation_cost: float = 0.05

    def reasons(self, denominator: float | None, ppl_ratio: float | None, *,
                denominator_ratio: float | None = None) -> list[str]:
        out = []
        if denominator is not None and below(abs(denominator), self.min_denominator):
            out.append(f"|denominator| {abs(denominator):.4g} < {self.min_denominator:g}")
        if denominator_ratio is not None and below(abs(denominator_ratio), self.min_denominator_ratio):
            out.append(f"|denominator / consistent denominator| {abs(denominator_ratio):.4g} "
                       f"< {self.min_denominator_ratio:g}")
        if ppl_ratio is not None and above(ppl_ratio, self.max_ppl_ratio):
            out.append(f"perplexity ratio {ppl_ratio:.4g} > {self.max_ppl_ratio:g}")
        return out


def above(value: float, limit: float) -> bool:
    """``value > limit``, and True for a NaN: a figure that is not a number is never within a limit."""
    return not (value <= limit)


def below(value: float, limit: float) -> bool:
    """``value < limit``, and True for a NaN (see :func:`above`)."""
    return not (value >= limit)


def batch_guard_reasons(guard: Any, diagnostics: dict, ppl_ratio: float | None) -> list[str]:
    """Scale-free collapse signals: the largest ||Delta|| / ||W|| and the perplexity ratio (every
    layer is checked on its own, so a NaN on any layer is flagged wherever it sits)."""
    limit = guard.max_update_ratio
    out = []
    over = [(d["update_ratio"], d["layer"]) for d in diagnostics.get("layers", []) if above(d["update_ratio"], limit)]
    if over:
        r, layer = next((x for x in over if x[0] != x[0]), None) or max(over)
        out.append(f"update norm / weight norm {r:.4g} > {limit:g} at layer {layer}")
    if ppl_ratio is not None and above(ppl_ratio, guard.max_ppl_ratio):
        out.append(f"perplexity ratio {ppl_ratio:.4g} > {guard.max_ppl_ratio:g}")
    return out


def collateral_reasons(guard: Any, report: dict | None) -> list[str]:
    """The collateral audit's reasons: too many other subjects moved, or the layer output on ordinary
    text keys changed too much (``report``: ``CollateralAudit.finish``'s record; None: no audit)."""
    if not report:
        return []
    out = []
    spill = report.get("spill_rate")
    if spill is not None and spill > guard.max_spill_rate:
        moved = [r["subject"] for r in report.get("rows", []) if r.get("toward_target") and r["kind"] == "swap"]
        out.append(f"spill rate {spill:.3g} > {guard.max_spill_rate:g} (moved: {', '.join(moved[:5])}"
                   f"{', ...' if len(moved) > 5 else ''})")
    cost = report.get("preservation_cost")
    if cost is not None and cost > guard.max_preservation_cost:
        out.append(f"preservation cost {cost:.3g} > {guard.max_preservation_cost:g}")
    return out
