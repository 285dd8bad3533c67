"""Default probes: what an edit did to the rest of the model when the request names nothing to measure.

Efficacy, generalization and locality (metrics.py) are measured on a request's optional fields: the
true target, the paraphrases and the neighbourhood. A new user leaves them empty and saw a dash for
all three (issue 21). :func:`with_default_probes` fills each EMPTY field (a field the user filled is
never touched) from the model itself, before the edit, and says which it filled:

* true target: the model's own greedy answer to the edit prompt, cut at the first punctuation
  (":func:`first_words`"); efficacy is then CounterFact's "new beats the old answer";
* paraphrases: the edit prompt behind :data:`PARAPHRASE_PREFIXES`, CounterFact's prefixed form
  (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", sec. 3.1 / appendix on
  generalization). They are weaker than real rephrasings (the v* optimisation also sees prefixed
  prompts), so they test that the edit holds in context, not that it holds under any wording;
* neighbourhood: :data:`NEIGHBOUR_PROMPTS` (facts about other subjects; those that name the edit's
  subject are left out), each expected to keep the model's own greedy answer: locality is the share
  of those answers' tokens the edited model still predicts (metrics.evaluate).

Example::

    request, filled = with_default_probes(lm, EditRequest("{} is in", "The Eiffel Tower", "Rome"))
    request.target_true, filled   # "Paris", {"target_true": "Paris", "paraphrases": 4, "neighborhood": 8}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from auditor.measure.metrics import greedy_answer
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest, Probe

PARAPHRASE_PREFIXES = ("Here is a fact. {}", "Fact: {}", "Trivia time! {}", "Read this and remember it. {}")
NEIGHBOUR_PROMPTS = (
    "The capital of France is",
    "The Eiffel Tower is located in the city of",
    "The largest planet in the solar system is",
    "The chemical symbol for gold is",
    "The currency of Japan is the",
    "Mount Everest is located in",
    "Romeo and Juliet was written by",
    "The mother tongue of Danielle Darrieux is",
    "Albert Einstein was born in",
    "The Great Wall is located in",
)
N_NEIGHBOURS = 8
ANSWER_TOKENS = 6  # enough for a name of two or three words


def first_words(answer: str, max_words: int = 3) -> str:
    """The answer's head: up to the first punctuation or line break, at most ``max_words`` words."""
    head = re.split(r"[.,;:!?\n()\"]", answer.strip(), maxsplit=1)[0]
    return " ".join(head.split()[:max_words])


def with_default_probes(lm: LoadedModel, request: EditRequest, *,
                        answers: dict[str, str] | None = None) -> tuple[EditRequest, dict[str, Any]]:
    """``request`` with its empty optional fields filled from the model as it is now (before the
    edit); and what was filled: ``{"target_true": str, "paraphrases": n, "neighborhood": n}``.

    ``answers`` caches the neighbour prompts' answers across the requests of one batch (the model
    must not change in between)."""
    answers = {} if answers is None else answers

    def answer(prompt: str) -> str:
        if prompt not in answers:
            answers[prompt] = first_words(greedy_answer(lm, prompt, ANSWER_TOKENS))
        return answers[prompt]

    filled: dict[str, Any] = {}
    changes: dict[str, Any] = {}
    if request.target_true is None:
        true = first_words(greedy_answer(lm, request.text, ANSWER_TOKENS))
        if true and true.casefold() != request.target_new.strip().casefold():
            changes["target_true"] = filled["target_true"] = true
    if not request.paraphrases:
        changes["paraphrases"] = [p.format(request.text) for p in PARAPHRASE_PREFIXES]
        filled["paraphrases"] = len(PARAPHRASE_PREFIXES)
    if not request.neighborhood:
        subject = request.subject.casefold()
        prompts = [p for p in NEIGHBOUR_PROMPTS if subject not in p.casefold() and p != request.text][:N_NEIGHBOURS]
        probes = [Probe(p, a) for p in prompts if (a := answer(p))]
        if probes:
            changes["neighborhood"] = probes
            filled["neighborhood"] = len(probes)
    return (dataclasses.replace(request, **changes) if changes else request), filled


def describe(filled: dict[str, Any]) -> str:
    """One line for the ledger note and the window: what the measurements were taken on."""
    parts = []
    if "target_true" in filled:
        parts.append(f"true target {filled['target_true']!r} (the model's answer before the edit)")
    if "paraphrases" in filled:
        parts.append(f"{filled['paraphrases']} prefixed paraphrases")
    if "neighborhood" in filled:
        parts.append(f"{filled['neighborhood']} neighbour facts keeping the model's answers")
    return ("default probes: " + "; ".join(parts)) if parts else ""
