"""The editing-method interface: a list of requests in, per-layer deltas and diagnostics out.

Every method (ROME, MEMIT, AlphaEdit) implements :class:`EditMethod`; ``registry.get_method``
names them::

    method = get_method("memit")                  # auditor.engine.registry
    hp = method.hparams(lm, {"layers": [3, 4, 5, 6]})
    out = method.compute(lm, requests, hp, ctx)   # MethodOutput; the model is unchanged afterwards
    apply_delta(lm.model, out.delta)              # the caller applies (deltas.apply_delta)

:class:`MethodContext` carries what the caller owns: the key statistics ``C`` of a layer
(``stats.second_moment``, cached by the :class:`~auditor.run.edit.Editor`), the context templates, the
AlphaEdit key memory (earlier batches' ``sum K K^T`` per parameter, owned by the workspace), and
the progress / cancel hooks. The shared key / value machinery comes from ``engine/rome.py``
(``optimise_value``, ``module_inputs``, ``subject_index``, ...); this module adds the batched pieces
MEMIT and AlphaEdit share: keys of many requests at one layer, the residual stream at a block's
output, and the ascending-layer loop that spreads the residual (Meng et al. 2023, ``memit_main.py``).

References: Meng et al. 2023, "Mass-Editing Memory in a Transformer" (kmeng01/memit); Fang et
al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing" (jianghoucheng/AlphaEdit).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

import torch

from auditor.base import AuditorError
from auditor.engine import rome
from auditor.engine.deltas import AnyDelta, Delta, DeltaSet, apply_delta
from auditor.engine.hparams import HParamsError, RomeHParams, check_hparams, load_hparams
from auditor.model.checkpoint import LoadedModel
from auditor.model.offload import read_param, write_param
from auditor.model.requests import EditRequest
from auditor.model.resources import ResourceMissing, resource_path

ProgressFn = Callable[[str, dict], None]  # (phase, details): "v" steps, "layer" updates


class BatchError(AuditorError, RuntimeError):
    """A request of the batch cannot be edited; ``index`` names it (None: the batch as a whole)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass
class MethodContext:
    templates: list[str]  # context templates, "{}" first (rome.generate_context_templates)
    second_moment: Callable[[int], torch.Tensor | None]  # layer -> C = E[k k^T] (in, in), or None
    key_memory: dict[str, torch.Tensor] = field(default_factory=dict)  # param -> sum K K^T (in, in) f64
    key_mode: str = "consistent"  # ROME only
    on_step: rome.StepFn | None = None  # v* progress of the request being optimised
    on_request: Callable[[int, int], None] | None = None  # (first index, total) before each group of v*
    cancelled: Callable[[], bool] = lambda: False
    # layer -> held-out text keys (in, N) float64 of the model before the batch (stats.held_out_keys), or
    # None: each layer's relative output change on them is recorded as "held_out_change"
    held_out_keys: Callable[[int], torch.Tensor | None] = lambda layer: None
    # layer -> how C was obtained ({"tokens", "condition", ...}), recorded per layer as "stats_<key>"
    stats_info: Callable[[int], dict] = lambda layer: {}


@dataclass
class MethodOutput:
    delta: AnyDelta  # Delta (ROME) or DeltaSet (one part per layer, plus recorded state)
    layers: list[int]  # edited layers, ascending
    diagnostics: dict  # batch level: {"layers": [per-layer dict], ...}
    per_request: list[dict]  # per request: v_steps, loss_curve, target_prob_curve, ...
    timings: dict  # seconds: keys, v, update
    vectors: dict[str, Any] = field(default_factory=dict, repr=False)  # tensors for tests (not stored)


class EditMethod(Protocol):
    name: str
    max_batch: int | None  # None: any batch size

    def hparams(self, lm: LoadedModel, overrides: dict | None = None) -> RomeHParams: ...

    def layers(self, hp: RomeHParams) -> list[int]: ...

    def compute(self, lm: LoadedModel, requests: list[EditRequest], hp: RomeHParams,
                ctx: MethodContext) -> MethodOutput: ...


# ------------------------------------------------------------------ hyper-parameters


