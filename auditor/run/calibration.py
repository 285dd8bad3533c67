"""Thresholds calibrated per model: every guard and monitor limit set at a stated false-alarm rate.

The defaults of :class:`~auditor.measure.guard.CollapseGuard` and
:class:`~auditor.run.monitor.Thresholds` were fitted to a few demo runs; on another model they mean
something else. :func:`calibrate` runs, on the model as it is, edits that must not alarm:

* no-op edits: each request's prompt edited to the model's own greedy answer (the edit changes no
  fact; what it moves is the method's own noise);
* healthy edits: the requests as given (by default the shipped
  ``resources/demo/calibration_counterfact.json``, :data:`DEFAULT_REQUESTS`: ten CounterFact records
  held out from every request file the tests and benches edit; counterfactual edits move a model
  more than re-asserting known facts does, so limits set on known facts stopped a healthy
  CounterFact run, issue 19), ROME in ``consistent`` key mode,

one after another, as a sequence would, measuring after each the guard's figures (|u.k*|, the
edit's perplexity ratio, the collateral audit's preservation cost) and the monitor's (perplexity,
the edited matrix's norm and condition number, their jumps from the previous edit, the trend),
then puts the weights back bit for bit.

How a threshold is set (the rate is per run of ``horizon`` edits, default 1% per 100 edits):

* per-edit figures (checked after every edit: the guard's, ``ppl_jump``, ``norm_jump``, ``trend``)
  must stay quiet over the whole run, so each edit may alarm with probability
  ``a = 1 - (1 - rate) ** (1 / horizon)`` (1e-4 for 1% per 100 edits). Twenty samples cannot show
  a 1e-4 quantile, so the tail is modelled: above the sample median ``m`` the excesses are taken as
  exponential with mean ``b`` (their sample mean, the maximum-likelihood estimate), so
  ``P(X > m + t) = 0.5 exp(-t / b)`` and the limit is ``m + b ln(0.5 / a)`` (``m - b ln(0.5 / a)``
  for a lower limit). Ratios and positive figures are taken in log space (a jump of x1.02 is 0.0198).
  A limit is never tighter than the worst healthy value seen.
* cumulative figures (``ppl_ratio``, ``norm_ratio``, ``cond_ratio``: relative to the base) grow along a
  run: their log is the sum of the per-edit log jumps, so after ``H = horizon`` healthy edits it is
  about normal (central limit) around ``H * mu``, mu and sigma the mean and deviation of the ``n``
  healthy calibration edits' log jumps. mu itself is known only from ``n`` edits, and the jumps are
  right-skewed (most requests move the norm by 0.1-0.4%, some by 2%): its upper (1 - rate) bound
  ``mu_up`` is the larger of the normal one, ``mu + z sigma / sqrt(n)``, and the exponential one on
  the positive parts, ``2 sum / chi2_rate(2n)`` (2.4 x their mean for n = 10). The limit is
  ``exp(H * mu_up + z * sigma * sqrt(H))``, ``z`` the normal quantile of ``1 - rate``.

Not calibrated (kept at their defaults, and said so in the file): figures that are shares with a
meaning of their own (retention, the watchlist's pass rate, the collateral audit's spill rate: a
discrete count of moved subjects), the batch-only ``max_update_ratio`` (calibration edits are ROME's),
and ``min_denominator_ratio`` (1 by construction in the consistent mode the calibration uses).

Stored per model fingerprint as ``cache_dir()/calibration/<fingerprint>.json`` (a workspace is
calibrated for its base model's fingerprint); :func:`thresholds_for` gives the guard and monitor
thresholds to use and their source (``"calibrated <fingerprint>"`` or ``"defaults"``), which every
verdict records.

Example::

    cal = calibrate(Editor(lm), load_requests(resource_path(DEFAULT_REQUESTS)), n_noop=10)
    save(cal)
    guard, thresholds, source = thresholds_for(fingerprint_model(lm.model))
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from auditor.base import AuditorError, Progress
from auditor.files import ReadError, atomic_file, check_output, read_regular
from auditor.measure.guard import CollapseGuard
from auditor.model.offload import read_param, restore_params, snapshot_params
from auditor.run.monitor import Monitor, Thresholds, matrix_figures, parse_stop_on, slope

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel
    from auditor.model.requests import EditRequest
    from auditor.run.edit import Editor

FORMAT = 1
DEFAULT_RATE = 0.01  # false alarms per run of DEFAULT_HORIZON healthy edits
DEFAULT_HORIZON = 100  # edits in the run the rate is stated for
MIN_SAMPLES = 3  # fewer than this: the figure keeps its default
LOG_FLOOR = 1e-3  # smallest tail scale in log space (a jump of 0.1%): identical samples give no scale
TREND_FLOOR = 1e-4  # the same for the trend (a slope of log perplexity per edit)

# The healthy edits calibrate() runs when none are given (a resource path, model/resources.py).
DEFAULT_REQUESTS = "demo/calibration_counterfact.json"

# figure -> (where the limit goes: "guard" | "monitor", its field, "max" | "min", log space, rule)
FIGURES: dict[str, tuple[str, str, str, bool, str]] = {
    "denominator": ("guard", "min_denominator", "min", True, "tail"),
    "edit_ppl_ratio": ("guard", "max_ppl_ratio", "max", True, "tail"),
    "preservation_cost": ("guard", "max_preservation_cost", "max", True, "tail"),
    "ppl_jump": ("monitor", "max_ppl_jump", "max", True, "tail"),
    "norm_jump": ("monitor", "max_norm_jump", "max", True, "tail"),
    "ppl_trend": ("monitor", "max_ppl_trend", "max", False, "tail"),
    "ppl_ratio": ("monitor", "max_ppl_ratio", "max", True, "horizon"),
    "norm_ratio": ("monitor", "max_norm_ratio", "max", True, "horizon"),
    "cond_ratio": ("monitor", "max_cond_ratio", "max", True, "horizon"),
}
# The loosest limit a calibration may set, per field: a few samples make the rules above honest but
# wide (3 healthy edits extrapolated to 100 can give a norm limit of 1e40), and a limit nothing can
# reach switches the check off without saying so. Past these a model is broken whatever its
# calibration says (perplexity tripled, the edited matrix's norm x5, the ROME denominator in
# the collapse paper's range, 0.01-0.04); a limit cut here is recorded with ``"capped"``.
LOOSEST: dict[str, float] = {
    "guard.min_denominator": 0.05, "guard.max_ppl_ratio": 3.0, "guard.max_preservation_cost": 0.25,
    "monitor.max_ppl_jump": 2.0, "monitor.max_norm_jump": 2.0, "monitor.max_ppl_trend": 0.1,
    "monitor.max_ppl_ratio": 3.0, "monitor.max_norm_ratio": 5.0, "monitor.max_cond_ratio": 20.0,
}
# The tightest limit a calibration may set, per field: 20 healthy edits cannot show a tail that one
# edit in 45 reaches (bench run B: the calibrated 1.0143 refused a healthy CounterFact edit whose
# perplexity rose 3.4%). Inside these a figure is ordinary edit-to-edit noise on the demo; the
# collapse stays far outside them (ppl_jump 1.118, norm_jump 1.544, denominator 0.087). A limit
# moved out to here is recorded with ``"widened"``.
TIGHTEST: dict[str, float] = {
    "guard.min_denominator": 1.0, "guard.max_ppl_ratio": 1.05, "guard.max_preservation_cost": 0.03,
    "monitor.max_ppl_jump": 1.05, "monitor.max_norm_jump": 1.1, "monitor.max_ppl_trend": 0.005,
    "monitor.max_ppl_ratio": 1.1, "monitor.max_norm_ratio": 1.25, "monitor.max_cond_ratio": 2.0,
}
# the per-edit jump whose log increments drive each cumulative figure
HORIZON_FROM = {"ppl_ratio": "ppl_jump", "norm_ratio": "norm_jump", "cond_ratio": "cond_jump"}
NOT_CALIBRATED = {
    "guard.min_denominator_ratio": "1 by construction in the consistent key mode the calibration edits use",
    "guard.max_update_ratio": "a batch (MEMIT, AlphaEdit) figure; the calibration edits are ROME's",
    "guard.max_spill_rate": "a share of moved subjects (a count out of 20), not a noisy figure",
    "monitor.min_retention": "a share of earlier edits with a meaning of its own (more than half lost)",
    "monitor.min_watch_pass_rate": "the watched answers must not change: all of them",
}


class CalibrationError(AuditorError, ValueError):
    """A calibration cannot be made or read; ``str(e)`` is one line."""


@dataclass
class Calibration:
    fingerprint: str  # of the model calibrated (a workspace: its base model)
    rate: float = DEFAULT_RATE
    horizon: int = DEFAULT_HORIZON
    guard: dict[str, float] = field(default_factory=dict)  # CollapseGuard field -> calibrated limit
    monitor: dict[str, float] = field(default_factory=dict)  # Thresholds field -> calibrated limit
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # figure -> its samples' summary and rule
    samples: dict[str, list[float]] = field(default_factory=dict)  # figure -> the values measured
    drift: dict[str, list[float]] = field(default_factory=dict)  # the healthy edits' jumps (cumulative figures)
    edits: dict[str, Any] = field(default_factory=dict)  # what was run: counts, requests, hparams
    not_calibrated: dict[str, str] = field(default_factory=lambda: dict(NOT_CALIBRATED))
    created: str = ""
    seconds: float = 0.0
    format: int = FORMAT

    @property
    def source(self) -> str:
        return f"calibrated {self.fingerprint}"

    def collapse_guard(self) -> CollapseGuard:
        return dataclasses.replace(CollapseGuard(), **self.guard)

    def thresholds(self) -> Thresholds:
        return dataclasses.replace(Thresholds(), **self.monitor)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != FORMAT or "fingerprint" not in data:
            raise CalibrationError("not a calibration file of this version (format 1, with a fingerprint)")
        known = {f.name for f in dataclasses.fields(cls)}
        cal = cls(**{k: v for k, v in data.items() if k in known})
        guard_fields = {f.name for f in dataclasses.fields(CollapseGuard)}
        monitor_fields = {f.name for f in dataclasses.fields(Thresholds)}
        for name, value in [*cal.guard.items(), *cal.monitor.items()]:
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise CalibrationError(f"threshold {name}: {value!r} is not a finite number")
        if set(cal.guard) - guard_fields or set(cal.monitor) - monitor_fields:
            raise CalibrationError(f"unknown thresholds: {sorted((set(cal.guard) - guard_fields) | (set(cal.monitor) - monitor_fields))}")
        return cal


# ---------------------------------------------------------------- the rule


def per_edit_rate(rate: float, horizon: int) -> float:
    """The chance each edit may alarm so that a run of ``horizon`` edits alarms with ``rate``."""
    if not 0 < rate < 1 or horizon < 1:
        raise CalibrationError(f"the false-alarm rate must be between 0 and 1 (got {rate}) and the horizon at least 1 edit")
    return -math.expm1(math.log1p(-rate) / horizon)


def tail_limit(values: list[float], alpha: float, kind: str = "max", *, log: bool = False,
               floor: float = LOG_FLOOR) -> dict[str, Any]:
    """The exponential-tail limit crossed by a healthy value with probability ``alpha``.

    Above (``kind="max"``) or below (``"min"``) the median ``m`` the excesses are modelled as
    exponential with mean ``b`` = their sample mean (at least ``floor``):
    limit = m +/- b ln(0.5 / alpha), and never inside the worst value seen. ``log``: in log space.
    """
    raw = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    xs = [math.log(v) for v in raw] if log else raw
    if len(xs) < MIN_SAMPLES:
        raise CalibrationError(f"{len(xs)} usable samples; at least {MIN_SAMPLES} are needed")
    sign = 1.0 if kind == "max" else -1.0
    m = statistics.median(xs)
    excess = [sign * (x - m) for x in xs if sign * (x - m) > 0]
    b = max(statistics.fmean(excess) if excess else 0.0, floor)
    back = _exp if log else (lambda x: x)
    limit = back(m + sign * b * math.log(0.5 / alpha))
    worst = max(raw) if kind == "max" else min(raw)
    limit = max(limit, worst) if kind == "max" else min(limit, worst)
    return {"threshold": limit, "rule": "tail", "n": len(xs), "median": back(m), "scale": b,
            "worst_seen": worst, "alpha": alpha, "log": log}


def _exp(x: float) -> float:
    """exp that is inf past the float range instead of raising OverflowError: a limit fitted from
    wild samples (a random tiny model's edits move its matrix x10) is then capped like any other
    limit past its loosest bound, instead of failing the calibration."""
    return math.exp(x) if x < 709.0 else math.inf


def horizon_limit(jumps: list[float], rate: float, horizon: int, *, floor: float = LOG_FLOOR) -> dict[str, Any]:
    """The limit on a cumulative ratio after ``horizon`` edits whose per-edit ratios are like ``jumps``:
    ``exp(H mu_up + z sigma sqrt(H))``, sigma the deviation of log(jumps), z = Phi^-1(1 - rate) and
    mu_up an upper (1 - rate) bound on their mean: the larger of the normal one, mu + z sigma / sqrt(n),
    and the exponential one on the mean of the positive parts (see :func:`exponential_mean_bound`)."""
    logs = [math.log(v) for v in jumps if v is not None and math.isfinite(v) and v > 0]
    if len(logs) < MIN_SAMPLES:
        raise CalibrationError(f"{len(logs)} usable samples; at least {MIN_SAMPLES} are needed")
    n = len(logs)
    mu, sigma = statistics.fmean(logs), max(statistics.stdev(logs), floor)
    z = statistics.NormalDist().inv_cdf(1 - rate)
    normal = mu + z * sigma / math.sqrt(n)
    skewed = exponential_mean_bound([max(x, 0.0) for x in logs], rate)
    mu_up = max(normal, skewed)
    return {"threshold": _exp(max(horizon * mu_up, 0.0) + z * sigma * math.sqrt(horizon)), "rule": "horizon",
            "n": n, "mu": mu, "mu_upper": mu_up, "mu_bound": "exponential" if skewed > normal else "normal",
            "sigma": sigma, "z": z, "horizon": horizon}


def exponential_mean_bound(xs: list[float], rate: float) -> float:
    """An upper (1 - rate) confidence bound on the mean of non-negative ``xs`` modelled as exponential
    (the per-edit tail rule's model): ``2 sum(xs) / chi2_rate(2n)`` (the sum of n exponentials is a
    gamma; Wilson-Hilferty's chi-square quantile). A few edits of a right-skewed figure (one request's
    update far larger than the others') put the normal bound under the mean: run C's ten calibration
    edits grew the norm 0.22% each on average, the run's first 44 edits 0.44% (issue 19)."""
    n = len(xs)
    k = 2 * n
    zp = statistics.NormalDist().inv_cdf(rate)
    chi2 = k * max(1 - 2 / (9 * k) + zp * math.sqrt(2 / (9 * k)), 1e-3) ** 3
    return 2 * sum(xs) / chi2


def limits(samples: dict[str, list[float]], drift: dict[str, list[float]] | None = None, rate: float = DEFAULT_RATE,
           horizon: int = DEFAULT_HORIZON) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, Any]]]:
    """(guard limits, monitor limits, per figure: the rule's record) from the per-edit ``samples`` and
    the healthy edits' jumps ``drift`` (``ppl_jump``, ``norm_jump``, ``cond_jump``: the cumulative
    figures' growth; default: ``samples``); a figure with too few samples keeps its default
    (recorded with ``"rule": "default"`` and why)."""
    drift = samples if drift is None else drift
    alpha = per_edit_rate(rate, horizon)
    guard: dict[str, float] = {}
    monitor: dict[str, float] = {}
    figures: dict[str, dict[str, Any]] = {}
    for name, (where, attr, kind, log, rule) in FIGURES.items():
        try:
            if rule == "tail":
                rec = tail_limit(samples.get(name, []), alpha, kind, log=log,
                                 floor=LOG_FLOOR if log else TREND_FLOOR)
            else:
                rec = horizon_limit(drift.get(HORIZON_FROM[name], []), rate, horizon)
        except CalibrationError as e:
            figures[name] = {"rule": "default", "why": str(e), "field": f"{where}.{attr}"}
            continue
        field = f"{where}.{attr}"
        bound = LOOSEST[field]
        if not math.isfinite(rec["threshold"]) or (rec["threshold"] > bound if kind == "max" else rec["threshold"] < bound):
            rec = {**rec, "capped": {"fitted": rec["threshold"], "loosest": bound}, "threshold": bound}
        near = TIGHTEST[field]
        if rec["threshold"] < near if kind == "max" else rec["threshold"] > near:
            rec = {**rec, "widened": {"fitted": rec["threshold"], "tightest": near}, "threshold": near}
        figures[name] = {**rec, "field": field, "kind": kind}
        (guard if where == "guard" else monitor)[attr] = rec["threshold"]
    _trend_above_one_jump(monitor, figures)
    return guard, monitor, figures


