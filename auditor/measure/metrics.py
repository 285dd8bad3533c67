"""Edit quality, as CounterFact (Meng et al. 2022) and EasyEdit (Yao et al. 2023) define it.

* efficacy: on the edit prompt the new target beats the true one (mean token
  log-probability, CounterFact's "efficacy score"); None without a true target.
  EasyEdit's teacher-forced token accuracy of the new target (its "reliability") is a
  second measurement with its own name, ``rewrite_accuracy``;
* generalization: the same on each paraphrase, averaged (``paraphrase_accuracy``: EasyEdit's);
* locality: on neighbourhood prompts, the share of answer tokens whose greedy
  (teacher-forced) prediction is the same after the edit as before it;
* portability: teacher-forced token accuracy of each portability answer after the edit;
* target probability: the geometric mean of the new target's token probabilities.

All scores of one evaluation come from one batched, gradient-free pass (:func:`evaluate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from auditor.engine.rome import encode, encode_target, pad_batch, pad_id
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest, Probe


@dataclass
class TargetScore:
    mean_logp: float  # mean log-probability of the target's tokens
    predicted: list[int]  # greedy prediction at each target position (teacher-forced)
    target: list[int]

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.predicted, self.target)) / len(self.target)

    @property
    def prob(self) -> float:
        return math.exp(self.mean_logp)


def target_logprobs(lm: LoadedModel, pairs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Teacher-forced log-probabilities, float32 ``(sum of target lengths, V)``, at the positions
    that predict each ``(prompt ids, target ids)`` pair's target tokens, in order, from one batched
    pass: the trunk on every pair, the output head only at those positions (the logits of every
    position, prompts x tokens x vocabulary, are never held)."""
    head = lm.model.get_output_embeddings()
    ids, mask = pad_batch([p + t for p, t in pairs], pad_id(lm), lm.device)
    hidden = lm.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    rows = torch.tensor([i for i, (_, t) in enumerate(pairs) for _ in t], device=hidden.device)
    cols = torch.tensor([len(p) - 1 + j for p, t in pairs for j in range(len(t))], device=hidden.device)
    return torch.log_softmax(head(hidden[rows, cols].to(head.weight.dtype)).float(), -1)


@torch.no_grad()
def score(lm: LoadedModel, prompts: list[str], targets: list[str], batch_size: int = 16) -> list[TargetScore]:
    """Teacher-forced scores of ``targets[i]`` after ``prompts[i]`` (:func:`target_logprobs`)."""
    out: list[TargetScore] = []
    for start in range(0, len(prompts), batch_size):
        pairs = [(encode(lm, p), encode_target(lm, t))
                 for p, t in zip(prompts[start:start + batch_size], targets[start:start + batch_size])]
        logp = target_logprobs(lm, pairs)
        tokens = torch.tensor([x for _, t in pairs for x in t], device=logp.device)
        tok_logp = logp.gather(1, tokens[:, None])[:, 0]
        greedy = logp.argmax(-1).tolist()
        at = 0
        for _, t in pairs:
            out.append(TargetScore(mean_logp=float(tok_logp[at:at + len(t)].mean()), predicted=greedy[at:at + len(t)],
                                   target=t))
            at += len(t)
    return out


def success(lm: LoadedModel, prompts: list[str], new: str, true: str | None) -> list[float]:
    """Per prompt: 1/0 new beats true (CounterFact), or token accuracy of new (no true target)."""
    if not prompts:
        return []
    if true is None:
        return [s.accuracy for s in score(lm, prompts, [new] * len(prompts))]
    scores = score(lm, prompts + prompts, [new] * len(prompts) + [true] * len(prompts))
    n = len(prompts)
    return [float(scores[i].mean_logp > scores[n + i].mean_logp) for i in range(n)]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def locality_reference(lm: LoadedModel, probes: list[Probe]) -> list[list[int]]:
    """Greedy predictions on the neighbourhood prompts before the edit."""
    return [s.predicted for s in score(lm, [p.prompt for p in probes], [p.target for p in probes])]


