"""The watch bank: a fixed, seeded sample of same-type swaps watched over a whole sequence of edits.

The collateral audit (collateral.py) asks, for one edit, which other subjects it moved. A
sequence can move them a little at a time: each edit under the per-edit threshold, the sum not.
Before the first edit of a sequence, :func:`build` draws ``size`` same-type swaps for the
sequence's requests from the subject bank (model/subject_bank.py): the requests' prompts with
other subjects of their type, each with its request's ``target_new``, spread over the requests and
drawn with ``random.Random(seed)`` (same requests, same seed, same bank). :meth:`WatchBank.start`
scores them on the model as the sequence finds it; :meth:`WatchBank.spill` scores them again and
says which *moved* since then, by the issue's rule: P(target_new) rose by more than
``moved_prob_rise`` (0.25) or the greedy answer changed (``cumulative_changed``, and every moved
swap in ``spill_moved``). ``cumulative_spill``, what the sequence monitor (run/monitor.py) stops
on (``--stop-on spill=X``, default 0.5), counts those that moved *to their target*: P(target_new)
up by more than 0.25, or the greedy answer now the target's first token, and did not answer it
at the start (Italy's capital is Rome); the same distinction as the per-edit audit's
``spill_rate`` (collateral.py). Measured on the demo: one healthy edit,
"The capital of France is" -> Rome, turns the greedy answer of 11 of 20 watched capitals from
the true capital (" Copenhagen", " Oslo") into " the" with P(Rome) unchanged: changed 0.55,
spill 0.00. Counting changes would stop every sequence of capital edits at its first step (it
stopped tests/test_sequence.py's known-facts run); the joint France -> Asia edit moves 16 of 20
countries to Asia (spill 0.80; 19 changed, 0.95).

One scoring pass of ``size`` short prompts per step (collateral.target_scores).

Example::

    bank = build(load_bank(), requests, size=20, seed=0)
    bank.start(lm)
    ...  # edits
    bank.spill(lm)   # {"cumulative_spill": 0.05, "spill_moved": ["Spain"], "n_watch": 20}
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from auditor.engine.rome import encode_target
from auditor.measure.collateral import target_scores
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest
from auditor.model.subject_bank import SubjectBank

WATCH_SIZE = 20  # swaps in a sequence's watch bank
WATCH_SEED = 0
MOVED_PROB_RISE = 0.25  # the rule, as collateral.CollateralConfig.moved_prob_rise


@dataclass
class Swap:
    subject: str
    prompt: str  # the request's prompt filled with ``subject``
    target_new: str  # the request's new target
    request: int  # index of the request in the sequence
    p_start: float | None = None  # P(target_new) when the sequence started
    answer_start: int | None = None  # greedy first answer token then
    target_first: int | None = None  # target_new's first token


@dataclass
class WatchBank:
    swaps: list[Swap]
    seed: int = WATCH_SEED
    moved_prob_rise: float = MOVED_PROB_RISE
    started: bool = field(default=False)

    def start(self, lm: LoadedModel) -> None:
        """Score every swap on the model as it is now (the sequence's start)."""
        for s, (p, answer) in zip(self.swaps, self._scores(lm)):
            s.p_start, s.answer_start = p, answer
            s.target_first = encode_target(lm, s.target_new)[0]
        self.started = True

    def spill(self, lm: LoadedModel) -> dict[str, Any]:
        """Which swaps moved since :meth:`start`: ``cumulative_spill`` (the share moved to their
        target; None for an empty bank), ``cumulative_changed`` (the share moved by the issue's
        rule), ``spill_moved`` (every moved swap, ``toward_target`` marking the spilled ones) and
        ``n_watch``."""
        if not self.started:
            raise RuntimeError("WatchBank.spill before start")
        moved = []
        for s, (p, answer) in zip(self.swaps, self._scores(lm)):
            rose = p - (s.p_start or 0.0) > self.moved_prob_rise
            if rose or answer != s.answer_start:
                moved.append({"subject": s.subject, "prompt": s.prompt, "target_new": s.target_new,
                              "p_start": s.p_start, "p_now": p,
                              "answer_start": lm.tokenizer.decode([s.answer_start]),
                              "answer_now": lm.tokenizer.decode([answer]),
                              # a swap that already answered the target (Italy, for -> Rome) cannot spill
                              "toward_target": s.answer_start != s.target_first
                              and (rose or answer == s.target_first)})
        n = len(self.swaps)
        toward = sum(m["toward_target"] for m in moved)
        return {"cumulative_spill": toward / n if n else None, "cumulative_changed": len(moved) / n if n else None,
                "spill_moved": moved, "n_watch": n}

    def _scores(self, lm: LoadedModel) -> list[tuple[float, int]]:
        if not self.swaps:
            return []
        return target_scores(lm, [s.prompt for s in self.swaps], [s.target_new for s in self.swaps])

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "moved_prob_rise": self.moved_prob_rise,
                "swaps": [{"subject": s.subject, "prompt": s.prompt, "target_new": s.target_new,
                           "request": s.request} for s in self.swaps]}


def build(bank: SubjectBank, requests: list[EditRequest], size: int = WATCH_SIZE,
          seed: int = WATCH_SEED) -> WatchBank:
    """``size`` same-type swaps for ``requests``, none of them a subject the sequence edits.

    Every request offers ``ceil(size / len(requests))`` peers of its type (``bank.peers``, seeded
    per request); ``size`` distinct (prompt, target) pairs of that pool are drawn with ``random.Random(seed)``
    and kept in request order. Deterministic: same requests, size, seed and bank, same swaps.
    """
    if not requests or size < 1:
        return WatchBank([], seed)
    edited = {r.subject.strip().lower() for r in requests}
    per = -(-size // len(requests))
    pool: dict[tuple[str, str], Swap] = {}  # (prompt, target_new) -> its swap: each watched once
    for i, req in enumerate(requests):
        for subject in bank.peers(req, per, seed + i, exclude=edited):
            prompt = req.prompt.replace("{}", subject)
            pool.setdefault((prompt, req.target_new), Swap(subject, prompt, req.target_new, i))
    swaps = list(pool.values())
    picked = sorted(random.Random(seed).sample(range(len(swaps)), min(size, len(swaps))))
    return WatchBank([swaps[j] for j in picked], seed)
