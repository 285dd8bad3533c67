"""Edit quality, as CounterFact (Meng et al. 2022) and EasyEdit (Yao et al. 2023) define it.

* efficacy (reliability): on the edit prompt the new target beats the true one (mean
  token log-probability, CounterFact's "efficacy score"); without a true target,
  EasyEdit's teacher-forced token accuracy of the new target;
* generalization: the same on each paraphrase, averaged;
* locality: on neighbourhood prompts, the share of answer tokens whose greedy
  (teacher-forced) prediction is the same after the edit as before it;
* portability: teacher-forced token accuracy of each portability answer after the edit;
* target probability: the geometric mean of the new target's token probabilities.

All scores come from one batched, gradient-free forward pass per prompt set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checkpoint import LoadedModel
from .requests import EditRequest, Probe
from .rome import encode, encode_target, pad_batch, pad_id


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


@torch.no_grad()
def score(lm: LoadedModel, prompts: list[str], targets: list[str], batch_size: int = 16) -> list[TargetScore]:
    """Teacher-forced scores of ``targets[i]`` after ``prompts[i]``."""
    out: list[TargetScore] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start:start + batch_size], targets[start:start + batch_size]))
        pairs = [(encode(lm, p), encode_target(lm, t)) for p, t in chunk]
        ids, mask = pad_batch([p + t for p, t in pairs], pad_id(lm), lm.device)
        logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        for i, (p, t) in enumerate(pairs):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(t), device=logits.device)
            logp = torch.log_softmax(logits[i, pos].float(), -1)  # (L, V)
            tgt = torch.tensor(t, device=logits.device)
            out.append(TargetScore(
                mean_logp=float(logp.gather(1, tgt[:, None]).mean()),
                predicted=logp.argmax(-1).tolist(),
                target=t,
            ))
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


def evaluate(
    lm: LoadedModel,
    request: EditRequest,
    *,
    before_neighborhood: list[list[int]] | None,
    prefix_template: str | None,
) -> dict:
    """Scores of the model as it is now. ``prefix_template`` ("... {}") is used for the
    prefixed edit prompt when the subject starts the prompt (Yang et al. 2024)."""
    new, true = request.target_new, request.target_true
    edit = score(lm, [request.text], [new])[0]
    m: dict = {
        "efficacy": success(lm, [request.text], new, true)[0],
        "target_prob": edit.prob,
        "generalization": _mean(success(lm, request.paraphrases, new, true)),
        "locality": None,
        "portability": None,
        "prefixed_efficacy": None,
    }
    if request.neighborhood and before_neighborhood is not None:
        after = locality_reference(lm, request.neighborhood)
        shares = [sum(a == b for a, b in zip(x, y)) / len(x) for x, y in zip(before_neighborhood, after)]
        m["locality"] = _mean(shares)
    if request.portability:
        ps = score(lm, [p.prompt for p in request.portability], [p.target for p in request.portability])
        m["portability"] = _mean([s.accuracy for s in ps])
    if prefix_template is not None:
        prefixed = prefix_template.replace("{}", request.text, 1)
        m["prefixed_efficacy"] = success(lm, [prefixed], new, true)[0]
        m["prefixed_target_prob"] = score(lm, [prefixed], [new])[0].prob
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
