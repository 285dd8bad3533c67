"""ROME: one fact written into one MLP down-projection as a rank-one update.

References: Meng et al. 2022, "Locating and Editing Factual Associations in GPT"
(kmeng01/rome: ``compute_u.py``, ``compute_v.py``, ``rome_main.py``); Yang et al.
2024, "Understanding the Collapse of LLMs in Model Editing" (arXiv 2406.11263).

With W the edited matrix in ``[out, in]`` orientation and b its bias (if any)::

    k_i      key: the down-projection's input at the subject's last token of prompt i
    k_bar    mean of k_i over the context templates ("{}" and random prefixes)
    u        C^-1 k_bar, scaled to unit length (C = E[k k^T], see stats.py)
    k*       the *current* key: the bare prompt's key in ``original`` mode (the reference
             implementation), k_bar in ``consistent`` mode (Yang et al.'s fix, r-ROME)
    v*       the module output that makes the model say the new target (optimised)
    W'       W + (v* - (W k* + b)) u^T / (u . k*)         so that W' k* + b = v*

``u . k*`` is *the denominator*. When the subject is the prompt's first token, the
bare key sits at position 0 and is anomalous; in ``original`` mode the denominator
then collapses and the update explodes.

Nothing here changes the model: :func:`compute_rome` returns the delta and the
caller applies it (``deltas.apply_delta``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoint import LoadedModel
from .deltas import Delta
from .hparams import RomeHParams
from .requests import EditRequest

CONTEXT_STARTS = ("The", "Therefore", "Because", "I", "You")  # as kmeng01/rome's context generator


class RomeError(RuntimeError):
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


@torch.no_grad()
def generate_context_templates(lm: LoadedModel, n: int, length: int, seed: int) -> list[str]:
    """``["{}"]`` plus ``n`` prefixes sampled from the model (top-5, seeded) ending in ``". {}"``.

    Sampling draws from a CPU generator, so the same model gives the same prefixes on
    any device up to floating-point differences of the logits.
    """
    gen = torch.Generator().manual_seed(seed)
    templates = ["{}"]
    for i in range(n):
        ids = encode(lm, CONTEXT_STARTS[i % len(CONTEXT_STARTS)])
        for _ in range(length):
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False).logits[0, -1]
            if not torch.isfinite(logits).all():
                raise RomeError("the model's logits are not finite (NaN or inf in the weights?); no edit was made")
            top = torch.topk(logits.float().cpu(), 5)
            choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen).item()
            ids.append(int(top.indices[choice]))
        text = lm.tokenizer.decode(ids, skip_special_tokens=True)
        text = " ".join(text.replace("{", " ").replace("}", " ").split())
        templates.append(text + ". {}")
    return templates


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


def key_side(keys: Keys, C: torch.Tensor | None, key_mode: str) -> KeySide:
    k_bar = keys.mean
    if C is not None:
        u_raw = torch.linalg.solve(C.to(k_bar.device, torch.float64), k_bar.double()).float()
    else:
        u_raw = k_bar.clone()
    u = u_raw / u_raw.norm()
    if key_mode == "original":
        k_cur = keys.bare
    elif key_mode == "consistent":
        k_cur = k_bar
    else:
        raise ValueError(f"unknown key mode {key_mode!r}; use 'consistent' or 'original'")
    return KeySide(u, u_raw, k_cur, float(u @ k_cur), float(u_raw @ k_cur))


# ------------------------------------------------------------------ v*


@dataclass
class ValueResult:
    v_star: torch.Tensor  # (out,) optimised module output
    v_init: torch.Tensor  # (out,) module output at the first template before optimisation
    losses: list[float] = field(default_factory=list)  # total loss per step
    target_probs: list[float] = field(default_factory=list)
    steps: int = 0


StepFn = Callable[[int, int, float, float, dict], None]  # (step, total, loss, target_prob, terms)


def optimise_value(
    lm: LoadedModel,
    request: EditRequest,
    layer: int,
    templates: list[str],
    hp: RomeHParams,
    on_step: StepFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ValueResult:
    """Find v* = v_init + delta making the model say ``target_new`` after every template."""
    target = encode_target(lm, request.target_new)
    prompts = [t.replace("{}", request.prompt, 1) for t in templates]
    seqs, lookups, spans = [], [], []
    for p in prompts:
        ids = encode(lm, p.replace("{}", request.subject, 1))
        seqs.append(ids + target[:-1])
        lookups.append(subject_index(lm, p, request.subject))
        spans.append(len(ids) - 1)  # logits at spans[i] + j predict target[j]
    kl_template = "{} is a"
    seqs.append(encode(lm, request.subject + " is a"))
    lookups.append(subject_index(lm, kl_template, request.subject))
    n_rw = len(prompts)
    ids, mask = pad_batch(seqs, pad_id(lm), lm.device)
    target_t = torch.tensor(target, device=lm.device)
    module = lm.spec.module(lm.model, layer)
    out_dim = lm.spec.value_dim(lm.model, layer)
    delta = torch.zeros(out_dim, device=lm.device, dtype=torch.float32, requires_grad=True)
    v_init: list[torch.Tensor] = []
    rows = torch.arange(len(seqs), device=lm.device)
    look = torch.tensor(lookups, device=lm.device)

    def edit_output(_mod, _args, out):
        if not v_init:
            v_init.append(out[0, lookups[0]].detach().float().clone())
        out = out.clone()
        out[rows, look] = out[rows, look] + delta.to(out.dtype)
        return out

    gather_pos = torch.stack([torch.arange(len(target), device=lm.device) + s for s in spans])  # (n_rw, L)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    trunk = lm.model.base_model  # the decoder stack with its final norm (no LM head)
    head = lm.model.get_output_embeddings()
    res = ValueResult(v_star=torch.empty(0), v_init=torch.empty(0))
    kl_init: torch.Tensor | None = None
    handle = module.register_forward_hook(edit_output)
    step = 0
    try:
        with torch.enable_grad():
            for step in range(hp.v_num_grad_steps):
                if cancelled is not None and cancelled():
                    raise Cancelled
                opt.zero_grad()
                hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # (B, T, H)
                width = hidden.shape[-1]
                sel = hidden[:n_rw].gather(1, gather_pos.unsqueeze(-1).expand(-1, -1, width))  # (n_rw, L, H)
                logp = torch.log_softmax(head(sel).float(), -1)  # (n_rw, L, V): the head only where needed
                tok_logp = logp.gather(2, target_t.expand(n_rw, -1).unsqueeze(-1)).squeeze(-1)  # (n_rw, L)
                nll_each = -tok_logp.mean(1)  # (n_rw,)
                nll = nll_each.mean()
                kl_logp = torch.log_softmax(head(hidden[n_rw, lookups[n_rw]]).float(), -1)
                if kl_init is None:
                    kl_init = kl_logp.detach().clone()
                kl = hp.kl_factor * F.kl_div(kl_logp, kl_init, log_target=True, reduction="sum")
                wd = hp.v_weight_decay * (delta.norm() / v_init[0].norm() ** 2)
                loss = nll + kl + wd
                lv = loss.item()
                if not math.isfinite(lv):
                    raise RomeError(f"the v* loss became {lv} at step {step}; the edit was stopped")
                prob = torch.exp(-nll_each.detach()).mean().item()
                res.losses.append(lv)
                res.target_probs.append(prob)
                res.steps = step + 1
                if on_step:
                    on_step(step + 1, hp.v_num_grad_steps, lv, prob,
                            {"nll": nll.item(), "kl": kl.item(), "weight_decay": wd.item()})
                if nll.item() < hp.early_stop_loss or step == hp.v_num_grad_steps - 1:
                    break
                loss.backward()
                opt.step()
                with torch.no_grad():
                    max_norm = hp.clamp_norm_factor * v_init[0].norm()
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # overflow inside the optimiser and the like: a numeric failure
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RomeError(f"the v* optimisation failed at step {step} (not finite: {first})") from None
    finally:
        handle.remove()
    res.v_init = v_init[0]
    res.v_star = (v_init[0] + delta.detach()).float()
    if not torch.isfinite(res.v_star).all():
        raise RomeError("v* is not finite; the edit was stopped")
    return res


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
    W = lm.spec.as_out_in(module.weight).float()
    out = W @ k.float().to(W.device)
    bias = getattr(module, "bias", None)
    return out + bias.float() if bias is not None else out


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
    """The rank-one delta for ``request``; the model is the same at the end as at the start."""
    layer = hp.layer
    t0 = time.perf_counter()
    keys = compute_keys(lm, request, layer, templates)
    ks = key_side(keys, C if hp.mom2_adjustment else None, key_mode)
    t1 = time.perf_counter()
    val = optimise_value(lm, request, layer, templates, hp, on_step, cancelled)
    t2 = time.perf_counter()
    cur_out = module_output(lm, layer, ks.k_cur)
    residual = val.v_star - cur_out  # (out,)
    if not math.isfinite(ks.denominator) or ks.denominator == 0.0:
        raise RomeError(f"the denominator u.k* is {ks.denominator}; no update can be formed")
    left = residual / ks.denominator  # (out,)
    right = ks.u  # (in,)
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise RomeError("the update is not finite; the edit was stopped")
    W = lm.spec.weight(lm.model, layer)
    delta = Delta(param=lm.spec.weight_name(layer), transposed=lm.spec.transposed,
                  left=left.detach().cpu(), right=right.detach().cpu())
    diagnostics = {
        "denominator": ks.denominator,
        "denominator_raw": ks.denominator_raw,
        "numerator_norm": float(residual.norm() * ks.u.norm()),
        "update_norm": float(left.norm() * right.norm()),
        "weight_norm": float(W.float().norm()),
        "key_cosine": float(F.cosine_similarity(keys.bare, keys.mean, dim=0)),
        "key_norm_bare": float(keys.bare.norm()),
        "key_norm_mean": float(keys.mean.norm()),
        "key_position": keys.key_position,
        "subject_first_token": keys.subject_first_token,
        "loss_curve": val.losses,
        "target_prob_curve": val.target_probs,
        "v_steps": val.steps,
        "v_init_norm": float(val.v_init.norm()),
        "v_star_norm": float(val.v_star.norm()),
    }
    timings = {"keys": t1 - t0, "v": t2 - t1, "update": time.perf_counter() - t2}
    return RomeOutput(delta, val.v_star, ks.k_cur, keys, diagnostics, timings)