def one_jump_slope(window: int) -> float:
    """The steepest least-squares slope per edit that a single step of 1 makes in a trend window of
    ``window`` points (monitor.slope): 0.3 for the default 5 (the step at the 3rd or 4th point)."""
    centre = (window - 1) / 2
    sxx = sum((x - centre) ** 2 for x in range(window))
    return max(sum(x - centre for x in range(p, window)) / sxx for p in range(1, window))


def _trend_above_one_jump(monitor: dict[str, float], figures: dict[str, dict[str, Any]]) -> None:
    """The perplexity trend watches sustained drift; one edit's jump is the per-edit limit's to judge.
    A trend limit under the slope that one jump *inside* the per-edit limit makes in the trend's
    window would stop a run for that one healthy edit: a 3.4% jump (ppl_jump 1.034, limit 1.05) in
    session 9's 100-edit run made a trend of 0.0093 against a fitted 0.0099; a 5% jump makes 0.0146.
    So the trend limit is at least that slope; a limit raised here is recorded with ``"one_jump"``."""
    if "max_ppl_trend" not in monitor or "max_ppl_jump" not in monitor:  # both calibrated, or neither moves
        return
    defaults = Thresholds()
    jump = monitor["max_ppl_jump"]
    floor = min(one_jump_slope(defaults.trend_window) * math.log(jump), LOOSEST["monitor.max_ppl_trend"])
    if monitor["max_ppl_trend"] < floor:
        fitted = monitor["max_ppl_trend"]
        monitor["max_ppl_trend"] = floor
        rec = figures.get("ppl_trend", {})
        figures["ppl_trend"] = {**rec, "threshold": floor,
                                "one_jump": {"fitted": fitted, "ppl_jump": jump, "window": defaults.trend_window}}


