"""ROME: one fact written into one MLP down-projection as a rank-one update.

References: Meng et al. 2022, "Locating and Editing Factual Associations in GPT"
(kmeng01/rome: ``compute_u.py``, ``compute_v.py``, ``rome_main.py``); Meng et al. 2023,
"Mass-Editing Memory in a Transformer" (MEMIT, kmeng01/memit); Gupta, Baskaran and
Anumanchipalli 2024, "Rebuilding ROME: Resolving Model Collapse during Sequential Model
Editing" (r-ROME, arXiv 2403.07175); Yang et al. 2024, "Understanding the Collapse of LLMs
in Model Editing" (arXiv 2406.11263).

With W the edited matrix in ``[out, in]`` orientation and b its bias (if any)::

    k_i      key: the down-projection's input at the subject's last token of prompt i
    k_bar    mean of k_i over the context templates ("{}" and random prefixes)
    u        C^-1 k_bar, scaled to unit length (C = E[k k^T], see stats.py)
    k*       the *current* key: the bare prompt's key in ``original`` mode (the reference
             implementation), k_bar in ``consistent`` mode (r-ROME, Gupta et al. 2024; Yang
             et al. 2024 trace the first-token collapse to the same inconsistency)
    v*       the module output that makes the model say the new target (optimised)
    W'       W + (v* - (W k* + b)) u^T / (u . k*)         so that W' k* + b = v*

``u . k*`` is *the denominator*. When the subject is the prompt's first token, the
bare key sits at position 0 and is anomalous; in ``original`` mode the denominator
then collapses and the update explodes.

``joint`` mode maps both the bare key and k_bar to v* with a rank-two least-squares update
(MEMIT's normal equations, :func:`joint_update`), so that an edit of a prompt that begins with
its subject also holds on the bare prompt. When the subject is the prompt's first token, the bare
key is read at the prompt's *last* token, which belongs to the template, not to the subject: the
update then rewrites the relation for every subject ("France is a country in" -> Asia moved
Spain, Poland, Russia, ... on the demo; issue 18). The collateral audit
(measure/collateral.py) measures this on every edit and the guard rejects it (spill rate).

Fidelity to kmeng01/rome (``original`` mode, tests/test_rome_parity.py): the KL term's
direction (``kl_direction``), early stop on the total loss (``early_stop_on``) and its 20
context prefixes (``context_style="rome"``) are options; their defaults are documented in
hparams.py. The v* loop recomputes only what delta can change (suffix_forward.py).

Nothing here changes the model: :func:`compute_rome` returns the delta and the
caller applies it (``deltas.apply_delta``).
"""

from __future__ import annotations

import logging
import math
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from auditor.base import AuditorError
from auditor.engine.deltas import Delta
from auditor.engine.hparams import RomeHParams
from auditor.model.checkpoint import LoadedModel
from auditor.model.offload import read_param, weights_not_saved
from auditor.model.requests import EditRequest

log = logging.getLogger(__name__)

CONTEXT_STARTS = ("The", "Therefore", "Because", "I", "You")  # kmeng01/memit's context starts


class RomeError(AuditorError, RuntimeError):
    """The edit cannot be computed (non-finite loss, unusable key, ...); the model is untouched."""


class Cancelled(Exception):
    """The caller's cancel flag was raised during the computation."""


class StopForward(Exception):
    """Raised from a hook once the edited module has its input: later layers are not needed."""


# ------------------------------------------------------------------ tokens


def encode(lm: LoadedModel, text: str) -> list[int]:
    """Token ids of a prompt as the model sees it (with the tokenizer's special tokens)."""
    return lm.tokenizer(text)["input_ids"]


def encode_target(lm: LoadedModel, target: str) -> list[int]:
    """Token ids of a continuation: a leading space, no special tokens (as ROME does)."""
    text = target if target.startswith((" ", "\n")) else " " + target
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise RomeError(f"the target {target!r} encodes to no tokens")
    return ids


def subject_index(lm: LoadedModel, template: str, subject: str) -> int:
    """Position of the subject's last token in ``template.format(subject)``."""
    prefix = template[: template.index("{}")]
    return len(encode(lm, prefix + subject)) - 1


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, both ``(B, T)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


