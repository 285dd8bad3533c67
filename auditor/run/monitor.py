"""The sequence monitor: is the model still healthy after this many edits?

Yang et al., "The Butterfly Effect of Model Editing" (Findings of ACL 2024, arXiv 2402.09656)
show that models collapse under sequences of edits, often after a few hard ones, and that
perplexity on a fixed text warns of it cheaply; Gupta et al., "Model Editing at Scale leads to
Gradual and Catastrophic Forgetting" (2024, arXiv 2401.07453) show earlier edits being lost and
the edited matrix's norm growing along the way. After each edit :class:`Monitor` records, all
relative to the *base* model so that they do not depend on one model's scale:

* ``ppl_ratio``: reference perplexity (perplexity.py) / the base model's;
* ``retention``: share of the workspace's earlier applied edits that still hold (record/watch.py);
* ``watch_pass_rate``: share of the user's watched answers that still hold (record/watch.py);
* ``norm_ratio`` / ``cond_ratio``: Frobenius norm and condition number (s_max / s_min, from
  ``torch.linalg.svdvals``) of every edited matrix / the same of the base matrix (the largest
  over the edited matrices is the step's figure);
* ``trend``: least-squares slope per edit, over the last ``trend_window`` steps, of
  ``log(ppl_ratio)``, ``log(norm_ratio)``, ``log(cond_ratio)`` and ``retention``;
* ``cumulative_spill``: share of the sequence's watch bank (measure/watch_bank.py: 20 same-type
  swaps of its requests, seeded) moved to their new target since the sequence started
  (P(target_new) up by more than 0.25 or the greedy answer now the target's first token): the
  other subjects the edits dragged along, summed over the sequence (None when no watch bank was
  built: ``Monitor.watch``); ``cumulative_changed``: the share moved by the issue's wider rule
  (P up by more than 0.25 or the greedy answer changed at all), shown, not a threshold.
* ``ppl_jump`` / ``norm_jump``: the same perplexity / edited-matrix norm relative to the previous
  step's (the base's before the first step): a sudden jump in one edit, which the cumulative ratios
  only show once it has added up (issue 19). With one edit per step (the default) the previous step
  is the previous edit; a ROME step of N requests is compared with the step before it.

:class:`Thresholds` turns those into a verdict; the sequence runner (sequence.py) stops on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterable

import torch

from auditor.base import AuditorError
from auditor.measure.guard import above, below
from auditor.model.offload import read_param, restore_params, snapshot_params, write_param

if TYPE_CHECKING:
    from auditor.measure.watch_bank import WatchBank
    from auditor.model.requests import EditRequest
    from auditor.run.outcome import EditResult
    from auditor.run.workspace import Workspace

# figure name -> (Thresholds field, "max" | "min"): the figures a run can stop on
FIGURES: dict[str, tuple[str, str]] = {
    "ppl": ("max_ppl_ratio", "max"),
    "retention": ("min_retention", "min"),
    "watch": ("min_watch_pass_rate", "min"),
    "norm": ("max_norm_ratio", "max"),
    "cond": ("max_cond_ratio", "max"),
    "trend": ("max_ppl_trend", "max"),
    "spill": ("max_cumulative_spill", "max"),
    "ppl_jump": ("max_ppl_jump", "max"),
    "norm_jump": ("max_norm_jump", "max"),
}
# the step record's key that holds each figure's value
FIGURE_KEYS = {"ppl": "ppl_ratio", "retention": "retention", "watch": "watch_pass_rate",
               "norm": "norm_ratio", "cond": "cond_ratio", "trend": "ppl_trend",
               "spill": "cumulative_spill", "ppl_jump": "ppl_jump", "norm_jump": "norm_jump"}


class MonitorError(AuditorError, ValueError):
    """A bad threshold specification; ``str(e)`` is one line."""


@dataclass
class Thresholds:
    # Reference perplexity / the base model's. 20 healthy consistent ROME edits of the demo model
    # moved it by 1.6% (72.05 -> 73.20); the butterfly paper's collapses multiply it many times over.
    max_ppl_ratio: float = 1.25
    # Share of the earlier edits (those that held when made) whose new target still beats the true
    # one on the edit prompt. Healthy demo sequences lose the odd conflicting edit (4 known facts:
    # 2 of 3 kept, "capital of Germany is Paris" undoes "capital of France is Rome"); losing more
    # than half is the catastrophic forgetting of Gupta et al.
    min_retention: float = 0.5
    # Share of the user's watched answers that still hold: they "must not change", so all of them.
    min_watch_pass_rate: float = 1.0
    # ||W||_F / ||W_base||_F of the most changed edited matrix. Healthy demo edits add about 1% each
    # (4 known facts: 1.041); one collapsed (original-key) edit adds an update of norm ~200 to a
    # matrix of norm 171, i.e. about x1.5 on its own.
    max_norm_ratio: float = 1.35
    # cond(W) / cond(W_base) of the most changed edited matrix (a collapsed rank-one update of
    # huge norm inflates the largest singular value, hence the condition number). Healthy demo
    # edits: 1.04, 1.33, 1.38, 1.45 after 1-4 edits.
    max_cond_ratio: float = 5.0
    # Slope per edit of log(ppl_ratio) over the last `trend_window` steps: 0.02 = a sustained
    # 2% per edit, which crosses max_ppl_ratio within about a dozen edits.
    max_ppl_trend: float = 0.02
    trend_window: int = 5  # steps in the trend's least-squares fit (at least 3 are needed)
    # Share of the watch bank's 20 same-type swaps moved to their target since the sequence's start
    # (P(target_new) up by > 0.25 or the greedy answer became the target). One template-keyed
    # (joint) France -> Asia edit moves 16 of 20 countries to Asia at once (0.80); a specific edit
    # moves none (France -> Rome: 0.00, though it turns 5 to 11 of 20 watched capitals' answers
    # into " the": cumulative_changed 0.25-0.55, shown, not a threshold). Half the watched subjects
    # dragged to the edits' targets means the sequence rewrote the relation rather than the facts.
    max_cumulative_spill: float = 0.5
    # Per-edit jumps (relative to the previous step, not the base). Defaults, before a model is
    # calibrated (run/calibration.py): perplexity x1.2 in one edit (healthy demo edits move it by
    # 2% at most: 20 edits 72.05 -> 73.20), and the edited matrix's norm x1.25 in one edit (healthy
    # demo edits add about 1% each; the original-key collapse adds an update as large as W itself).
    max_ppl_jump: float = 1.2
    max_norm_jump: float = 1.25

    def value(self, figure: str) -> float:
        return float(getattr(self, FIGURES[figure][0]))

    def crossed(self, figure: str, value: float | None) -> bool:
        """Whether ``value`` is past the figure's limit; a NaN is (it is not known to be within it);
        None (not measured, e.g. no watchlist) is not."""
        if value is None:
            return False
        return beyond(float(value), self.value(figure), FIGURES[figure][1])

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def beyond(value: float, limit: float, kind: str) -> bool:
    """``value`` past ``limit`` (``kind`` "max": above it, "min": below it); a NaN is past every
    limit (measure/guard.py's comparisons, shared with the collapse guard)."""
    return above(value, limit) if kind == "max" else below(value, limit)


# figures whose threshold is a share (0..1); the others are ratios or slopes
_SHARES = {"retention", "watch", "spill"}


def parse_stop_on(text: str | None, thresholds: Thresholds | None = None) -> tuple[list[str], Thresholds]:
    """``"ppl,retention=0.5,norm"`` -> (figures to stop on, thresholds with the overrides).

    ``"all"`` (or None) stops on every figure with the defaults, ``"none"`` on nothing. Anything
    else must name at least one known figure; a threshold must be a finite number, not negative,
    at most 1 for a share (retention, watch) and above 0 for a ratio. A bad specification raises
    :class:`MonitorError` (one line): a monitor that silently watches nothing is worse than none.
    """
    th = thresholds or Thresholds()
    if text is None or text.strip() == "all":
        return list(FIGURES), th
    if text.strip() == "none":
        return [], th
    known = f"known: {', '.join(FIGURES)}, all, none"
    names = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise MonitorError(f"--stop-on {text!r}: an empty item; give figures separated by commas ({known})")
        name, eq, value = part.partition("=")
        name = name.strip()
        if name not in FIGURES:
            raise MonitorError(f"unknown --stop-on figure {name!r}; {known}")
        if eq:
            setattr(th, FIGURES[name][0], _threshold(name, value.strip()))
        names.append(name)
    return names, th


def _threshold(name: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise MonitorError(f"--stop-on {name}={value}: not a number") from None
    if not math.isfinite(x) or x < 0:
        raise MonitorError(f"--stop-on {name}={value}: a threshold must be a finite number, not negative")
    if name in _SHARES and x > 1:
        raise MonitorError(f"--stop-on {name}={value}: {name} is a share of answers, between 0 and 1")
    if name not in _SHARES and name != "trend" and x == 0:
        raise MonitorError(f"--stop-on {name}={value}: a ratio's threshold must be above 0")
    return x


def worst(values: Iterable[float], default: float = 1.0) -> float:
    """The largest value, NaN if any is NaN (Python's ``max`` keeps or drops a NaN by position)."""
    vals = list(values)
    if any(math.isnan(v) for v in vals):
        return math.nan
    return max(vals, default=default)


def slope(values: list[float]) -> float | None:
    """Least-squares slope per step of ``values`` (None with fewer than 3 points)."""
    ys = [v for v in values if v is not None and math.isfinite(v)]
    n = len(ys)
    if n < 3:
        return None
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx


@torch.no_grad()
def matrix_figures(weight: torch.Tensor) -> dict[str, float]:
    """Frobenius norm and condition number (s_max / s_min) of one matrix, in float32."""
    s = torch.linalg.svdvals(weight.detach().float())  # (min(m, n),) descending
    smin = float(s[-1])
    return {"norm": float(torch.linalg.matrix_norm(weight.detach().float())),
            "cond": float(s[0]) / smin if smin > 0 else math.inf}


@dataclass
class Monitor:
    """Measures a workspace after each edit against its base (one run of a sequence)."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    stop_on: list[str] = field(default_factory=lambda: list(FIGURES))
    run: str = ""  # the run's id, written into every entry it measures
    label: str = ""  # how the run is named in reports ("rome/consistent")
    thresholds_source: str = "defaults"  # "calibrated <fingerprint>" when they came from run/calibration.py
    ppl_base: float | None = None
    _base: dict[str, dict[str, float]] = field(default_factory=dict)  # param -> base norm, cond
    history: list[dict[str, Any]] = field(default_factory=list)  # the step figures so far
    watch_start: set[int] = field(default_factory=set)  # watched items that held when the run started
    watch_bank: "WatchBank | None" = None  # same-type swaps watched for cumulative spill (``watch``)

    def start(self, ws: "Workspace") -> None:
        """Measure the base's perplexity (edited matrices swapped back to base for the probe), and
        which watched answers hold now: only those can be broken by the run."""
        self.ppl_base = base_perplexity(ws)
        self.watch_start = set(_watch_now(ws)["holding"])
        if self.watch_bank is not None:
            self.watch_bank.start(ws.lm)

    def watch(self, ws: "Workspace", requests: list["EditRequest"]) -> None:
        """Build the watch bank for a sequence of ``requests`` (before :meth:`start`), from the
        editor's subject bank (the shipped one when the collateral audit is off)."""
        from auditor.measure.watch_bank import build
        from auditor.model.subject_bank import load_bank

        audit = ws.editor.collateral_audit()
        self.watch_bank = build(audit.bank if audit is not None else load_bank(), requests)

    def base_figures(self, ws: "Workspace", param: str) -> dict[str, float]:
        if param not in self._base:
            self._base[param] = matrix_figures(ws.base_tensor(param))
        return self._base[param]

    def measure(self, ws: "Workspace", result: "EditResult | None" = None) -> dict[str, Any]:
        """The monitored figures of the workspace's model as it is now (after ``result``)."""
        if self.ppl_base is None:
            self.start(ws)
        watch = (result.metrics.get("watch") if result is not None else None) or _watch_now(ws)
        ppl = ws.editor.perplexity()
        prev = self.history[-1] if self.history else None  # the previous step's figures (None: the base)
        matrices = {}
        for param in sorted(_active_params(ws) | set(_result_params(result))):
            base, now = self.base_figures(ws, param), matrix_figures(read_param(ws.lm.model, param))
            before = (prev or {}).get("matrices", {}).get(param, base)
            matrices[param] = {"norm_ratio": now["norm"] / base["norm"], "cond_ratio": now["cond"] / base["cond"],
                               "norm": now["norm"], "cond": now["cond"], "norm_jump": now["norm"] / before["norm"]}
        fig = {
            "run": self.run, "label": self.label,
            "ppl": ppl, "ppl_base": self.ppl_base, "ppl_ratio": ppl / self.ppl_base,
            "retention": watch.get("retention"), "watch_pass_rate": self._pass_rate(watch),
            "edits_lost": watch.get("edits_lost", []), "watch_failed": [f["item"] for f in watch.get("failed", [])],
            "norm_ratio": worst(m["norm_ratio"] for m in matrices.values()),
            "cond_ratio": worst(m["cond_ratio"] for m in matrices.values()),
            "matrices": matrices,
            "ppl_jump": ppl / (prev["ppl"] if prev else self.ppl_base),
            "norm_jump": worst(m["norm_jump"] for m in matrices.values()),
        }
        fig.update(self._spill(ws))
        fig["trend"] = self._trend(fig)
        fig["ppl_trend"] = fig["trend"]["ppl"]
        fig["crossed"] = self.crossed(fig)
        fig["thresholds"] = self.thresholds.to_dict()
        fig["thresholds_source"] = self.thresholds_source
        fig["stop_on"] = list(self.stop_on)
        return fig

    def _spill(self, ws: "Workspace") -> dict[str, Any]:
        if self.watch_bank is None or not self.watch_bank.started:
            return {"cumulative_spill": None}
        return self.watch_bank.spill(ws.lm)

    def _pass_rate(self, watch: dict[str, Any]) -> float | None:
        """Share of the watched answers that held at the start of the run and still hold."""
        if not self.watch_start:
            return None
        return len(self.watch_start & set(watch.get("holding", []))) / len(self.watch_start)

    def _trend(self, fig: dict[str, Any]) -> dict[str, float | None]:
        window = self.history[-(self.thresholds.trend_window - 1):] + [fig] if self.thresholds.trend_window > 1 else [fig]

        def logs(key: str) -> list[float]:
            return [math.log(f[key]) if f.get(key) and f[key] > 0 else float("nan") for f in window]

        return {"ppl": slope(logs("ppl_ratio")), "norm": slope(logs("norm_ratio")),
                "cond": slope(logs("cond_ratio")), "retention": slope([f.get("retention") for f in window])}

    def crossed(self, fig: dict[str, Any]) -> list[dict[str, Any]]:
        """Every threshold the figures cross: ``[{"figure", "value", "threshold", "stops", "reason"}]``."""
        out = []
        for name, (attr, kind) in FIGURES.items():
            value = fig.get(FIGURE_KEYS[name])
            if self.thresholds.crossed(name, value):
                limit = self.thresholds.value(name)
                out.append({"figure": name, "value": value, "threshold": limit, "stops": name in self.stop_on,
                            "reason": f"{FIGURE_KEYS[name]} {value:.4g} {'>' if kind == 'max' else '<'} {limit:g}"})
        return out

    def record(self, fig: dict[str, Any]) -> None:
        """Keep ``fig`` in the trend's history (steps that changed the model only)."""
        self.history.append(fig)

    def hook(self, ws: "Workspace", result: "EditResult") -> dict[str, Any]:
        """For ``Workspace.after_apply``: the figures go into the entry's metrics as ``monitor``."""
        return {"monitor": self.measure(ws, result)}


def _active_params(ws: "Workspace") -> set[str]:
    from auditor.record.ledger import entry_params

    return {p for e in ws.ledger.active() for p in entry_params(e)}


def _result_params(result: Any) -> list[str]:
    """The parameters an engine result changed (a batch's DeltaSet may span several layers)."""
    if result is None or result.delta is None:
        return []
    params = getattr(result.delta, "params", None)
    return list(params) if params is not None else [result.delta.param]


def _watch_now(ws: "Workspace") -> dict[str, Any]:
    from auditor.record.watch import check

    return check(ws)


@torch.no_grad()
def base_perplexity(ws: "Workspace") -> float:
    """Reference perplexity of the base model, measured on the workspace's model with every edited
    matrix temporarily set back to its base tensor (restored bit for bit afterwards)."""
    if ws.fingerprint == ws.base_fingerprint:
        return ws.editor.perplexity()
    params = sorted(_active_params(ws))
    saved = snapshot_params(ws.lm.model, params)  # offloaded weights: read from their store
    try:
        for p in params:
            write_param(ws.lm.model, p, ws.base_tensor(p))
        return ws.editor.ppl.compute()
    finally:
        restore_params(ws.lm.model, saved)


def threshold_fields() -> list[str]:
    return [f.name for f in fields(Thresholds)]
