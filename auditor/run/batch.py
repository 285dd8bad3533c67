"""A batch of edits end to end: check, compute (any method), apply, measure, guard, keep or restore.

``edit_batch(editor, requests, method="memit")`` is the many-request sibling of
:meth:`Editor.edit <auditor.run.edit.Editor.edit>`: the method (methods.py) returns one delta for the
whole batch (a :class:`~auditor.engine.deltas.DeltaSet` over its layers); it is applied with
``deltas.apply_delta``, every request is measured (efficacy, generalization, locality, ...), the
reference perplexity once, and the batch is kept (``applied``) or every touched matrix restored
bit for bit (``dry-run``, ``rejected``, cancelled, failed).

Bad batches are refused before anything is computed, naming the request: an empty batch, a
target that encodes to no tokens, one prompt asked for two different answers (no update can map
one key to two values). A failure while computing (a NaN, out of memory) raises
:class:`BatchFailed` naming the request whose v* failed; the weights are as they were.

The collapse guard uses signals that do not depend on one model's scale: the largest
``||Delta_l|| / ||W_l||`` over the edited layers and the perplexity ratio.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from auditor.base import AuditorError, EditCancelled, Progress
from auditor.engine import rome
from auditor.engine.alphaedit import key_memory_add
from auditor.engine.deltas import AnyDelta, DeltaSet, apply_delta
from auditor.engine.hparams import HParamsError
from auditor.engine.methods import V_BATCH, BatchError, MethodContext
from auditor.engine.registry import get_method
from auditor.measure.guard import batch_guard_reasons
from auditor.measure.perplexity import max_positions
from auditor.model.offload import restore_params, snapshot_params
from auditor.model.requests import EditRequest, check_context
from auditor.run.outcome import EditResult, collateral_fields, settle

if TYPE_CHECKING:
    from auditor.run.edit import Editor

BATCH_METRICS = ("efficacy", "target_prob", "generalization", "locality", "portability", "prefixed_efficacy",
                 "efficacy_before")


class BatchFailed(AuditorError, RuntimeError):
    """The batch could not be computed; the weights are as they were. ``index``: the request."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass
class BatchResult:
    requests: list[EditRequest]
    method: str
    layers: list[int]
    hparams: dict
    delta: AnyDelta | None
    diagnostics: dict  # {"layers": [per-layer: update_norm, weight_norm, update_ratio, condition, ...]}
    per_request: list[dict]  # per request: its metrics and v* details
    metrics: dict  # means over the requests, plus ppl_before, ppl_after, ppl_ratio
    timings: dict
    collapse_risk: bool
    collapse_reasons: list[str]
    status: str  # "applied" | "dry-run" | "rejected" | "failed"
    error: str | None
    device: str
    dtype: str
    fingerprint_before: str
    fingerprint_after: str
    vectors: dict = field(default_factory=dict, repr=False)  # the method's tensors (tests)

    @property
    def params(self) -> list[str]:
        return list(self.delta.params) if self.delta is not None else []

    def records(self, batch: int | None = None) -> list[dict[str, Any]]:
        """One flat JSON line per request (the keys of ``EditResult.record``, plus ``batch``)."""
        out = []
        for i, req in enumerate(self.requests):
            per = self.per_request[i] if i < len(self.per_request) else {}
            one = EditResult(
                request=req, method=self.method, key_mode="consistent", layer=self.layers[-1] if self.layers else None,
                hparams=self.hparams, delta=None, diagnostics={**self.summary_diagnostics(), **per},
                metrics={**{k: self.metrics.get(k) for k in ("ppl_before", "ppl_after", "ppl_ratio", "collateral")},
                         **per},
                timings=self.timings, collapse_risk=self.collapse_risk, collapse_reasons=self.collapse_reasons,
                status=self.status, error=self.error, device=self.device, dtype=self.dtype,
                fingerprint_before=self.fingerprint_before, fingerprint_after=self.fingerprint_after,
            ).record()
            one.update({"layers": self.layers, "batch": batch, "batch_index": i, "batch_size": len(self.requests),
                        "delta_hash": self.delta.content_hash() if self.delta is not None else None,
                        "seconds": self.timings.get("total", 0.0) / max(len(self.requests), 1)})
            out.append(one)
        return out

    def summary_diagnostics(self) -> dict:
        layers = self.diagnostics.get("layers") or []
        return {"update_norm": sum(d["update_norm"] ** 2 for d in layers) ** 0.5 if layers else None,
                "weight_norm": sum(d["weight_norm"] ** 2 for d in layers) ** 0.5 if layers else None}

    def summary(self, batch: int | None = None) -> dict[str, Any]:
        """The batch's summary line (``"summary": "batch"``)."""
        layers = self.diagnostics.get("layers") or []
        return {
            "summary": "batch", "batch": batch, "method": self.method, "status": self.status, "error": self.error,
            "n_requests": len(self.requests), "case_ids": [r.case_id for r in self.requests], "layers": self.layers,
            **{k: self.metrics.get(k) for k in (*BATCH_METRICS, "ppl_before", "ppl_after", "ppl_ratio")},
            "update_ratio_max": max((d["update_ratio"] for d in layers), default=None),
            "condition_max": max((d.get("condition", 0.0) for d in layers), default=None),
            "layer_diagnostics": layers,
            **collateral_fields(self.metrics.get("collateral")),
            "collapse_risk": self.collapse_risk, "collapse_reasons": self.collapse_reasons,
            "seconds": self.timings.get("total"), "timings": self.timings,
            "device": self.device, "dtype": self.dtype,
            "fingerprint_before": self.fingerprint_before, "fingerprint_after": self.fingerprint_after,
            "delta_hash": self.delta.content_hash() if self.delta is not None else None,
        }