def load_method_hparams(cls: type, method: str, lm: LoadedModel, overrides: dict | None) -> Any:
    """``resources/hparams/<method>_<family>.json``, then ``overrides``, each value through
    ``hparams.check_hparams``; ``layer`` := ``max(layers)`` (z* is optimised there)."""
    try:
        path = resource_path(f"hparams/{method}_{lm.spec.family}.json")
    except ResourceMissing as e:
        raise HParamsError(f"no {method} hyper-parameters for the {lm.spec.family} family: {e}") from None
    raw = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.startswith("_")}
    try:
        raw = check_hparams(raw, cls)
    except HParamsError as e:
        raise HParamsError(f"{path}: {e}") from None
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "layer" in overrides:
        raise HParamsError(f"{method} edits several layers: set 'layers' (a list), not 'layer'")
    raw.update(check_hparams(overrides, cls))
    layers = raw.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, int) and not isinstance(x, bool)
                                                             for x in layers):
        raise HParamsError("'layers' must be a non-empty list of layer indices")
    if len(set(layers)) != len(layers):
        raise HParamsError(f"'layers' repeats a layer: {layers}")
    bad = [x for x in layers if not 0 <= x < lm.n_layers]
    if bad:
        raise HParamsError(f"layer {bad[0]} is out of range: the model has {lm.n_layers} layers (0-{lm.n_layers - 1})")
    raw["layers"] = sorted(layers)
    raw["layer"] = raw["layers"][-1]
    try:
        hp = cls(**raw)
    except TypeError as e:
        raise HParamsError(f"{path.name}: {e}") from None
    load_hparams(lm.spec.family, {k: getattr(hp, k) for k in _rome_fields()})  # the shared checks
    return hp


def _rome_fields() -> list[str]:
    return [f.name for f in fields(RomeHParams)]


# ------------------------------------------------------------------ batched keys and residuals


def template_groups(templates: list[str], style: str = "memit") -> list[list[int]]:
    """The template indices in the reference's groups: the bare ``"{}"`` alone, then the generated
    prefixes by generation length (kmeng01/memit ``get_context_templates`` returns
    ``[["{}"], [5 prefixes of 10 tokens]]``; ``style="rome"``: kmeng01/rome's 10 of 5 tokens and
    10 of 10). Templates given by hand (any other count) form one group besides the bare one."""
    bare = [i for i, t in enumerate(templates) if t == "{}"]
    rest = [i for i, t in enumerate(templates) if t != "{}"]
    groups = [bare] if bare else []
    counts = [c for _, c in rome.ROME_CONTEXT_LENGTHS]
    if style == "rome" and len(rest) == sum(counts):
        for c in counts:
            groups.append(rest[:c])
            rest = rest[c:]
    elif rest:
        groups.append(rest)
    return groups


def template_weights(templates: list[str], key_average: str = "groups", style: str = "memit") -> torch.Tensor:
    """Weight of each template's key in a request's key: ``(T,)`` float64 summing to 1.

    ``"groups"`` (kmeng01/memit ``compute_ks.py``, also jianghoucheng/AlphaEdit): the mean within
    each group of :func:`template_groups`, then the mean of the groups, so the bare prompt gets
    1/2 with the reference's two groups. ``"flat"``: every template alike (kmeng01/rome
    ``compute_u.py``; this product's MEMIT before session 5: the bare prompt got 1/6)."""
    T = len(templates)
    if key_average == "flat":
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if key_average != "groups":
        raise HParamsError(f"unknown key_average {key_average!r}; use 'groups' or 'flat'")
    groups = template_groups(templates, style)
    w = torch.zeros(T, dtype=torch.float64)
    for g in groups:
        w[g] = 1.0 / (len(groups) * len(g))
    return w