def refit(cal: Calibration) -> Calibration:
    """``cal`` with every limit set again from its stored samples by the rules as they are now (no
    edit is run); a calibration made before the healthy jumps were stored takes them as the last
    ``healthy`` samples (the healthy edits run after the no-op ones)."""
    drift = cal.drift
    if not drift:
        n = max(len(cal.edits.get("requests", [])) - sum(s.get("kind") == "healthy" for s in cal.edits.get("skipped", [])), 0)
        drift = {k: cal.samples.get(k, [])[-n:] if n else [] for k in HORIZON_FROM.values()}
    from auditor.record.hashing import utc_now

    guard, monitor, figures = limits(cal.samples, drift, cal.rate, cal.horizon)
    return dataclasses.replace(cal, guard=guard, monitor=monitor, figures=figures, drift=drift,
                               edits={**cal.edits, "refitted": utc_now()})


# ---------------------------------------------------------------- storage


def calibration_dir() -> Path:
    from auditor.model.checkpoint import cache_dir

    return cache_dir() / "calibration"


def calibration_path(fingerprint: str, directory: Path | None = None) -> Path:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in fingerprint)
    return (directory or calibration_dir()) / f"{name}.json"


def save(cal: Calibration, directory: Path | None = None) -> Path:
    """Write the calibration under its fingerprint (atomically; the folder is created)."""
    path = calibration_path(cal.fingerprint, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = check_output(path, what="calibration")
    with atomic_file(target, "w", what="calibration") as f:
        f.write(json.dumps(cal.to_dict(), indent=1, sort_keys=True))
    return target


def load(fingerprint: str, directory: Path | None = None) -> Calibration | None:
    """The stored calibration of ``fingerprint`` (None: not calibrated; a damaged file: CalibrationError)."""
    path = calibration_path(fingerprint, directory)
    try:
        raw = read_regular(path, limit=16 << 20, what="calibration", missing_ok=True)
    except ReadError as e:
        raise CalibrationError(str(e)) from None
    if raw is None:
        return None
    try:
        cal = Calibration.from_dict(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise CalibrationError(f"{path}: not a calibration file ({e}); run `edit-auditor calibrate` again") from None
    except CalibrationError as e:
        raise CalibrationError(f"{path}: {e}; run `edit-auditor calibrate` again") from None
    if cal.fingerprint != fingerprint:
        raise CalibrationError(f"{path}: holds the calibration of {cal.fingerprint}, not {fingerprint}")
    return cal


def thresholds_for(fingerprint: str | None, directory: Path | None = None) -> tuple[CollapseGuard, Thresholds, str]:
    """The guard and monitor thresholds for the model ``fingerprint`` and their source:
    ``"calibrated <fingerprint>"`` when a calibration is stored, else the defaults (``"defaults"``)."""
    cal = load(fingerprint, directory) if fingerprint else None
    if cal is None:
        return CollapseGuard(), Thresholds(), "defaults"
    return cal.collapse_guard(), cal.thresholds(), cal.source


def monitor_for(fingerprint: str | None, stop_on: str | None, directory: Path | None = None) -> Monitor:
    """A :class:`Monitor` with the thresholds for ``fingerprint`` (calibrated or the defaults), the
    ``--stop-on`` specification's figures and overrides on top; the source says which were overridden."""
    _guard, thresholds, source = thresholds_for(fingerprint, directory)
    names, thresholds = parse_stop_on(stop_on, thresholds)
    overridden = [p.partition("=")[0].strip() for p in (stop_on or "").split(",") if "=" in p]
    if overridden:
        source += f"; set by --stop-on: {', '.join(overridden)}"
    return Monitor(thresholds=thresholds, stop_on=names, thresholds_source=source)


# ---------------------------------------------------------------- the runs


def noop_request(lm: "LoadedModel", request: "EditRequest") -> "EditRequest | None":
    """``request`` with its new target set to the model's own greedy answer (None: no answer)."""
    from auditor.measure.default_probes import ANSWER_TOKENS, first_words
    from auditor.measure.metrics import greedy_answer

    answer = first_words(greedy_answer(lm, request.text, ANSWER_TOKENS))
    if not answer:
        return None
    return dataclasses.replace(request, target_new=answer, target_true=None,
                               case_id=f"noop-{request.case_id or request.subject}")


def calibrate(editor: "Editor", requests: list["EditRequest"], *, n_noop: int = 10, n_edits: int | None = None,
              rate: float = DEFAULT_RATE, horizon: int = DEFAULT_HORIZON, hparams: dict | None = None,
              fingerprint: str | None = None,
              progress: Callable[[Progress], None] | None = None,
              cancel: threading.Event | None = None) -> Calibration:
    """Run the no-op and healthy edits with ``editor`` on its model (weights restored bit for bit at
    the end) and set the limits (module docstring). ``fingerprint``: what the calibration is stored
    under (default: the model's as it is; a workspace passes its base's)."""
    from auditor.base import EditCancelled
    from auditor.model.checkpoint import fingerprint_model
    from auditor.record.hashing import utc_now
    from auditor.run.outcome import EditFailed

    per_edit_rate(rate, horizon)  # a bad rate fails before any work
    t0 = time.perf_counter()
    lm = editor.lm
    hp = editor.hparams(hparams)
    param = lm.spec.weight_name(hp.layer)
    snapshot = snapshot_params(lm.model, [param])  # offloaded weights: read from their store
    fp_start = fingerprint_model(lm.model)
    healthy = requests[: len(requests) if n_edits is None else n_edits]
    noops = [r for r in (noop_request(lm, q) for q in requests[:n_noop]) if r is not None]
    plan = [("noop", r) for r in noops] + [("healthy", r) for r in healthy]
    if len(plan) < MIN_SAMPLES:
        raise CalibrationError(f"{len(plan)} calibration edits; at least {MIN_SAMPLES} are needed")
    samples: dict[str, list[float]] = {k: [] for k in [*FIGURES, "cond_jump"]}
    healthy_jumps: dict[str, list[float]] = {"ppl_jump": [], "norm_jump": [], "cond_jump": []}
    skipped: list[dict[str, Any]] = []
    ppl_base = editor.perplexity()
    base = matrix_figures(read_param(lm.model, param))
    prev = {"ppl": ppl_base, **base}
    log_ppl: list[float] = []
    try:
        for i, (kind, request) in enumerate(plan):
            if cancel is not None and cancel.is_set():
                raise EditCancelled("the calibration was cancelled; the weights are unchanged")
            if progress:
                progress(Progress("calibrate", i, len(plan), message=f"{kind} edit {request.case_id or request.subject}"))
            try:
                with torch.enable_grad():
                    result = editor.edit(request, key_mode="consistent", hparams=hparams, allow_collapse=True,
                                         cancel=cancel)
            except EditFailed as e:
                skipped.append({"request": request.case_id or request.subject, "kind": kind, "error": str(e)})
                continue
            if result.status != "applied":
                skipped.append({"request": request.case_id or request.subject, "kind": kind,
                                "status": result.status, "error": result.error})
                continue
            now = {"ppl": editor.perplexity(), **matrix_figures(read_param(lm.model, param))}
            jumps = {"ppl_jump": now["ppl"] / prev["ppl"], "norm_jump": now["norm"] / prev["norm"],
                     "cond_jump": now["cond"] / prev["cond"]}
            prev = now
            trend = None  # over the healthy edits only: the no-op edits before them would flatten it
            if kind == "healthy":
                log_ppl.append(math.log(now["ppl"] / ppl_base))
                trend = slope(log_ppl[-Thresholds().trend_window:])
            d, m = result.diagnostics, result.metrics
            for name, value in (("denominator", abs(d["denominator"]) if d.get("denominator") is not None else None),
                                ("edit_ppl_ratio", m.get("ppl_ratio")),
                                ("preservation_cost", (m.get("collateral") or {}).get("preservation_cost")),
                                ("ppl_trend", trend), *jumps.items()):
                if value is not None:
                    samples[name].append(float(value))
            if kind == "healthy":
                for name, value in jumps.items():
                    healthy_jumps[name].append(value)
    finally:
        restore_params(lm.model, snapshot)  # in memory or in the offload store
        editor.invalidate()
    if fingerprint_model(lm.model) != fp_start:
        raise CalibrationError("the weights were not restored after the calibration edits")
    editor.invalidate(fp_start)
    # the cumulative figures' drift from the healthy edits only (no-op edits understate it)
    guard, monitor, figures = limits(samples, healthy_jumps, rate, horizon)
    return Calibration(
        fingerprint=fingerprint or fp_start, rate=rate, horizon=horizon, guard=guard, monitor=monitor,
        figures=figures, samples=samples, drift={k: [float(v) for v in vs] for k, vs in healthy_jumps.items()},
        edits={"noop": sum(k == "noop" for k, _ in plan), "healthy": len(healthy), "skipped": skipped,
               "requests": [r.case_id or r.subject for r in healthy], "layer": hp.layer, "key_mode": "consistent",
               "hparams": hparams or {}, "ppl_base": ppl_base},
        created=utc_now(), seconds=round(time.perf_counter() - t0, 1))

