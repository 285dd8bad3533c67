"""One knowledge edit end to end: compute, apply, measure, guard, keep or restore.

:class:`Editor` owns a loaded model. ``Editor.edit(request)`` runs ROME (engine/rome.py)
with the key statistics (stats.py), applies the rank-one delta with
``deltas.apply_delta``, measures the edited model (metrics.py, perplexity.py),
and then either keeps the change (status ``applied``) or restores the edited
matrix bit for bit (``dry-run``, ``rejected`` by the collapse guard, cancelled,
failed). Progress goes to a callback as :class:`Progress` events, which the
window charts and the command line turns into a progress bar.

The collapse guard (``measure.guard.CollapseGuard``) flags an edit whose denominator
``|u . k*|`` (unit ``u``) falls below ``min_denominator`` or whose perplexity ratio exceeds
``max_ppl_ratio`` (Yang et al. 2024, arXiv 2406.11263 and 2402.09656); ``run.outcome.settle``
turns its reasons into the result's status.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

import torch

from auditor.base import EditCancelled, Progress, ProgressFn
from auditor.engine import rome
from auditor.engine.deltas import apply_delta
from auditor.engine.hparams import KEY_MODES, HParamsError, RomeHParams
from auditor.measure import metrics
from auditor.measure.collateral import CollateralAudit, CollateralConfig
from auditor.measure.guard import CollapseGuard, collateral_reasons
from auditor.model.checkpoint import LoadedModel, fingerprint_model
from auditor.model.offload import read_param, write_param
from auditor.model.requests import EditRequest
from auditor.run.outcome import EditFailed, EditResult, settle

log = logging.getLogger(__name__)

METHODS = ("rome",)
HELD_OUT_SEED = 1_000_003  # added to context_seed: the prefixes of prefixed_efficacy, never seen by v*
HELD_OUT_N = 5  # how many held-out prefixes prefixed_efficacy averages over


class Editor:
    """Applies and measures edits on one loaded model (one thread at a time)."""

    def __init__(self, lm: LoadedModel, *, guard: CollapseGuard | None = None, ppl: Any = None,
                 stats_text: Any = None):
        self.lm = lm
        self.guard = guard or CollapseGuard()
        # where the guard's thresholds come from (run/calibration.py): "given" (passed in), "defaults"
        # or "calibrated <fingerprint>"; None: looked up for the weights of the first edit
        self.thresholds_source: str | None = "given" if guard is not None else None
        self._ppl = ppl
        self._stats_text = stats_text
        self._templates: dict[tuple, list[str]] = {}
        self._C: dict[tuple, torch.Tensor] = {}
        self._C_conditioning: dict[tuple, dict] = {}  # (stats file, ridge) -> stats.conditioning(...)
        self._held_out: dict[tuple, torch.Tensor] = {}  # (layer, weights fingerprint) -> held-out keys
        self._C_info: dict = {}  # C's key, and layer (the C last used) -> tokens and spectrum (issue 19)
        self._fingerprint: str | None = None
        self._ppl_by_fp: dict[str, float] = {}  # perplexity of each weight state seen
        # AlphaEdit's running sum of earlier batches' K K^T per parameter (in, in) float64; a
        # workspace sets it from its ledger before each batch (batch.py adds each applied batch)
        self.key_memory: dict[str, torch.Tensor] = {}
        self.hparams_file: Any = None  # the family's hyper-parameter file (None: resources/hparams/<family>.json)
        self.layer_suggestion: Any = None  # the causal-trace suggestion used when that file is missing
        # the collateral audit of every edit and batch (measure/collateral.py); None: not audited
        self.collateral: CollateralConfig | None = CollateralConfig()
        self._audit: CollateralAudit | None = None

    # -------------------------------------------------------------- shared pieces

    @property
    def ppl(self):
        if self._ppl is None:
            from auditor.measure.perplexity import PerplexityProbe

            self._ppl = PerplexityProbe(self.lm)
        return self._ppl

    def hparams(self, overrides: dict | None = None) -> RomeHParams:
        """The family's hyper-parameters; without a family file the layer comes from causal tracing."""
        from auditor.measure.layer_suggestion import hparams_with_suggestion

        hp, suggestion = hparams_with_suggestion(self.lm, overrides, hparams_file=self.hparams_file,
                                                 fingerprint=self.fingerprint)
        self.layer_suggestion = suggestion or self.layer_suggestion
        if not 0 <= hp.layer < self.lm.n_layers:
            raise HParamsError(f"layer {hp.layer} is out of range: the model has {self.lm.n_layers} layers (0-{self.lm.n_layers - 1})")
        return hp

    def context_templates(self, hp: RomeHParams) -> list[str]:
        """Fixed templates from the hyper-parameters, or generated once per editor (seeded)."""
        if hp.context_templates:
            return list(hp.context_templates)
        key = (hp.context_n, hp.context_len, hp.context_seed, hp.context_style)
        if key not in self._templates:
            self._templates[key] = rome.generate_context_templates(self.lm, *key[:3], style=hp.context_style)
        return self._templates[key]

    def held_out_templates(self, hp: RomeHParams, used: list[str]) -> list[str]:
        """Prefixes ("... {}") from a seed the v* templates never use, minus any that ``used`` holds."""
        key = ("held-out", HELD_OUT_N, hp.context_len, hp.context_seed)
        if key not in self._templates:
            self._templates[key] = rome.generate_context_templates(
                self.lm, HELD_OUT_N, hp.context_len, hp.context_seed + HELD_OUT_SEED)[1:]
        return [t for t in self._templates[key] if t not in used]

    def second_moment(self, hp: RomeHParams, progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> tuple[torch.Tensor | None, dict]:
        if not hp.mom2_adjustment:
            return None, {"cached": None}
        from auditor.engine.stats import second_moment

        def on_tokens(done: int, total: int) -> None:
            if progress:
                progress(Progress("stats", done, total, message="key statistics"))

        C, info = second_moment(
            self.lm, hp.layer, text_path=self._stats_text, n_tokens=hp.mom2_n_tokens,
            seq_len=hp.mom2_seq_len, dtype=hp.mom2_dtype, progress=on_tokens,
            cancel=(cancel.is_set if cancel else None),
        )
        return C, {**info, **self._conditioning(C, info, hp.mom2_ridge)}

    def _conditioning(self, C: torch.Tensor, info: dict, ridge: float) -> dict:
        """Token count per key dimension and condition numbers of C (stats.conditioning), once per C."""
        from auditor.engine.stats import conditioning

        key = (info.get("file"), ridge)
        if key not in self._C_conditioning:
            tokens = info.get("tokens")
            self._C_conditioning[key] = {**conditioning(C, ridge),
                                         "tokens_per_dim": tokens / C.shape[0] if tokens else None}
        return self._C_conditioning[key]

    def method_second_moment(self, hp: RomeHParams, layer: int, progress: ProgressFn | None = None,
                             cancel: threading.Event | None = None) -> torch.Tensor:
        """C of ``layer`` for MEMIT / AlphaEdit: the preserved keys' statistics, kept while they
        edit down-projections (``stats.second_moment(..., ignore_edits=True)``), cached here."""
        from auditor.engine.stats import second_moment

        key = (layer, hp.mom2_n_tokens, hp.mom2_seq_len, hp.mom2_dtype)
        if key not in self._C:
            def on_tokens(done: int, total: int) -> None:
                if progress:
                    progress(Progress("stats", done, total, message=f"key statistics, layer {layer}"))

            self._C[key], info = second_moment(
                self.lm, layer, text_path=self._stats_text, n_tokens=hp.mom2_n_tokens, seq_len=hp.mom2_seq_len,
                dtype=hp.mom2_dtype, progress=on_tokens, cancel=(cancel.is_set if cancel else None),
                ignore_edits=True)
            cond = self._conditioning(self._C[key], info, 0.0)
            self._C_info[key] = {"tokens": info.get("tokens"), "tokens_per_dim": cond["tokens_per_dim"],
                                 "condition": cond["condition"], "eig_min": cond["eig_min"], "eig_max": cond["eig_max"]}
        self._C_info[layer] = self._C_info[key]  # the C this layer uses now
        return self._C[key]

    def method_stats_info(self, layer: int) -> dict:
        """Token count and spectrum (condition, extreme eigenvalues) of the C last loaded for ``layer``
        by :meth:`method_second_moment`; recorded in every MEMIT / AlphaEdit layer's diagnostics."""
        return dict(self._C_info.get(layer, {}))

    def held_out_keys(self, layer: int) -> torch.Tensor:
        """Held-out text keys of ``layer`` on the current weights (stats.held_out_keys), once per
        weight state: each batch's ``held_out_change`` is measured on them."""
        from auditor.engine.stats import held_out_keys

        fp = self.fingerprint()
        key = (layer, fp)
        if key not in self._held_out:
            # only the current weight state's keys are kept: each is d_ff x 2048 float64 per layer
            # (128 MiB for a 1B model's layer), and a batch moves the weights to a new state
            self._held_out = {k: v for k, v in self._held_out.items() if k[1] == fp}
            self._held_out[key] = held_out_keys(self.lm, layer)
        return self._held_out[key]

    def edit_batch(self, requests: list[EditRequest], **kwargs: Any) -> Any:
        """Many requests in one update (MEMIT, AlphaEdit): see :func:`auditor.run.batch.edit_batch`."""
        from auditor.run.batch import edit_batch

        return edit_batch(self, requests, **kwargs)

    def check_requests(self, requests: list[EditRequest]) -> None:
        """RequestError for a request whose prompts do not fit the model's context (see
        ``requests.check_context``); callers with many requests check them all before the first edit."""
        from auditor.measure.perplexity import max_positions
        from auditor.model.requests import check_context

        check_context(requests, self.lm.tokenizer, max_positions(self.lm.model.config))

    def collateral_audit(self) -> CollateralAudit | None:
        """The audit for ``self.collateral`` (its bank loaded once), or None when switched off."""
        if self.collateral is None:
            return None
        if self._audit is None or self._audit.config is not self.collateral:
            from auditor.model.subject_bank import load_bank

            bank = self._audit.bank if self._audit and self._audit.bank_file == self.collateral.bank else None
            self._audit = CollateralAudit(self.lm, bank or load_bank(self.collateral.bank), self.collateral)
        return self._audit

    def audit_prepare(self, requests: list[EditRequest], delta: Any, second_moments: dict,
                      emit: ProgressFn) -> Any:
        """The collateral audit's measurements on the unedited model (None when switched off)."""
        audit = self.collateral_audit()
        if audit is None:
            return None
        emit(Progress("audit", message="who else changed: before"))
        return audit, audit.prepare(requests, delta, second_moments)

    def audit_finish(self, pending: Any, result: Any, emit: ProgressFn) -> list[str]:
        """Score the audit on the edited model into ``result.metrics["collateral"]``; its guard reasons."""
        if pending is None:
            return []
        emit(Progress("audit", message="who else changed: after"))
        audit, before = pending
        report = audit.finish(before)
        result.metrics["collateral"] = report
        result.timings["audit"] = report["seconds"]
        return collateral_reasons(self.guard, report)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_model(self.lm.model)
        return self._fingerprint

    def perplexity(self) -> float:
        """Reference perplexity of the current weights (computed once per weight state)."""
        fp = self.fingerprint()
        if fp not in self._ppl_by_fp:
            self._ppl_by_fp[fp] = self.ppl.compute()
        return self._ppl_by_fp[fp]

    def use_calibration(self, fingerprint: str | None = None) -> str:
        """Take the guard from the calibration stored for the model ``fingerprint`` (default: the
        weights as they are now), or the defaults when there is none; returns the source."""
        from auditor.run.calibration import thresholds_for

        self.guard, _monitor, self.thresholds_source = thresholds_for(fingerprint or self.fingerprint())
        return self.thresholds_source

    def thresholds_record(self) -> dict[str, Any]:
        """What every verdict records: the guard's thresholds and their source."""
        if self.thresholds_source is None:
            self.use_calibration()
        return {"thresholds": dataclasses.asdict(self.guard), "thresholds_source": self.thresholds_source}

    def invalidate(self, fingerprint: str | None = None) -> None:
        """Call after changing the weights outside :meth:`edit` (revert, replay). ``fingerprint``:
        the weights' fingerprint when the caller knows it (weights restored bit for bit to a state
        whose fingerprint was taken), so it is not recomputed."""
        self._fingerprint = fingerprint

    # -------------------------------------------------------------- one edit

    def edit(
        self,
        request: EditRequest,
        *,
        method: str = "rome",
        key_mode: str = "consistent",
        hparams: dict | None = None,
        dry_run: bool = False,
        allow_collapse: bool = False,
        measure_ppl: bool = True,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> EditResult:
        """Compute, apply and measure one edit; see the module docstring for what is kept."""
        if method not in METHODS:
            raise EditFailed(f"unknown method {method!r}; available: {', '.join(METHODS)}")
        if key_mode not in KEY_MODES:
            raise EditFailed(f"unknown key mode {key_mode!r}; use {' or '.join(KEY_MODES)}")
        hp = self.hparams(hparams)
        self.check_requests([request])
        emit = progress or (lambda _p: None)
        cancelled = cancel.is_set if cancel else (lambda: False)
        t_start = time.perf_counter()
        fp_before = self.fingerprint()
        timings: dict[str, float] = {}
        result = EditResult(
            request=request, method=method, key_mode=key_mode, layer=hp.layer, hparams=hp.to_dict(),
            delta=None, diagnostics=self.thresholds_record(), metrics={}, timings=timings, collapse_risk=False,
            collapse_reasons=[], status="failed", error=None, device=str(self.lm.device),
            dtype=str(self.lm.dtype).replace("torch.", ""), fingerprint_before=fp_before,
            fingerprint_after=fp_before,
        )
        weight = self.lm.spec.weight_name(hp.layer)
        snapshot = read_param(self.lm.model, weight).clone()  # offloaded: read from its store
        applied = False
        try:
            t = time.perf_counter()
            C, stats_info = self.second_moment(hp, emit, cancel)
            timings["stats"] = time.perf_counter() - t
            templates = self.context_templates(hp)
            result.hparams["context_templates"] = templates
            result.diagnostics["stats"] = stats_info
            t = time.perf_counter()
            before = self._measure_before(request, measure_ppl, emit)
            timings["eval_before"] = time.perf_counter() - t
            emit(Progress("keys", message="keys and left vector"))

            def on_step(step, total, loss, prob, terms):
                emit(Progress("v", step, total, loss=loss, target_prob=prob, terms=terms))

            out = rome.compute_rome(self.lm, request, hp, key_mode, C, templates,
                                    on_step, cancelled)
            timings.update(out.timings)
            result.delta = out.delta
            result.vectors = {"v_star": out.v_star, "k_cur": out.k_cur, "u": out.delta.right}
            result.diagnostics.update(out.diagnostics)
            pending = self.audit_prepare([request], out.delta, {hp.layer: C}, emit)
            emit(Progress("update", message="applying the rank-one update"))
            apply_delta(self.lm.model, out.delta)
            applied = True
            self._fingerprint = None
            if cancelled():
                raise rome.Cancelled
            t = time.perf_counter()
            emit(Progress("eval", message="edit quality"))
            held_out = self.held_out_templates(hp, templates) if request.prompt.index("{}") == 0 else []
            result.metrics.update(self._measure_after(request, held_out, before, measure_ppl, emit))
            timings["eval"] = time.perf_counter() - t
            result.collapse_reasons = self.guard.reasons(
                result.diagnostics["denominator"], result.metrics.get("ppl_ratio"),
                denominator_ratio=result.diagnostics.get("denominator_ratio"))
            result.collapse_reasons += self.audit_finish(pending, result, emit)
            if cancelled():
                raise rome.Cancelled
            settle(result, dry_run=dry_run, allow_collapse=allow_collapse)
        except (rome.Cancelled, InterruptedError):  # InterruptedError: cancelled during key statistics
            self._restore(weight, snapshot, applied, fp_before)
            raise EditCancelled("the edit was cancelled; the weights are unchanged") from None
        except (rome.RomeError, HParamsError) as e:
            self._restore(weight, snapshot, applied, fp_before)
            result.error = str(e)
        except torch.OutOfMemoryError:
            self._restore(weight, snapshot, applied, fp_before)
            if self.lm.device.type == "cuda":
                torch.cuda.empty_cache()
            result.error = f"out of memory on {self.lm.device}; the weights are unchanged"
        except Exception:
            self._restore(weight, snapshot, applied, fp_before)
            raise
        if result.status != "applied":
            self._restore(weight, snapshot, applied, fp_before)
        result.fingerprint_after = self.fingerprint()
        timings["total"] = time.perf_counter() - t_start
        return result

    def _restore(self, weight: str, snapshot: torch.Tensor, applied: bool,
                 fingerprint: str | None = None) -> None:
        """Put the edited matrix ``weight`` (its name) back bit for bit, wherever it lives (in
        memory, or in an offload store: :func:`auditor.model.offload.write_param`).
        ``fingerprint``: the weights' fingerprint when ``snapshot`` was taken; the restored weights
        have it again (no other tensor was touched), so it is not recomputed (hashing every weight
        costs a second per 500 MB)."""
        if applied:
            write_param(self.lm.model, weight, snapshot)
            self.invalidate(fingerprint)

    def _measure_before(self, request: EditRequest, measure_ppl: bool, emit: ProgressFn) -> dict:
        before: dict[str, Any] = {"neighborhood": None, "ppl": None}
        if request.neighborhood:
            before["neighborhood"] = metrics.locality_reference(self.lm, request.neighborhood)
        if request.target_true is not None:
            before["efficacy"] = metrics.success(self.lm, [request.text], request.target_new,
                                                  request.target_true)[0]
        if measure_ppl:
            emit(Progress("ppl", message="perplexity before"))
            before["ppl"] = self.perplexity()
        return before

    def _measure_after(self, request: EditRequest, held_out: list[str], before: dict,
                       measure_ppl: bool, emit: ProgressFn) -> dict:
        m = metrics.evaluate(self.lm, request, before_neighborhood=before["neighborhood"],
                             prefix_templates=held_out)
        m["efficacy_before"] = before.get("efficacy")
        m["ppl_before"] = before["ppl"]
        if measure_ppl:
            emit(Progress("ppl", message="perplexity after"))
            m["ppl_after"] = self.perplexity()
            m["ppl_ratio"] = m["ppl_after"] / m["ppl_before"]
        else:
            m["ppl_after"] = m["ppl_ratio"] = None
        return m

    # -------------------------------------------------------------- many edits

    def edit_many(self, requests: list[EditRequest], *, independent: bool = False,
                  on_result: Callable[[int, EditResult], None] | None = None, **kwargs) -> list[EditResult]:
        """Sequential editing (each edit sees the earlier ones), or ``independent``: every request
        on the unedited model, the weights restored exactly between requests."""
        self.check_requests(requests)
        results = []
        for i, req in enumerate(requests):
            if independent:
                weight = self.lm.spec.weight_name(self.hparams(kwargs.get("hparams")).layer)
                snapshot = read_param(self.lm.model, weight).clone()
            res = self.edit(req, **kwargs)
            if independent:
                self._restore(weight, snapshot, applied=True)
            results.append(res)
            if on_result:
                on_result(i, res)
        return results