def check_batch(lm: Any, requests: list[EditRequest]) -> None:
    """Refuse a batch that cannot be edited, naming the request (nothing computed yet)."""
    if not requests:
        raise BatchFailed("the batch holds no requests")
    check_context(requests, lm.tokenizer, max_positions(lm.model.config))
    seen: dict[str, tuple[int, str]] = {}
    for i, req in enumerate(requests):
        where = f"request {i + 1} ({req.label})"
        try:
            rome.encode_target(lm, req.target_new)
        except rome.RomeError as e:
            raise BatchFailed(f"{where}: {e}", i) from None
        key = req.text.strip()
        if key in seen and seen[key][1] != req.target_new.strip():
            j = seen[key][0]
            raise BatchFailed(
                f"{where}: asks {req.text!r} for {req.target_new!r}, but request {j + 1} asks the same prompt for "
                f"{seen[key][1]!r}; one update cannot give two answers (split them into separate batches)", i)
        seen.setdefault(key, (i, req.target_new.strip()))


def edit_batch(
    editor: "Editor",
    requests: list[EditRequest],
    *,
    method: str = "memit",
    hparams: dict | None = None,
    key_mode: str = "consistent",
    dry_run: bool = False,
    allow_collapse: bool = False,
    measure_ppl: bool = True,
    progress: Callable[["Progress"], None] | None = None,
    cancel: threading.Event | None = None,
) -> BatchResult:
    """Compute, apply and measure one batch; see the module docstring for what is kept.

    Raises :class:`BatchFailed` (bad request, numeric failure: weights unchanged),
    ``HParamsError`` and :class:`~auditor.run.edit.EditCancelled`.
    """
    lm = editor.lm
    impl = get_method(method)
    hp = impl.hparams(lm, hparams)
    if impl.max_batch is not None and len(requests) > impl.max_batch:
        raise BatchFailed(f"{method} edits at most {impl.max_batch} request(s) per update (got {len(requests)})")
    check_batch(lm, requests)
    emit = progress or (lambda _p: None)
    cancelled = cancel.is_set if cancel else (lambda: False)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    fp_before = editor.fingerprint()
    layers = impl.layers(hp)
    names = [lm.spec.weight_name(layer) for layer in layers]
    snapshot = snapshot_params(lm.model, names)  # offloaded: read from its store
    result = BatchResult(
        requests=list(requests), method=method, layers=layers, hparams=hp.to_dict(), delta=None,
        diagnostics=editor.thresholds_record(), per_request=[], metrics={}, timings=timings, collapse_risk=False,
        collapse_reasons=[],
        status="failed", error=None, device=str(lm.device), dtype=str(lm.dtype).replace("torch.", ""),
        fingerprint_before=fp_before, fingerprint_after=fp_before,
    )
    applied = False
    try:
        t = time.perf_counter()
        C = {layer: editor.method_second_moment(hp, layer, emit, cancel) for layer in layers
             if hp.mom2_adjustment}
        timings["stats"] = time.perf_counter() - t
        templates = editor.context_templates(hp)
        result.hparams["context_templates"] = templates
        t = time.perf_counter()
        before = [editor._measure_before(r, False, emit) for r in requests]
        ppl_before = editor.perplexity() if measure_ppl else None
        timings["eval_before"] = time.perf_counter() - t
        current = {"i": 0}

        def on_request(i: int, n: int) -> None:  # the first request of a group optimised together
            current["i"] = i
            emit(Progress("v", 0, hp.v_num_grad_steps, message=f"{_group(i, n)}: v*"))

        def on_step(step: int, total: int, loss: float, prob: float, terms: dict) -> None:
            emit(Progress("v", step, total, loss=loss, target_prob=prob, terms=terms,
                          message=_group(current["i"], len(requests))))

        ctx = MethodContext(templates=templates, second_moment=lambda layer: C.get(layer),
                            key_memory=editor.key_memory, key_mode=key_mode, on_step=on_step,
                            on_request=on_request, cancelled=cancelled, held_out_keys=editor.held_out_keys,
                            stats_info=editor.method_stats_info)
        t = time.perf_counter()
        out = impl.compute(lm, requests, hp, ctx)
        timings["compute"] = time.perf_counter() - t
        result.delta, result.diagnostics, result.vectors = out.delta, out.diagnostics, out.vectors
        emit(Progress("update", message=f"applying the update to {len(out.delta.params)} matri(x/ces)"))
        _check_finite(out.delta)
        pending = editor.audit_prepare(requests, out.delta, {layer: C.get(layer) for layer in layers}, emit)
        apply_delta(lm.model, out.delta)
        applied = True
        editor.invalidate()
        if cancelled():
            raise rome.Cancelled
        t = time.perf_counter()
        emit(Progress("eval", message="edit quality"))
        result.per_request = [
            {**out.per_request[i], **editor._measure_after(r, _held_out(editor, hp, templates, r),
                                                           {**before[i], "ppl": None}, False, emit)}
            for i, r in enumerate(requests)]
        for per in result.per_request:
            for k in ("ppl_before", "ppl_after", "ppl_ratio"):
                per.pop(k, None)
        result.metrics = {k: _mean([p.get(k) for p in result.per_request]) for k in BATCH_METRICS}
        result.metrics["ppl_before"] = ppl_before
        if measure_ppl:
            emit(Progress("ppl", message="perplexity after"))
            result.metrics["ppl_after"] = editor.perplexity()
            result.metrics["ppl_ratio"] = result.metrics["ppl_after"] / ppl_before
        timings["eval"] = time.perf_counter() - t
        result.collapse_reasons = batch_guard_reasons(editor.guard, result.diagnostics,
                                                      result.metrics.get("ppl_ratio"))
        result.collapse_reasons += editor.audit_finish(pending, result, emit)
        if cancelled():
            raise rome.Cancelled
        settle(result, dry_run=dry_run, allow_collapse=allow_collapse)
    except (rome.Cancelled, InterruptedError):
        _restore(editor, snapshot, applied, fp_before)
        raise EditCancelled("the batch was cancelled; the weights are unchanged") from None
    except BatchError as e:
        _restore(editor, snapshot, applied, fp_before)
        raise BatchFailed(f"{e}; the weights are unchanged", e.index) from None
    except torch.OutOfMemoryError:
        _restore(editor, snapshot, applied, fp_before)
        raise BatchFailed(f"out of memory on {lm.device}; the weights are unchanged") from None
    except BaseException:
        _restore(editor, snapshot, applied, fp_before)
        raise
    if result.status != "applied":
        _restore(editor, snapshot, applied, fp_before)
    elif isinstance(result.delta, DeltaSet):
        key_memory_add(editor.key_memory, result.delta)
    result.fingerprint_after = editor.fingerprint()
    timings["total"] = time.perf_counter() - t_start
    return result