def batch_keys(lm: LoadedModel, requests: list[EditRequest], layer: int, templates: list[str],
               chunk: int = 64, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Each request's key at ``layer``, the templates' keys averaged with ``weights`` (``(T,)``,
    :func:`template_weights`; None: equally, ``rome.compute_keys(...).mean``): ``(n, in)`` float32,
    computed for many requests in batched passes."""
    texts, positions = [], []
    for req in requests:
        for t in templates:
            p = t.replace("{}", req.prompt, 1)
            texts.append(p.replace("{}", req.subject, 1))
            positions.append(rome.subject_index(lm, p, req.subject))
    rows = [rome.module_inputs(lm, layer, texts[s:s + chunk], positions[s:s + chunk])
            for s in range(0, len(texts), chunk)]
    per = torch.cat(rows).view(len(requests), len(templates), -1)  # (n, T, in)
    if weights is None:
        return per.mean(1)
    return (per.double() * weights.to(per.device)[None, :, None]).sum(1).float()


def hp_keys(lm: LoadedModel, requests: list[EditRequest], layer: int, templates: list[str],
            hp: RomeHParams) -> torch.Tensor:
    """:func:`batch_keys` averaged as ``hp.key_average`` says (MEMIT / AlphaEdit; default flat)."""
    w = template_weights(templates, getattr(hp, "key_average", "flat"), hp.context_style)
    return batch_keys(lm, requests, layer, templates, weights=w)


@torch.no_grad()
def block_outputs(lm: LoadedModel, layer: int, requests: list[EditRequest]) -> torch.Tensor:
    """The residual stream after decoder block ``layer`` at each bare prompt's subject: ``(n, hidden)``."""
    block = lm.model.get_submodule(lm.spec.layers)[layer]
    ids, mask = rome.pad_batch([rome.encode(lm, r.text) for r in requests], rome.pad_id(lm), lm.device)
    pos = torch.tensor([rome.subject_index(lm, r.prompt, r.subject) for r in requests], device=lm.device)
    captured: list[torch.Tensor] = []

    def hook(_mod, _args, out):
        captured.append(out[0] if isinstance(out, tuple) else out)
        raise rome.StopForward

    handle = block.register_forward_hook(hook)
    try:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    except rome.StopForward:
        pass
    finally:
        handle.remove()
    hidden = captured[0]  # (B, T, H)
    return hidden[torch.arange(len(requests), device=hidden.device), pos].float()


V_BATCH = 16  # requests whose v* are optimised together (rome.optimise_values: the same v*, one batch)


def target_shifts(lm: LoadedModel, requests: list[EditRequest], hp: RomeHParams,
                  ctx: MethodContext) -> tuple[torch.Tensor, list[dict]]:
    """z* - z for every request at the last edited layer: ``(n, hidden)``, and per-request v* details.

    ROME's ``optimise_value`` adds ``delta`` to the down-projection's output at the subject's last
    token. In a pre-norm (or parallel) block that output is added to the residual stream as is, so
    adding ``delta`` there *is* adding it to the block's output: the v* found at the last edited
    layer gives MEMIT's z* = z + (v* - v_init) (kmeng01/memit ``compute_z.py`` optimises the block
    output directly). One difference remains: rome.py clamps ``||delta||`` relative to the MLP
    output's norm, MEMIT (and AlphaEdit) relative to the residual's: ``hp.z_norm`` says which
    (``"residual"``, the reference; ``"mlp_output"``, ROME's and this product's before session 5),
    for the clamp and the weight decay alike.

    The v* of up to :data:`V_BATCH` requests are optimised in one batch (``rome.optimise_values``):
    each gets the v* it would get alone.
    """
    shifts, details = [], []
    z_norm = getattr(hp, "z_norm", "mlp_output")
    if z_norm not in ("residual", "mlp_output"):
        raise HParamsError(f"unknown z_norm {z_norm!r}; use 'residual' or 'mlp_output'")
    for start in range(0, len(requests), V_BATCH):
        chunk = requests[start:start + V_BATCH]
        if ctx.on_request:
            ctx.on_request(start, len(requests))
        base = block_outputs(lm, hp.layer, chunk).norm(dim=1) if z_norm == "residual" else None  # (n,)
        try:
            values = rome.optimise_values(lm, chunk, hp.layer, ctx.templates, hp, ctx.on_step, ctx.cancelled,
                                          norm_base=base)
        except rome.ValueLossError as e:
            i = start + e.index
            raise BatchError(f"request {i + 1} ({requests[i].label}): {e}", i) from None
        except rome.RomeError as e:
            raise BatchError(f"requests {start + 1}-{start + len(chunk)}: {e}", start) from None
        for val in values:
            shifts.append(val.v_star - val.v_init)
            details.append({"v_steps": val.steps, "loss_curve": val.losses, "target_prob_curve": val.target_probs,
                            "v_init_norm": float(val.v_init.norm()), "shift_norm": float(shifts[-1].norm())})
    return torch.stack(shifts), details


SolveFn = Callable[[int, str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
# (layer, param, K (in, n) f64, R (out, n) f64) -> (right (in, n) f64 with Delta = R right^T, diagnostics)


def spread_over_layers(lm: LoadedModel, requests: list[EditRequest], hp: RomeHParams, ctx: MethodContext,
                       solve: SolveFn, shifts: tuple[torch.Tensor, list[dict]] | None = None,
                       ) -> tuple[list[Delta], list[dict], dict[str, Any]]:
    """MEMIT's layer loop: for each edited layer, ascending, recompute the keys K and the remaining
    shift z* - z at the last layer, give this layer ``1 / (layers left)`` of it (R), solve for its
    update, and apply it so the next layer sees it. The model is restored bit for bit at the end;
    the parts are returned for the caller to apply with ``apply_delta``. ``shifts``: the result of
    :func:`target_shifts` when already computed (benchmarks comparing lambdas or layer sets).
    """
    layers = list(hp.layers)
    shifts, details = shifts or target_shifts(lm, requests, hp, ctx)  # (n, hidden)
    z_star = block_outputs(lm, hp.layer, requests) + shifts
    names = [lm.spec.weight_name(layer) for layer in layers]
    snapshot = {n: read_param(lm.model, n).clone() for n in names}
    held_out = {layer: ctx.held_out_keys(layer) for layer in layers}  # before any layer moves
    parts: list[Delta] = []
    diags: list[dict] = []
    vectors: dict[str, Any] = {"z_star": z_star, "K": [], "R": [], "per_request": details}
    remaining = shifts.T.double()  # (out, n) z* - z before any layer is updated
    try:
        for i, (layer, name) in enumerate(zip(layers, names)):
            if ctx.cancelled():
                raise rome.Cancelled
            K = hp_keys(lm, requests, layer, ctx.templates, hp).T.double()  # (in, n)
            R = remaining / (len(layers) - i)
            right, diag = solve(layer, name, K, R)
            part = Delta.factored(name, lm.spec.transposed, R.cpu(), right.cpu())
            apply_delta(lm.model, part)
            after = (z_star - block_outputs(lm, hp.layer, requests)).T.double()
            upd = R @ right.T  # (out, in)
            W = lm.spec.as_out_in(snapshot[name]).double()
            diag = {**diag, **held_out_change(upd, W, held_out[layer]),
                    **{f"stats_{k}": v for k, v in ctx.stats_info(layer).items()}}
            diags.append({
                "layer": layer, "param": name, "rank": part.rank,
                "update_norm": float(upd.norm()), "weight_norm": float(W.norm()),
                "update_ratio": float(upd.norm() / W.norm()),
                "residual_before": float(remaining.norm(dim=0).mean()),  # mean ||z* - z|| over requests
                "residual_after": float(after.norm(dim=0).mean()),
                "fit_residual": float((upd @ K - R).norm() / R.norm()) if R.norm() > 0 else 0.0,
                **diag,
            })
            parts.append(part)
            remaining = after
            vectors["K"].append(K)
            vectors["R"].append(R)
        vectors["keys_after"] = {n: hp_keys(lm, requests, layer, ctx.templates, hp).T.contiguous()
                                 for layer, n in zip(layers, names)}  # (in, n) after the whole update
    finally:
        with torch.no_grad():
            for n, w in snapshot.items():
                write_param(lm.model, n, w)
    return parts, diags, vectors


def held_out_change(upd: torch.Tensor, W: torch.Tensor, Kh: torch.Tensor | None) -> dict:
    """``||Delta Kh|| / ||W Kh||`` (Frobenius) on held-out text keys Kh (in, N): how far the update
    moves the matrix's output on text neither C nor the batch saw (issue 19: measured, where
    AlphaEdit's ``Delta (I - P) = 0`` is an identity)."""
    if Kh is None:
        return {}
    Kh = Kh.to(upd.device, torch.float64)
    return {"held_out_change": float((upd @ Kh).norm() / (W.to(upd.device) @ Kh).norm()),
            "held_out_keys": int(Kh.shape[1])}


def symmetric_condition(A: torch.Tensor) -> float:
    """Condition number (2-norm) of the symmetric positive (semi)definite matrix ``A``."""
    ev = torch.linalg.eigvalsh(A)
    return float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf


# ------------------------------------------------------------------ ROME through the interface


class RomeMethod:
    """ROME (rome.compute_rome) behind the method interface: one request per update."""

    name = "rome"
    max_batch = 1

    def hparams(self, lm: LoadedModel, overrides: dict | None = None) -> RomeHParams:
        hp = load_hparams(lm.spec.family, overrides)
        if not 0 <= hp.layer < lm.n_layers:
            raise HParamsError(f"layer {hp.layer} is out of range: the model has {lm.n_layers} layers (0-{lm.n_layers - 1})")
        return hp

    def layers(self, hp: RomeHParams) -> list[int]:
        return [hp.layer]

    def compute(self, lm: LoadedModel, requests: list[EditRequest], hp: RomeHParams,
                ctx: MethodContext) -> MethodOutput:
        if len(requests) != 1:
            raise BatchError(f"ROME edits one request per update (got {len(requests)}); use batch size 1")
        C = ctx.second_moment(hp.layer) if hp.mom2_adjustment else None
        try:
            out = rome.compute_rome(lm, requests[0], hp, ctx.key_mode, C, ctx.templates, ctx.on_step, ctx.cancelled)
        except rome.RomeError as e:
            raise BatchError(f"request 1 ({requests[0].label}): {e}", 0) from None
        d = out.diagnostics
        layer_diag = {"layer": hp.layer, "param": out.delta.param, "rank": 1, "update_norm": d["update_norm"],
                      "weight_norm": d["weight_norm"], "update_ratio": d["update_norm"] / d["weight_norm"],
                      "denominator": d["denominator"]}
        per = {k: d[k] for k in ("v_steps", "loss_curve", "target_prob_curve", "denominator", "key_cosine")}
        return MethodOutput(out.delta, [hp.layer], {"layers": [layer_diag], **d}, [per], out.timings,
                            {"v_star": out.v_star, "k_cur": out.k_cur})


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t