# ------------------------------------------------------------------ context templates


ROME_CONTEXT_LENGTHS = ((5, 10), (10, 10))  # kmeng01/rome hparams: (tokens incl. the start token, how many)


def _top5_sample(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from the 5 most likely, in proportion to their probabilities: (B,)."""
    if not torch.isfinite(logits).all():
        raise RomeError("the model's logits are not finite (NaN or inf in the weights?); no edit was made")
    top = torch.topk(logits.float().cpu(), 5, dim=-1)  # (B, 5)
    choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)  # (B, 1)
    return top.indices.gather(1, choice)[:, 0]


@torch.no_grad()
def generate_context_templates(lm: LoadedModel, n: int, length: int, seed: int, *, style: str = "memit") -> list[str]:
    """``["{}"]`` plus prefixes sampled from the model (top-5, seeded), each ending in ``". {}"``.

    ``style="memit"``: ``n`` prefixes of ``length`` new tokens, started from "The", "Therefore",
    "Because", "I", "You" in turn (kmeng01/memit ``get_context_templates``, also EasyEdit's MEMIT).
    ``style="rome"``: kmeng01/rome's 20 (``rome_main.get_context_templates`` with
    ``[[5, 10], [10, 10]]``): 10 sequences of 5 tokens and 10 of 10, counting the start token
    (the tokenizer's BOS, else EOS), which is dropped from the text; ``n``/``length`` are unused.
    Sampling draws from a CPU generator, so the same model gives the same prefixes on any
    device up to floating-point differences of the logits.
    """
    gen = torch.Generator().manual_seed(seed)
    if style == "rome":
        return ["{}"] + _rome_prefixes(lm, gen)
    if style != "memit":
        raise ValueError(f"unknown context style {style!r}; use 'memit' or 'rome'")
    templates = ["{}"]
    for i in range(n):
        ids = encode(lm, CONTEXT_STARTS[i % len(CONTEXT_STARTS)])
        for _ in range(length):
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False).logits[0, -1]
            ids.append(int(_top5_sample(logits[None], gen)[0]))
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        templates.append(" ".join(text.replace("{", " ").replace("}", " ").split()) + ". {}")
    return templates


def _rome_prefixes(lm: LoadedModel, gen: torch.Generator) -> list[str]:
    tok = lm.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = []
    for length, count in ROME_CONTEXT_LENGTHS:  # every row of a group has the same length: no padding
        ids = torch.full((count, 1), start, dtype=torch.long)
        while ids.shape[1] < length:
            logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[:, -1]  # (count, V)
            ids = torch.cat([ids, _top5_sample(logits, gen)[:, None]], 1)
        for row in ids.tolist():
            text = unicodedata.normalize("NFKD", tok.decode(row[1:], skip_special_tokens=True))
            out.append(text.replace("\n\n", " ").replace("{", "").replace("}", "") + ". {}")
    return out


# ------------------------------------------------------------------ keys


@torch.no_grad()
def module_inputs(lm: LoadedModel, layer: int, texts: list[str], positions: list[int]) -> torch.Tensor:
    """The edited module's input at ``positions[i]`` of ``texts[i]``: ``(n, in_dim)`` float32."""
    module = lm.spec.module(lm.model, layer)
    ids, mask = pad_batch([encode(lm, t) for t in texts], pad_id(lm), lm.device)
    captured: list[torch.Tensor] = []

    def hook(_mod, args):
        captured.append(args[0])
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    x = captured[0]  # (B, T, in_dim)
    rows = torch.arange(len(texts), device=x.device)
    return x[rows, torch.tensor(positions, device=x.device)].float()


@dataclass
class Keys:
    bare: torch.Tensor  # (in,) key of the unprefixed prompt
    per_template: torch.Tensor  # (n_templates, in) keys under each context template
    key_position: int  # index of the subject's last token in the bare prompt
    subject_first_token: bool  # the subject starts the prompt (nothing before it)

    @property
    def mean(self) -> torch.Tensor:
        return self.per_template.mean(0)


def compute_keys(lm: LoadedModel, request: EditRequest, layer: int, templates: list[str]) -> Keys:
    prompts = [t.replace("{}", request.prompt, 1) for t in templates]  # templates of the edit prompt
    texts = [p.replace("{}", request.subject, 1) for p in prompts]
    positions = [subject_index(lm, p, request.subject) for p in prompts]
    bare_pos = subject_index(lm, request.prompt, request.subject)
    both = module_inputs(lm, layer, [request.text] + texts, [bare_pos] + positions)
    return Keys(
        bare=both[0],
        per_template=both[1:],
        key_position=bare_pos,
        subject_first_token=request.prompt.index("{}") == 0,
    )


@dataclass
class KeySide:
    u: torch.Tensor  # (in,) unit-length left vector
    u_raw: torch.Tensor  # (in,) C^-1 k_bar before normalisation
    k_cur: torch.Tensor  # (in,) the current key of the mode
    denominator: float  # u . k_cur with unit u (the papers' convention)
    denominator_raw: float  # u_raw . k_cur


def regularised(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """``C + ridge * mean(diag C) * I`` in float64: a ridge relative to C's average eigenvalue, so
    u = C^-1 k stays stable when the statistics hold few tokens per key dimension (ridge 0: C)."""
    C64 = C.double()
    if ridge > 0:
        C64 = C64 + ridge * C64.diagonal().mean() * torch.eye(C64.shape[0], dtype=C64.dtype, device=C64.device)
    return C64


def key_side(keys: Keys, C: torch.Tensor | None, key_mode: str) -> KeySide:
    """u from k_bar and C (already regularised by the caller if wanted); k* of ``key_mode``.
    ``joint`` shares consistent mode's u and k* here (its update is :func:`joint_update`)."""
    k_bar = keys.mean
    if C is not None:
        u_raw = torch.linalg.solve(C.to(k_bar.device, torch.float64), k_bar.double()).float()
    else:
        u_raw = k_bar.clone()
    u = u_raw / u_raw.norm()
    if key_mode == "original":
        k_cur = keys.bare
    elif key_mode in ("consistent", "joint"):
        k_cur = k_bar
    else:
        raise ValueError(f"unknown key mode {key_mode!r}; use 'consistent', 'original' or 'joint'")
    return KeySide(u, u_raw, k_cur, float(u @ k_cur), float(u_raw @ k_cur))


@dataclass
class JointUpdate:
    left: torch.Tensor  # (out, 2) residuals R = [v* - W k_bare - b, v* - W k_bar - b]
    right: torch.Tensor  # (in, 2) C^-1 K (lambda I + K^T C^-1 K)^-1
    gram: torch.Tensor  # (2, 2) K^T C^-1 K


def joint_update(K: torch.Tensor, R: torch.Tensor, C: torch.Tensor | None, lam: float) -> JointUpdate:
    """Map several keys to their values at once (the ``joint`` key mode, MEMIT-style).

    Minimises ``||Delta K - R||^2 + lam * tr(Delta C Delta^T)`` over Delta, i.e. (Meng et al.
    2023, MEMIT, eq. 14 with C as the regulariser) ``Delta = R K^T (lam C + K K^T)^-1``, computed
    through Woodbury's identity as ``R (lam I + K^T C^-1 K)^-1 K^T C^-1``: a rank-``K.shape[1]``
    update, solved against the small Gram matrix. ``lam -> 0`` fits every key exactly with the
    C^-1-smallest change; with one key that is ROME's own update ``r u^T / (u . k)``.
    K: (in, m) keys as columns; R: (out, m) wanted changes of the output; C: (in, in) or None.
    """
    K64 = K.double()
    CiK = torch.linalg.solve(C.to(K64.device, torch.float64), K64) if C is not None else K64.clone()  # (in, m)
    gram = K64.T @ CiK  # (m, m)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    # pseudo-inverse: keys that coincide (GPT-J's layer-0 MLP input ignores the context) give the
    # min-norm fit of their common direction instead of a singular solve
    right = CiK @ torch.linalg.pinv(lam * eye + gram, hermitian=True, rtol=1e-10)  # (in, m)
    return JointUpdate(left=R.float(), right=right.float(), gram=gram)


# ------------------------------------------------------------------ v*


@dataclass
class ValueResult:
    v_star: torch.Tensor  # (out,) optimised module output
    v_init: torch.Tensor  # (out,) module output at the first template before optimisation
    losses: list[float] = field(default_factory=list)  # total loss per step
    target_probs: list[float] = field(default_factory=list)
    steps: int = 0
    path: str = "full"  # "suffix" (only what delta can change is recomputed) or "full"
    seconds_setup: float = 0.0  # the fast path's one-time pass (included in the v* time)


StepFn = Callable[[int, int, float, float, dict], None]  # (step, total, loss, target_prob, terms)


@dataclass
class VPrompts:
    """The v* prompts of one or more requests. Per request, every template of the edit prompt
    followed by the target's tokens but the last (kmeng01/rome ``compute_v.py``: one row per
    template, all target tokens teacher-forced); after all of those, one row per request with the
    KL prompt "{subject} is a" up to its lookup token."""

    seqs: list[list[int]]  # token ids per row
    lookups: list[int]  # position of the subject's last token per row
    spans: list[int]  # rewriting rows: the logits at spans[r] + j predict the row's target[j]
    req: list[int]  # rewriting rows: the request each row belongs to
    targets: list[list[int]]  # per request: target_new's token ids

    @property
    def n_rw(self) -> int:
        return len(self.spans)

    @property
    def n_req(self) -> int:
        return len(self.targets)

    @property
    def first_rows(self) -> list[int]:
        """Each request's first rewriting row (its "{}"-template row: where v_init is read)."""
        return [self.req.index(i) for i in range(self.n_req)]


def v_prompts(lm: LoadedModel, requests: EditRequest | list[EditRequest], templates: list[str], *,
              fact_token: str = "subject_last") -> VPrompts:
    """``fact_token``: where delta is added, kmeng01/rome's ``fact_token`` option: the subject's
    last token (``subject_last``, the default) or each prompt's last token (``last``)."""
    requests = [requests] if isinstance(requests, EditRequest) else list(requests)
    seqs, lookups, spans, req, targets, kl_rows = [], [], [], [], [], []
    for i, request in enumerate(requests):
        target = encode_target(lm, request.target_new)
        targets.append(target)
        for t in templates:
            p = t.replace("{}", request.prompt, 1)
            ids = encode(lm, p.replace("{}", request.subject, 1))
            seqs.append(ids + target[:-1])
            lookups.append(subject_index(lm, p, request.subject) if fact_token == "subject_last" else len(ids) - 1)
            spans.append(len(ids) - 1)
            req.append(i)
        kl_ids = encode(lm, request.subject + " is a")
        kl_look = subject_index(lm, "{} is a", request.subject) if fact_token == "subject_last" else len(kl_ids) - 1
        # the KL distribution is read at the lookup token (kmeng01/rome: ``logits[i, lookup_idxs[i]]``); the
        # tokens after it cannot change it (causal attention) and would only widen the batch for nothing
        kl_rows.append((kl_ids[: kl_look + 1], kl_look))
    for ids, look in kl_rows:
        seqs.append(ids)
        lookups.append(look)
    return VPrompts(seqs, lookups, spans, req, targets)


class _FullForward:
    """The whole decoder every step, delta added by a hook on the edited module (as the reference).

    ``__call__(delta)`` (``(rows, H)``, one delta per row) returns the last hidden states
    ``(rows, T, H)``; a rewriting row's target logits are read from :attr:`rw_base` + j, a KL row's
    from :attr:`kl_pos`."""

    path = "full"

    def __init__(self, lm: LoadedModel, layer: int, vp: VPrompts):
        self.lm, self.vp = lm, vp
        self.ids, self.mask = pad_batch(vp.seqs, pad_id(lm), lm.device)
        dev = lm.device
        self.rows = torch.arange(len(vp.seqs), device=dev)
        self.look = torch.tensor(vp.lookups, device=dev)
        self.rw_base = torch.tensor(vp.spans, device=dev)  # (n_rw,)
        self.kl_pos = torch.tensor(vp.lookups[vp.n_rw:], device=dev)  # (n_req,)
        self.module = lm.spec.module(lm.model, layer)
        self.v_init: torch.Tensor | None = None  # (n_req, H)
        self.delta: torch.Tensor | None = None

    def _edit_output(self, _mod, _args, out):
        if self.v_init is None:
            first = self.vp.first_rows
            self.v_init = out[first, self.look[first]].detach().float().clone()
        out = out.clone()
        out[self.rows, self.look] = out[self.rows, self.look] + self.delta.to(out.dtype)
        return out

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        self.delta = delta
        handle = self.module.register_forward_hook(self._edit_output)
        try:
            return self.lm.model.base_model(input_ids=self.ids, attention_mask=self.mask,
                                            use_cache=False).last_hidden_state  # (B, T, H)
        finally:
            handle.remove()


class _SuffixForward:
    """Only the layers above the edited one, only from each row's lookup column on (suffix_forward.py)."""

    path = "suffix"

    def __init__(self, lm: LoadedModel, layer: int, vp: VPrompts):
        from auditor.engine.suffix_forward import SuffixForward, align

        self.run = SuffixForward(lm, layer, align(vp.seqs, vp.lookups, pad_id(lm), lm.device))
        self.v_init = self.run.v_init_rows[vp.first_rows]  # (n_req, H)
        dev = lm.device
        # columns after the lookup column
        self.rw_base = torch.tensor([s - look for s, look in zip(vp.spans, vp.lookups)], device=dev)
        self.kl_pos = torch.zeros(vp.n_req, dtype=torch.long, device=dev)

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        return self.run(delta)  # (B, S, H)


def _make_forward(lm: LoadedModel, layer: int, vp: VPrompts, fast: bool) -> "_FullForward | _SuffixForward":
    if fast:
        try:
            return _SuffixForward(lm, layer, vp)
        except (TypeError, AttributeError, KeyError, IndexError) as e:  # a decoder whose forward we cannot split
            log.warning("v*: the suffix-only forward is unavailable for this model (%s); running the full pass", e)
    return _FullForward(lm, layer, vp)


def _kl(kl_logp: torch.Tensor, kl_init: torch.Tensor, direction: str) -> torch.Tensor:
    """KL on the "{subject} is a" prompt, one value per row of ``(n, V)``. ``reference``:
    KL(P_new || P_init), which is what kmeng01/rome computes with ``kl_div(log_init, log_new,
    log_target=True)`` (PyTorch's ``kl_div(input, target)`` is KL(target || input));
    ``forward``: KL(P_init || P_new)."""
    if direction == "reference":
        return F.kl_div(kl_init, kl_logp, log_target=True, reduction="none").sum(-1)
    return F.kl_div(kl_logp, kl_init, log_target=True, reduction="none").sum(-1)


class ValueLossError(RomeError):
    """The v* loss of one request of a joint optimisation became non-finite; ``index`` names it."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def optimise_value(
    lm: LoadedModel,
    request: EditRequest,
    layer: int,
    templates: list[str],
    hp: RomeHParams,
    on_step: StepFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    *,
    fast: bool | None = None,
    fact_token: str = "subject_last",
) -> ValueResult:
    """Find v* = v_init + delta making the model say ``target_new`` after every template.

    The loss is kmeng01/rome's: mean NLL of the target tokens + ``kl_factor`` * KL on
    "{subject} is a" + ``v_weight_decay`` * ||delta|| / ||v_init||^2; Adam, delta clamped to
    ``clamp_norm_factor`` * ||v_init||. ``fast`` (default ``hp.v_fast``) recomputes only what
    delta can change (suffix_forward.py); the result is the same to float tolerance.
    """
    return optimise_values(lm, [request], layer, templates, hp, on_step, cancelled, fast=fast,
                           fact_token=fact_token)[0]


def optimise_values(
    lm: LoadedModel,
    requests: list[EditRequest],
    layer: int,
    templates: list[str],
    hp: RomeHParams,
    on_step: StepFn | None = None,
    cancelled: Callable[[], bool] | None = None,
    *,
    fast: bool | None = None,
    fact_token: str = "subject_last",
    norm_base: torch.Tensor | None = None,
) -> list[ValueResult]:
    """:func:`optimise_value` for several requests at once, each with its own delta, in one batch.

    The requests do not interact: the summed loss gives each delta its own request's gradient,
    Adam works element by element, and a request that meets the early-stop criterion is frozen
    (its delta restored after each later step) while the others go on. So every request gets the
    v* it would get alone, to float tolerance, for the price of one batch: a small v* batch is
    bound by reading the weights, not by arithmetic (MEMIT and AlphaEdit need one v* per request).
    ``on_step`` reports the mean loss and target probability of the requests still optimising.
    A non-finite loss raises :class:`ValueLossError` naming the request.

    ``norm_base`` (n,): the norms the clamp and the weight decay are relative to, one per request;
    None: ``||v_init||``, the module output's (kmeng01/rome ``compute_v.py``). MEMIT passes the
    residual stream's norm at the edited layer (kmeng01/memit ``compute_z.py``: ``target_init``).
    """
    vp = v_prompts(lm, requests, templates, fact_token=fact_token)
    use_fast = getattr(hp, "v_fast", True) if fast is None else fast
    t0 = time.perf_counter()
    forward = _make_forward(lm, layer, vp, use_fast)
    setup = time.perf_counter() - t0
    n, n_rw, dev = vp.n_req, vp.n_rw, lm.device
    results = [ValueResult(v_star=torch.empty(0), v_init=torch.empty(0), path=forward.path, seconds_setup=setup)
               for _ in range(n)]
    # target positions and tokens per rewriting row, padded to the longest target
    longest = max(len(t) for t in vp.targets)
    lengths = torch.tensor([len(vp.targets[i]) for i in vp.req], device=dev)  # (n_rw,)
    offsets = torch.arange(longest, device=dev)
    valid = offsets[None, :] < lengths[:, None]  # (n_rw, L)
    gather = torch.where(valid, forward.rw_base[:, None] + offsets[None, :], forward.rw_base[:, None])
    tokens = torch.tensor([vp.targets[i] + [0] * (longest - len(vp.targets[i])) for i in vp.req], device=dev)
    rw_req = torch.tensor(vp.req, device=dev)
    rows_per_req = torch.bincount(rw_req, minlength=n).float()  # (n,)
    row_req = torch.cat([rw_req, torch.arange(n, device=dev)])  # request of every batch row (KL rows last)
    kl_rows = torch.arange(n_rw, n_rw + n, device=dev)
    delta = torch.zeros(n, lm.spec.value_dim(lm.model, layer), device=dev, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    head = lm.model.get_output_embeddings()
    kl_direction = getattr(hp, "kl_direction", "reference")
    stop_on_total = getattr(hp, "early_stop_on", "nll") == "total"
    kl_init: torch.Tensor | None = None
    active = [True] * n
    step = 0
    try:
        with torch.enable_grad(), weights_not_saved(lm.model):  # offloaded weights: re-read, not kept
            for step in range(hp.v_num_grad_steps):
                if cancelled is not None and cancelled():
                    raise Cancelled
                opt.zero_grad()
                hidden = forward(delta[row_req])  # (B, W, H)
                v_init = forward.v_init  # (n, H)
                base = v_init.norm(dim=1) if norm_base is None else norm_base  # (n,)
                width = hidden.shape[-1]
                sel = hidden[:n_rw].gather(1, gather.unsqueeze(-1).expand(-1, -1, width))  # (n_rw, L, H)
                # the head only where needed, in one product (its weight is read once a step)
                logits = head(torch.cat([sel.reshape(n_rw * longest, width), hidden[kl_rows, forward.kl_pos]])).float()
                logp = torch.log_softmax(logits[: n_rw * longest], -1).view(n_rw, longest, -1)  # (n_rw, L, V)
                tok_logp = logp.gather(2, tokens.unsqueeze(-1)).squeeze(-1)  # (n_rw, L)
                nll_row = -(tok_logp * valid).sum(1) / lengths  # (n_rw,): mean over the row's target tokens
                nll = torch.zeros(n, device=dev).index_add(0, rw_req, nll_row) / rows_per_req  # (n,)
                kl_logp = torch.log_softmax(logits[n_rw * longest:], -1)  # (n, V)
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                kl = hp.kl_factor * _kl(kl_logp, kl_init, kl_direction)  # (n,)
                wd = hp.v_weight_decay * (delta.norm(dim=1) / base ** 2)  # (n,)
                loss = nll + kl + wd  # (n,)
                prob = (torch.zeros(n, device=dev).index_add(0, rw_req, torch.exp(-nll_row.detach()))
                        / rows_per_req).tolist()
                losses, nlls = loss.tolist(), nll.tolist()
                kls, wds = kl.tolist(), wd.tolist()
                stepped = [i for i in range(n) if active[i]]
                for i in stepped:
                    if not math.isfinite(losses[i]):
                        raise ValueLossError(f"the v* loss became {losses[i]} at step {step}; the edit was stopped", i)
                    res = results[i]
                    res.losses.append(losses[i])
                    res.target_probs.append(prob[i])
                    res.steps = step + 1
                    criterion = losses[i] if stop_on_total else nlls[i]
                    if criterion < hp.early_stop_loss or step == hp.v_num_grad_steps - 1:
                        active[i] = False  # done: its delta stays as it is now
                if on_step:
                    mean = lambda xs: sum(xs[i] for i in stepped) / len(stepped)  # noqa: E731
                    on_step(step + 1, hp.v_num_grad_steps, mean(losses), mean(prob),
                            {"nll": mean(nlls), "kl": mean(kls), "weight_decay": mean(wds)})
                if not any(active):
                    break
                going = torch.tensor(active, device=dev)
                loss[going].sum().backward()
                before = delta.detach().clone()
                opt.step()
                with torch.no_grad():
                    delta[~going] = before[~going]  # Adam's momentum would move a finished request
                    max_norm = hp.clamp_norm_factor * base  # (n,)
                    norms = delta.norm(dim=1)
                    delta.mul_(torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))[:, None])
    except torch.OutOfMemoryError:
        raise
    except RomeError:
        raise
    except RuntimeError as e:  # overflow inside the optimiser and the like: a numeric failure
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RomeError(f"the v* optimisation failed at step {step} (not finite: {first})") from None
    for i, res in enumerate(results):
        res.v_init = forward.v_init[i]
        res.v_star = (forward.v_init[i] + delta[i].detach()).float()
        if not torch.isfinite(res.v_star).all():
            raise ValueLossError("v* is not finite; the edit was stopped", i)
    return results


# ------------------------------------------------------------------ the update


@dataclass
class RomeOutput:
    delta: Delta
    v_star: torch.Tensor  # (out,)
    k_cur: torch.Tensor  # (in,)
    keys: Keys
    diagnostics: dict
    timings: dict


@torch.no_grad()
def module_output(lm: LoadedModel, layer: int, k: torch.Tensor) -> torch.Tensor:
    """The edited module applied to one key: ``W k + b`` in float32, ``(out,)``."""
    module = lm.spec.module(lm.model, layer)
    W = lm.spec.as_out_in(read_param(lm.model, lm.spec.weight_name(layer))).float()
    out = W @ k.float().to(W.device)
    bias = read_param(lm.model, lm.spec.down_proj_name(layer) + ".bias") if getattr(module, "bias", None) is not None else None
    return out + bias.float().to(out.device) if bias is not None else out


def _bare_target(lm: LoadedModel, request: EditRequest, hp: RomeHParams, keys: Keys, val: ValueResult,
                 on_step: StepFn | None, cancelled: Callable[[], bool] | None,
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The bare prompt's key and value for ``joint`` mode.

    A subject inside the prompt: its bare key and v* itself. A subject at position 0: the subject's
    token there cannot carry the edit (on the demo, delta at position 0 clamped to 4 ||v_init||
    lowers the bare prompt's loss only from 6.3 to 3.6, P(target) 0.03; issue-10 notes), so the
    bare prompt's *last* token is used instead (kmeng01/rome's ``fact_token="last"``), with its
    own v* optimised on the bare prompt alone.
    """
    if not keys.subject_first_token:
        return keys.bare, val.v_star, {"joint_bare_key": "subject_last"}
    last = len(encode(lm, request.text)) - 1
    k_last = module_inputs(lm, hp.layer, [request.text], [last])[0]
    v_last = optimise_value(lm, request, hp.layer, ["{}"], hp, on_step, cancelled, fact_token="last")
    return k_last, v_last.v_star, {"joint_bare_key": "last", "v_steps_bare": v_last.steps,
                                   "loss_curve_bare": v_last.losses}


def compute_rome(
    lm: LoadedModel,
    request: EditRequest,
    hp: RomeHParams,
    key_mode: str,
    C: torch.Tensor | None,
    templates: list[str],
    on_step: StepFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> RomeOutput:
    """The delta for ``request``; the model is the same at the end as at the start.

    ``original`` / ``consistent``: the rank-one ROME update ``(v* - W k* - b) u^T / (u . k*)``.
    ``joint``: the rank-two update of :func:`joint_update` mapping both the bare key and k_bar
    to v* (so that the bare prompt and prefixed prompts both give the new fact).
    """
    layer = hp.layer
    t0 = time.perf_counter()
    keys = compute_keys(lm, request, layer, templates)
    C_used = regularised(C, getattr(hp, "mom2_ridge", 0.0)) if (C is not None and hp.mom2_adjustment) else None
    ks = key_side(keys, C_used, key_mode)
    t1 = time.perf_counter()
    val = optimise_value(lm, request, layer, templates, hp, on_step, cancelled)
    t2 = time.perf_counter()
    cur_out = module_output(lm, layer, ks.k_cur)
    residual = val.v_star - cur_out  # (out,)
    if not math.isfinite(ks.denominator) or ks.denominator == 0.0:
        raise RomeError(f"the denominator u.k* is {ks.denominator}; no update can be formed")
    extra: dict = {}
    if key_mode == "joint":
        k_b, v_b, extra = _bare_target(lm, request, hp, keys, val, on_step, cancelled)
        K = torch.stack([k_b, keys.mean], 1)  # (in, 2)
        R = torch.stack([v_b - module_output(lm, layer, k_b), residual], 1)  # (out, 2)
        ju = joint_update(K, R, C_used, getattr(hp, "joint_lambda", 0.0))
        left, right = ju.left, ju.right
        extra.update({"joint_gram": ju.gram.tolist(), "joint_gram_condition": float(torch.linalg.cond(ju.gram))})
    else:
        left = residual / ks.denominator  # (out,)
        right = ks.u  # (in,)
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise RomeError("the update is not finite; the edit was stopped")
    W = read_param(lm.model, lm.spec.weight_name(layer))
    delta = Delta(param=lm.spec.weight_name(layer), transposed=lm.spec.transposed,
                  left=left.detach().cpu(), right=right.detach().cpu())
    update_norm = float(torch.linalg.matrix_norm(delta.dense().double())) if left.dim() == 2 \
        else float(left.norm() * right.norm())
    weight_norm = float(W.float().norm())
    den_consistent = float(ks.u @ keys.mean)  # u . k_bar: the denominator of consistent mode
    diagnostics = {
        "denominator": ks.denominator,
        "denominator_raw": ks.denominator_raw,
        "denominator_consistent": den_consistent,
        "denominator_ratio": ks.denominator / den_consistent if den_consistent else None,
        "numerator_norm": float(residual.norm() * ks.u.norm()),
        "update_norm": update_norm,
        "weight_norm": weight_norm,
        "relative_update": update_norm / weight_norm,
        "key_cosine": float(F.cosine_similarity(keys.bare, keys.mean, dim=0)),
        "key_norm_bare": float(keys.bare.norm()),
        "key_norm_mean": float(keys.mean.norm()),
        "key_position": keys.key_position,
        "subject_first_token": keys.subject_first_token,
        "loss_curve": val.losses,
        "target_prob_curve": val.target_probs,
        "v_steps": val.steps,
        "v_path": val.path,
        "v_init_norm": float(val.v_init.norm()),
        "v_star_norm": float(val.v_star.norm()),
        **extra,
    }
    timings = {"keys": t1 - t0, "v": t2 - t1, "v_setup": val.seconds_setup, "update": time.perf_counter() - t2}
    return RomeOutput(delta, val.v_star, ks.k_cur, keys, diagnostics, timings)