class _Plan:
    """(prompt, target) pairs of several measurements, scored in one batched pass."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.targets: list[str] = []

    def add(self, prompts: list[str], targets: list[str]) -> slice:
        start = len(self.prompts)
        self.prompts += prompts
        self.targets += targets
        return slice(start, len(self.prompts))

    def add_success(self, prompts: list[str], new: str, true: str | None) -> tuple[slice, slice | None]:
        n = len(prompts)
        return self.add(prompts, [new] * n), (self.add(prompts, [true] * n) if true is not None else None)


def _beats(scores: list[TargetScore], new: slice, true: slice | None) -> list[float] | None:
    """CounterFact's success per prompt (1/0: new beats true), None without a true target."""
    if true is None:
        return None
    return [float(a.mean_logp > b.mean_logp) for a, b in zip(scores[new], scores[true])]


def evaluate(
    lm: LoadedModel,
    request: EditRequest,
    *,
    before_neighborhood: list[list[int]] | None,
    prefix_template: str | None = None,
    prefix_templates: list[str] | None = None,
) -> dict:
    """Scores of the model as it is now, from one batched pass. Each key has one definition:

    * ``efficacy``: CounterFact's success on the edit prompt (1/0: new beats true);
      None without a true target;
    * ``rewrite_accuracy``: EasyEdit's teacher-forced token accuracy of the new target on the
      edit prompt (EasyEdit calls it reliability / rewrite_acc);
    * ``generalization``: CounterFact's success averaged over the paraphrases (None without a
      true target or paraphrases); ``paraphrase_accuracy``: EasyEdit's token accuracy averaged;
    * ``prefixed_efficacy``: CounterFact's success averaged over ``prefix_templates`` ("... {}"),
      prefixes the v* optimisation did not see (Yang et al. 2024 test first-token subjects
      behind a prefix); ``prefixed_target_prob`` the mean target probability behind them;
    * ``target_prob``, ``locality``, ``portability``: see the module docstring.
    """
    new, true = request.target_new, request.target_true
    prefixes = list(prefix_templates or ([prefix_template] if prefix_template else []))
    plan = _Plan()
    edit_new, edit_true = plan.add_success([request.text], new, true)
    para_new, para_true = plan.add_success(list(request.paraphrases), new, true)
    neigh = plan.add([p.prompt for p in request.neighborhood], [p.target for p in request.neighborhood])
    port = plan.add([p.prompt for p in request.portability], [p.target for p in request.portability])
    prefixed = [t.replace("{}", request.text, 1) for t in prefixes]
    pre_new, pre_true = plan.add_success(prefixed, new, true)
    scores = score(lm, plan.prompts, plan.targets, batch_size=32)
    edit = scores[edit_new][0]
    efficacy = _beats(scores, edit_new, edit_true)
    para = _beats(scores, para_new, para_true)
    m: dict = {
        "efficacy": efficacy[0] if efficacy else None,
        "rewrite_accuracy": edit.accuracy,
        "target_prob": edit.prob,
        "generalization": _mean(para) if para else None,
        "paraphrase_accuracy": _mean([s.accuracy for s in scores[para_new]]),
        "locality": None,
        "portability": _mean([s.accuracy for s in scores[port]]),
        "prefixed_efficacy": None,
    }
    if request.neighborhood and before_neighborhood is not None:
        after = [s.predicted for s in scores[neigh]]
        shares = [sum(a == b for a, b in zip(x, y)) / len(x) for x, y in zip(before_neighborhood, after)]
        m["locality"] = _mean(shares)
    if prefixed:
        m["prefixed_efficacy"] = _mean(_beats(scores, pre_new, pre_true) or []) if true is not None else None
        m["prefixed_target_prob"] = _mean([s.prob for s in scores[pre_new]])
        m["prefixed_n"] = len(prefixed)
    return m


@torch.no_grad()
def greedy_answer(lm: LoadedModel, prompt: str, max_new_tokens: int = 8) -> str:
    """The model's greedy continuation of ``prompt`` (what the window shows as "current answer")."""
    ids = torch.tensor([encode(lm, prompt)], device=lm.device)
    out = lm.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
        do_sample=False, pad_token_id=pad_id(lm),
    )
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
