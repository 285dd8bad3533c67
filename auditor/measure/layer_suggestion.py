"""The layer to edit, chosen from evidence: causal traces of known facts.

Meng et al. 2022 (sections 2-3) chose ROME's layer from causal tracing: the MLP outputs at the
subject's last token carry the fact in a band of middle layers, and the edit goes where restoring
them brings back the most of the answer's probability. :func:`suggest_layer` traces ``mlp``
restorations at the subject's last token of several facts (``resources/demo/known_facts.json``
by default, answer = the fact's true target) and averages, per layer, the *normalised* effect

    (P_restored - P_corrupted) / (P_clean - P_corrupted)

over the facts whose corruption lowers the answer's probability by at least ``MIN_GAP`` (the
others carry no signal). The suggestion is the layer of the largest mean effect; its range is the
contiguous band of layers around it whose effect is at least ``RANGE_FRACTION`` of the peak.

The suggestion and the traces behind it are cached on disk (``cache_dir()/trace``) under the
fingerprint of the weights and the tracing parameters, as the key statistics are (stats.py).
:func:`hparams_with_suggestion` makes it the default layer of a family without a
hyper-parameter file (``resources/hparams/<family>.json``): such a family starts from the
dataclass defaults with the suggested layer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from auditor.base import Progress
from auditor.engine.hparams import HParamsError, RomeHParams, check_hparams, family_file, load_hparams
from auditor.measure.trace import DEFAULT_SEED, NOISE_FACTOR, Trace, Tracer
from auditor.model.checkpoint import LoadedModel, cache_dir, fingerprint_model
from auditor.model.resources import ResourceMissing, resource_path, resources_dir

log = logging.getLogger(__name__)

MIN_GAP = 0.02  # facts whose P_clean - P_corrupted is smaller carry no signal and are left out
RANGE_FRACTION = 0.8  # the suggested range: layers whose mean effect is >= this share of the peak
SUGGESTION_SAMPLES = 5  # noise draws per probability for a suggestion (only 1 token x L layers per fact)
CACHE_VERSION = 1  # bump when the computation changes: old cache files are then ignored


def default_facts() -> list[dict[str, str]]:
    """Prompt, subject and answer of the shipped known facts."""
    raw = json.loads(resource_path("demo/known_facts.json").read_text(encoding="utf-8"))
    return [{"prompt": r["prompt"], "subject": r["subject"], "answer": r["target_true"]} for r in raw]


@dataclass
class LayerSuggestion:
    layer: int  # layer of the largest mean normalised MLP effect at the subject's last token
    low: int  # first layer of the band around it (effect >= RANGE_FRACTION x peak)
    high: int  # last layer of that band (inclusive)
    effect: list[float]  # (layers,) mean normalised effect over the facts used
    used: int  # facts with a signal (P_clean - P_corrupted >= MIN_GAP)
    facts: list[dict[str, Any]]  # per fact: prompt, subject, answer, probabilities, effect per layer
    samples: int  # noise draws behind each probability
    window: int  # MLP layers restored together
    fingerprint: str  # of the weights traced
    cached: bool = False  # read from the cache rather than computed
    file: str | None = None  # the cache file
    seconds: float = 0.0  # time to compute (0 when cached)
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"layer {self.layer} (range {self.low}-{self.high}) from causal traces of "
                f"{self.used}/{len(self.facts)} facts")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerSuggestion":
        return cls(**d)


def peak_band(effect: np.ndarray, fraction: float = RANGE_FRACTION) -> tuple[int, int, int]:
    """(argmax, low, high): the contiguous band around the peak with effect >= fraction x peak."""
    peak = int(np.argmax(effect))
    bar = fraction * effect[peak]
    low, high = peak, peak
    while low > 0 and effect[low - 1] >= bar:
        low -= 1
    while high < len(effect) - 1 and effect[high + 1] >= bar:
        high += 1
    return peak, low, high


def _fact_record(fact: dict[str, str], trace: Trace) -> dict[str, Any]:
    row = trace.effects[trace.subject_last]  # (layers,)
    gap = trace.clean_prob - trace.corrupted_prob
    return {
        **fact, "answer_token": trace.answer, "clean_prob": trace.clean_prob,
        "corrupted_prob": trace.corrupted_prob, "subject_last_token": trace.subject_last,
        "mlp_effect": row.tolist(), "used": bool(gap >= MIN_GAP),
        "normalised": ((row - trace.corrupted_prob) / gap).tolist() if gap >= MIN_GAP else None,
    }


def _cache_file(parts: dict[str, Any]) -> Path:
    key = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return cache_dir() / "trace" / f"layer-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def suggest_layer(
    lm: LoadedModel,
    facts: list[dict[str, str]] | None = None,
    *,
    samples: int = SUGGESTION_SAMPLES,
    fingerprint: str | None = None,
    use_cache: bool = True,
    progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
) -> LayerSuggestion:
    """The layer suggested by MLP causal traces of ``facts`` (dicts: prompt, subject, answer)."""
    import time

    facts = list(facts or default_facts())
    fingerprint = fingerprint or fingerprint_model(lm.model)
    tracer = Tracer(lm, samples=samples)
    parts = {"version": CACHE_VERSION, "fingerprint": fingerprint, "facts": facts, "samples": samples,
             "window": tracer.window, "seed": DEFAULT_SEED, "noise_factor": NOISE_FACTOR,
             "noise_source": tracer.noise_source}  # issue 19: the noise's std comes from the subjects
    file = _cache_file(parts)
    if use_cache and file.is_file():
        try:
            return LayerSuggestion.from_dict({**json.loads(file.read_text()), "cached": True, "file": str(file)})
        except (ValueError, TypeError):  # a damaged cache file is recomputed, never trusted
            log.warning("layer suggestion cache %s unreadable; recomputing", file)
    t0 = time.perf_counter()
    records = []
    for i, fact in enumerate(facts):
        if progress:
            progress(Progress("trace", i, len(facts), message=f"tracing {fact['subject']!r}"))
        prep = tracer.prepare(fact["prompt"], fact["subject"], fact.get("answer"))
        last = prep.subject_span[1] - 1
        trace = tracer.trace(prep.text, fact["subject"], kinds=("mlp",), tokens=[last], prep=prep,
                             cancel=cancel)["mlp"]
        records.append(_fact_record(fact, trace))
    used = [r["normalised"] for r in records if r["used"]]
    if used:
        effect = np.mean(used, axis=0)
    else:  # no fact carries a signal: fall back on the raw probabilities
        effect = np.mean([np.asarray(r["mlp_effect"]) - r["corrupted_prob"] for r in records], axis=0)
    layer, low, high = peak_band(effect)
    out = LayerSuggestion(layer=layer, low=low, high=high, effect=effect.tolist(), used=len(used),
                          facts=records, samples=samples, window=tracer.window, fingerprint=fingerprint,
                          file=str(file), seconds=time.perf_counter() - t0)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps({k: v for k, v in out.to_dict().items() if k not in ("cached", "file")}))
    tmp.replace(file)
    return out


def hparams_with_suggestion(
    lm: LoadedModel,
    overrides: dict[str, Any] | None = None,
    *,
    hparams_file: Path | None = None,
    fingerprint: Callable[[], str] | None = None,
) -> tuple[RomeHParams, LayerSuggestion | None]:
    """The family's hyper-parameters (``load_hparams``), or, for a family without a file, the
    dataclass defaults with the suggested layer (unless ``overrides`` names one), then ``overrides``.

    ``hparams_file`` is where the family's file is looked for (default: the shipped
    ``hparams/<family>.json``; tests point it at a missing file). When the shipped resources are
    missing altogether the error of ``resources_dir`` stands: never a silent default.
    ``fingerprint`` returns the current weights' fingerprint (called only when a suggestion is needed).
    """
    overrides = dict(overrides or {})
    if _has_family_file(lm, hparams_file):
        return load_hparams(lm.spec.family, overrides), None
    suggestion = None
    if overrides.get("layer") is None:
        suggestion = suggest_layer(lm, fingerprint=fingerprint() if fingerprint else None)
        overrides["layer"] = suggestion.layer
        log.info("no hyper-parameter file for the %s family: %s", lm.spec.family, suggestion.summary())
    hp = RomeHParams(**check_hparams(overrides))
    if hp.context_templates is not None and not all("{}" in t for t in hp.context_templates):
        raise HParamsError("every context template needs a '{}'")
    return hp, suggestion


def form_defaults(lm: LoadedModel, *, hparams_file: Path | None = None) -> tuple[dict[str, Any], bool]:
    """The values an edit form starts from, without tracing anything: the family's file and True,
    or, for a family without one, the dataclass defaults without a layer and False: the caller
    then asks for :func:`suggest_layer` (in a worker: it traces) and fills the layer from it."""
    if _has_family_file(lm, hparams_file):
        return load_hparams(lm.spec.family).to_dict(), True
    defaults = RomeHParams(layer=0).to_dict()
    del defaults["layer"]
    return defaults, False


def _has_family_file(lm: LoadedModel, hparams_file: Path | None) -> bool:
    """Whether the family's hyper-parameter file exists (``hparams_file``, default the shipped one)."""
    path = hparams_file if hparams_file is not None else _shipped_file(lm.spec.family)
    return path is not None and path.is_file()


def _shipped_file(family: str) -> Path | None:
    """The shipped file of ``family``; None when the resources are there but this family has none."""
    try:
        return family_file(family)
    except ResourceMissing:
        try:
            resources_dir()
        except ResourceMissing as e:
            raise HParamsError(f"no default hyper-parameters for the {family} family: {e}") from None
        return None
