"""The collateral audit: who else did an edit change?

An edit is judged on what it was asked (efficacy, paraphrases) and on a few neighbourhood prompts;
that misses the damage that matters most, other subjects answering the new target. For every edit
or batch, before it is kept, three measurements over the subject bank (model/subject_bank.py):

* same-template swaps: each edited prompt with ``swaps`` other subjects of the same type (seeded
  sample), P(target_new) and the greedy answer before and after; a swap *moved* when P(target_new)
  rose by more than ``moved_prob_rise`` or its greedy answer changed (``moved``, the table's mark;
  ``changed_rate``: the share of swaps that moved). ``spill_rate`` (what the guard reads): the share
  of swaps that moved *to the target*, P(target_new) up by more than ``moved_prob_rise`` or the
  answer now the target's first token, over the swaps that did not already answer it: an estimate
  of the share of same-type subjects the edit drags along. (An answer that changes elsewhere, " the"
  -> " Car" for "The capital of Venezuela is" after France -> Rome, is shown but not counted: the
  demo's bfloat16 copy does that on a specific edit.)
* key-space neighbours: at each edited layer, every bank subject's keys in the edited prompt (the
  module's input at the subject's last token, as ROME and MEMIT read keys, and at the prompt's last
  token, where a template-keyed update acts) ranked by ``|Delta k| / |W k|``; the top
  ``neighbours`` are checked with the same forward pass as the swaps;
* preservation cost per edited layer: ``tr(Delta C Delta^T) / tr(W C W^T)`` with C = E[k k^T] the
  key statistics (engine/stats.py): the expected squared change of the layer's output on ordinary
  text keys relative to the output itself (MEMIT's preservation term, Meng et al. 2023 eq. 7;
  AlphaEdit's null-space argument, Fang et al. 2025, is that this is ~0). The same for ROME, MEMIT
  and AlphaEdit.

The forward passes are batched: one pass for every bank key (stopped after the last edited layer),
one scoring pass before the edit and one after. measure/guard.py turns the figures into reasons.

Example::

    audit = CollateralAudit(lm, load_bank())
    pending = audit.prepare(requests, delta, {layer: C})   # model still unedited
    apply_delta(lm.model, delta)
    report = audit.finish(pending)   # {"spill_rate": ..., "moved": [...], "preservation_cost": ...}
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from auditor.engine.deltas import AnyDelta, Delta
from auditor.engine.rome import (
    StopForward,
    encode,
    encode_target,
    pad_batch,
    pad_id,
    subject_index,
)
from auditor.measure.metrics import target_logprobs
from auditor.model.checkpoint import LoadedModel
from auditor.model.offload import read_param
from auditor.model.requests import EditRequest
from auditor.model.subject_bank import SubjectBank

KEY_BATCH = 64  # prompts per key pass
SCORE_BATCH = 64  # prompts per scoring pass
MAX_KEY_PROMPTS = 4  # distinct edited prompts whose bank keys are ranked (a batch may have many)


@dataclass
class CollateralConfig:
    swaps: int = 20  # same-type swaps per edit (a batch: spread over its requests, at least min_swaps each)
    min_swaps: int = 4  # swaps per request of a batch at least
    neighbours: int = 6  # key-space neighbours checked per edit
    seed: int = 0  # the swap sample's seed: same seed, same list
    moved_prob_rise: float = 0.25  # a row moved when P(target_new) rose by more than this ...
    answer_change: bool = True  # ... or when its greedy first answer token changed
    max_rows: int = 240  # swaps of a batch at most
    rank_pool: int = 96  # bank subjects whose keys are ranked per edited prompt: its type's first, then others
    bank: str | None = None  # a user's bank file (None: resources/subject_bank.json)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Row:
    kind: str  # "swap" or "neighbour"
    request: int  # index of the edited request whose prompt and target_new it uses
    subject: str
    prompt: str  # the filled prompt
    target_new: str
    key_ratio: float | None = None  # |Delta k| / |W k| (max over edited layers and positions)
    p_before: float = 0.0
    p_after: float = 0.0
    answer_before: str = ""
    answer_after: str = ""
    target_first: str = ""  # target_new's first token, decoded
    moved: bool = False  # P(target_new) rose by more than moved_prob_rise or the answer changed
    toward: bool = False  # moved *to the target*: P rose so, or the answer became its first token


@dataclass
class Pending:
    """What :meth:`CollateralAudit.prepare` measured on the unedited model."""

    rows: list[Row]
    preservation: dict[int, float]
    statistics: str  # "C" (the key statistics) or "identity" (none given)
    edited_key_ratio: float | None
    seconds: float
    timings: dict = field(default_factory=dict)


class CollateralAudit:
    """The audit of one model's edits against one subject bank (see the module docstring)."""

    def __init__(self, lm: LoadedModel, bank: SubjectBank, config: CollateralConfig | None = None):
        self.lm = lm
        self.bank = bank
        self.config = config or CollateralConfig()
        self.bank_file = self.config.bank
        self._layer_of = {lm.spec.weight_name(i): i for i in range(lm.n_layers)}

    # ------------------------------------------------------------ before the edit

    @torch.no_grad()
    def prepare(self, requests: list[EditRequest], delta: AnyDelta,
                second_moments: dict[int, torch.Tensor | None] | None = None) -> Pending:
        """Swaps, key-space neighbours and their scores on the unedited model; preservation cost."""
        t0 = time.perf_counter()
        cfg, edited = self.config, {r.subject.strip().lower() for r in requests}
        parts = {self._layer_of[p.param]: p for p in delta.parts_on(None)}
        n = len(requests)
        per_request = max(1, min(max(cfg.min_swaps, -(-cfg.swaps // n)), cfg.max_rows // n))
        rows = [Row("swap", i, s, req.prompt.replace("{}", s), req.target_new)
                for i, req in enumerate(requests)
                for s in self.bank.peers(req, per_request, cfg.seed + i, exclude=edited)]
        t1 = time.perf_counter()
        ranked, own = self._rank_keys(requests, parts, edited)
        taken = {(r.request, r.subject) for r in rows}
        neighbours = [(ratio, i, s) for ratio, i, s in ranked if (i, s) not in taken][:cfg.neighbours]
        ratio_of = {(i, s): ratio for ratio, i, s in ranked}
        for r in rows:
            r.key_ratio = ratio_of.get((r.request, r.subject))
        rows += [Row("neighbour", i, s, requests[i].prompt.replace("{}", s), requests[i].target_new, key_ratio=ratio)
                 for ratio, i, s in neighbours]
        t2 = time.perf_counter()
        self._score(rows, after=False)
        t3 = time.perf_counter()
        C = second_moments or {}
        preservation = {layer: preservation_cost(self.lm, part, C.get(layer)) for layer, part in parts.items()}
        statistics = "C" if all(C.get(layer) is not None for layer in parts) else "identity"
        t4 = time.perf_counter()
        return Pending(rows, preservation, statistics, own, t4 - t0,
                       {"sample": t1 - t0, "keys": t2 - t1, "score_before": t3 - t2, "preservation": t4 - t3})

    def _rank_keys(self, requests: list[EditRequest], parts: dict[int, Delta],
                   edited: set[str]) -> tuple[list[tuple[float, int, str]], float | None]:
        """Bank subjects by ``|Delta k| / |W k|`` in the first few edited prompts, largest first,
        and the same ratio of the (first) edited subject's own key."""
        if not parts:
            return [], None
        firsts: dict[str, int] = {}
        for i, req in enumerate(requests):
            firsts.setdefault(req.prompt, i)
        chosen = list(firsts.items())[:MAX_KEY_PROMPTS]
        cands = [(i, s) for _, i in chosen
                 for s in self.bank.peers(requests[i], self.config.rank_pool, self.config.seed + 7919 + i, edited)]
        cands.insert(0, (0, requests[0].subject))
        texts, positions = [], []
        for i, s in cands:
            prompt = requests[i].prompt
            texts.append(prompt.replace("{}", s))
            positions.append((subject_index(self.lm, prompt, s), len(encode(self.lm, texts[-1])) - 1))
        ratios = torch.zeros(len(cands))
        for start in range(0, len(texts), KEY_BATCH):
            keys = module_inputs_at(self.lm, sorted(parts), texts[start:start + KEY_BATCH],
                                    positions[start:start + KEY_BATCH])
            for layer, part in parts.items():
                k = keys[layer]  # (n, 2, in)
                r = key_ratio(self.lm, layer, part, k.reshape(-1, k.shape[-1])).view(k.shape[0], 2).amax(1)
                ratios[start:start + len(r)] = torch.maximum(ratios[start:start + len(r)], r.cpu())
        ranked = sorted(((float(ratios[j]), *cands[j]) for j in range(1, len(cands))), key=lambda t: -t[0])
        return ranked, float(ratios[0])

    def _score(self, rows: list[Row], *, after: bool) -> None:
        """P(target_new) (geometric mean over its tokens) and the greedy first answer token, batched."""
        if not rows:
            return
        scores = target_scores(self.lm, [r.prompt for r in rows], [r.target_new for r in rows])
        tok = self.lm.tokenizer
        for r, (prob, first) in zip(rows, scores):
            answer = tok.decode([first])
            r.target_first = tok.decode(encode_target(self.lm, r.target_new)[:1])
            if after:
                r.p_after, r.answer_after = prob, answer
            else:
                r.p_before, r.answer_before = prob, answer

    # ------------------------------------------------------------ after the edit

    @torch.no_grad()
    def finish(self, pending: Pending) -> dict[str, Any]:
        """Score the rows on the edited model; the audit's record (JSON-ready)."""
        t0 = time.perf_counter()
        cfg = self.config
        self._score(pending.rows, after=True)
        for r in pending.rows:
            rose = r.p_after - r.p_before > cfg.moved_prob_rise
            r.moved = rose or (cfg.answer_change and r.answer_after != r.answer_before)
            r.toward = rose or (r.answer_after == r.target_first != r.answer_before)
        # a subject whose answer already was the new target (Italy for "capital ... -> Rome") cannot spill
        judged = [r for r in pending.rows if r.answer_before != r.target_first]
        swaps = [r for r in judged if r.kind == "swap"]
        near = [r for r in judged if r.kind == "neighbour"]
        rate = lambda rs: sum(r.toward for r in rs) / len(rs) if rs else None  # noqa: E731
        seconds = pending.seconds + time.perf_counter() - t0
        return {
            "spill_rate": rate(swaps),
            "neighbour_spill_rate": rate(near),
            "changed_rate": sum(r.moved for r in swaps) / len(swaps) if swaps else None,
            "moved": [r.subject for r in pending.rows if r.moved],
            "n_swaps": len(swaps),
            "n_neighbours": len(near),
            "preservation_cost": max(pending.preservation.values(), default=None),
            "preservation_cost_by_layer": {str(k): v for k, v in sorted(pending.preservation.items())},
            "statistics": pending.statistics,
            "edited_key_ratio": pending.edited_key_ratio,
            "top_neighbour_key_ratio": max((r.key_ratio for r in near if r.key_ratio is not None), default=None),
            "config": {**cfg.to_dict(), "bank": self.bank.path},
            "rows": [row_record(r) for r in sorted(pending.rows, key=lambda r: (not r.moved, -(r.p_after - r.p_before)))],
            "seconds": seconds,
            "timings": {**pending.timings, "score_after": time.perf_counter() - t0},
        }


def summary(report: dict[str, Any], *, names: int = 8) -> str:
    """The audit in one line: the spill (swaps moved *to the target*, what the guard reads) kept apart
    from the other answers that changed, which are worth a look but are not a spill."""
    rows = report.get("rows") or []
    toward = [r["subject"] for r in rows if r.get("toward_target")]
    other = [r["subject"] for r in rows if r.get("moved") and not r.get("toward_target")]

    def listed(subjects: list[str]) -> str:
        return ", ".join(subjects[:names]) + (" ..." if len(subjects) > names else "") if subjects else "none"

    spill, cost = report.get("spill_rate"), report.get("preservation_cost")
    return (f"spill rate {'-' if spill is None else f'{spill:.3g}'} over {report.get('n_swaps') or 0} same-type "
            f"swaps; moved to the target: {listed(toward)}; other answers changed: {listed(other)}; "
            f"preservation cost {'-' if cost is None else f'{cost:.3g}'}")


def row_record(r: Row) -> dict[str, Any]:
    return {"kind": r.kind, "request": r.request, "subject": r.subject, "prompt": r.prompt,
            "target_new": r.target_new, "p_before": r.p_before, "p_after": r.p_after,
            "answer_before": r.answer_before, "answer_after": r.answer_after, "moved": r.moved,
            "toward_target": r.toward, "key_ratio": r.key_ratio}


# ------------------------------------------------------------------ forward passes


@torch.no_grad()
def target_scores(lm: LoadedModel, prompts: list[str], targets: list[str],
                  batch_size: int = SCORE_BATCH) -> list[tuple[float, int]]:
    """Per prompt: P(target) as the geometric mean of its teacher-forced token probabilities (as
    metrics.score) and the greedy first answer token; the output head runs only on the positions
    needed (most of a short prompt's cost otherwise goes into logits nobody reads)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        pairs = [(encode(lm, p), encode_target(lm, t))
                 for p, t in zip(prompts[start:start + batch_size], targets[start:start + batch_size])]
        logp = target_logprobs(lm, pairs)  # (sum of target lengths, V)
        tokens = torch.tensor([x for _, t in pairs for x in t], device=logp.device)
        tok_logp = logp.gather(1, tokens[:, None])[:, 0].tolist()
        greedy = logp.argmax(-1).tolist()
        at = 0
        for _, t in pairs:
            out.append((math.exp(sum(tok_logp[at:at + len(t)]) / len(t)), greedy[at]))
            at += len(t)
    return out


# ------------------------------------------------------------------ keys and updates


@torch.no_grad()
def module_inputs_at(lm: LoadedModel, layers: list[int], texts: list[str],
                     positions: list[tuple[int, ...]]) -> dict[int, torch.Tensor]:
    """The edited modules' inputs at ``positions[i]`` of ``texts[i]`` for every layer of ``layers``, in
    one forward pass stopped after the last: ``{layer: (n, len(positions[i]), in)}`` float32."""
    ids, mask = pad_batch([encode(lm, t) for t in texts], pad_id(lm), lm.device)
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []

    def hook_for(layer: int):
        def hook(_mod, args):
            captured[layer] = args[0]
            if layer == last:
                raise StopForward
        return hook

    for layer in layers:
        handles.append(lm.spec.module(lm.model, layer).register_forward_pre_hook(hook_for(layer)))
    try:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    pos = torch.tensor(positions, device=ids.device)  # (n, P)
    rows = torch.arange(len(texts), device=ids.device)[:, None]
    return {layer: x[rows, pos].float() for layer, x in captured.items()}


def _oriented(part: Delta) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(left (out, r), right (in, r), None) or (None, None, full (out, in)) in [out, in] orientation."""
    if part.full is not None:
        return None, None, part.full
    left = part.left if part.left.dim() == 2 else part.left[:, None]
    right = part.right if part.right.dim() == 2 else part.right[:, None]
    return left, right, None


def key_ratio(lm: LoadedModel, layer: int, part: Delta, K: torch.Tensor) -> torch.Tensor:
    """``|Delta k| / |W k|`` for each row k of ``K`` (n, in)."""
    W = lm.spec.as_out_in(read_param(lm.model, lm.spec.weight_name(layer))).float()  # offloaded or not
    K = K.to(W.device)
    left, right, full = _oriented(part)
    if full is not None:
        dk = K @ full.float().to(W.device).T  # (n, out)
    else:
        dk = (K @ right.float().to(W.device)) @ left.float().to(W.device).T  # (n, out)
    return dk.norm(dim=1) / (K @ W.T).norm(dim=1).clamp_min(1e-12)


def preservation_cost(lm: LoadedModel, part: Delta, C: torch.Tensor | None) -> float:
    """``tr(Delta C Delta^T) / tr(W C W^T)`` of one edited matrix (``C`` None: the identity, i.e.
    ``||Delta||_F^2 / ||W||_F^2``); W is the weight as it is now (call before applying Delta)."""
    W = read_param(lm.model, part.param)  # offloaded or not (model/offload.py)
    W = (W.T if part.transposed else W).double()  # (out, in)
    dev = W.device
    left, right, full = _oriented(part)
    if C is None:
        den = float((W * W).sum())
        num = float((full.double() ** 2).sum()) if full is not None else \
            float(((left.double().T @ left.double()) * (right.double().T @ right.double())).sum())
        return num / den
    C = C.to(dev, torch.float64)
    den = float(((W @ C) * W).sum())
    if full is not None:
        F_ = full.to(dev, torch.float64)
        num = float(((F_ @ C) * F_).sum())
    else:
        L, R = left.to(dev, torch.float64), right.to(dev, torch.float64)
        num = float(((L.T @ L) * (R.T @ C @ R)).sum())
    return num / den