def _held_out(editor: "Editor", hp: Any, templates: list[str], request: EditRequest) -> list[str]:
    """Prefixes for ``prefixed_efficacy`` (first-token subjects only), as ``Editor.edit`` uses."""
    return editor.held_out_templates(hp, templates) if request.prompt.index("{}") == 0 else []


def _check_finite(delta: AnyDelta) -> None:
    for part in delta.parts_on(None):
        for t in (part.left, part.right, part.full):
            if t is not None and not torch.isfinite(t).all():
                raise BatchFailed(f"the update of {part.param} is not finite (NaN or inf); the weights are unchanged")


def _restore(editor: "Editor", snapshot: dict[str, torch.Tensor], applied: bool, fingerprint: str) -> None:
    """The edited matrices back bit for bit; the weights have ``fingerprint`` (taken with the
    snapshot) again, so it is not recomputed."""
    if applied:
        restore_params(editor.lm.model, snapshot)  # in memory or in the offload store
        editor.invalidate(fingerprint)


def _group(first: int, n: int) -> str:
    last = min(n, first + V_BATCH)
    return f"request {first + 1}/{n}" if last == first + 1 else f"requests {first + 1}-{last}/{n}"


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


__all__ = ["BatchFailed", "BatchResult", "HParamsError", "check_batch", "edit_batch"]
