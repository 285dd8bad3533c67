"""Ask the model: one prompt's greedy continuation by the current model and by an earlier state.

The current model is the workspace's weights as they are. An earlier state is the model right after
ledger entry ``upto`` (``upto=0``: the base checkpoint, every applied edit's delta removed). It is
built in place and undone bit for bit: every parameter that an edit in effect now or then touches
is copied aside, rebuilt from the base tensor plus the deltas in effect at ``upto`` in ledger order
(``Workspace._rebuild``: the same operations as a revert or a replay, so the state is the one a
replay to ``upto`` gives), and copied back afterwards, whatever happens in between. So a question
changes neither the weights nor the fingerprint nor the ledger.

Why it exists (issue 21): after "The capital of Canada is -> Sydney", "The capital city of Canada
is" said Sydney and "Canada's capital city is" said New York City; the user could only find out by
retyping the edit request. Asking base and edited model side by side shows it in one look.

Example::

    a = ask(ws, "The capital city of Canada is", max_new_tokens=8)
    a.base, a.current, a.edits_in_effect      # ("Ottawa...", "Sydney...", 1)
    with weights_at(ws, 0):                   # the base model, restored on exit
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from auditor.measure.metrics import greedy_answer
from auditor.model.offload import restore_params, snapshot_params
from auditor.record.ledger import entry_params

if TYPE_CHECKING:
    from auditor.run.workspace import Workspace


@dataclass
class Answers:
    prompt: str
    current: str  # the model as it is now
    base: str  # the model right after entry `upto` (0: the base checkpoint)
    upto: int  # 0 for the base, else the ledger entry whose state answered `base`
    edits_in_effect: int  # applied, not reverted edits in the current model
    edits_then: int  # the same at `upto`

    @property
    def same(self) -> bool:
        return self.current == self.base


@contextlib.contextmanager
def weights_at(ws: Workspace, upto: int = 0) -> Iterator[int]:
    """The model as it was right after entry ``upto`` (0: the base), restored bit for bit on exit.

    Yields the number of edits in effect at ``upto``. Run it where the model runs (the worker
    thread): nothing else may use the model meanwhile.
    """
    head = int(ws.state()["head"])
    upto = max(0, min(int(upto), head))
    now, then = ws.ledger.active_at(head), ws.ledger.active_at(upto) if upto else []
    params = sorted({p for e in (*now, *then) for p in entry_params(e)})
    saved = snapshot_params(ws.lm.model, params)  # offloaded weights: read from their store
    try:
        for p in params:
            ws._rebuild(p, upto=upto)  # base tensor + the deltas in effect at `upto`, in ledger order
        yield len(then)
    finally:
        restore_params(ws.lm.model, saved)  # in memory or in the offload store


def ask(ws: Workspace, prompt: str, *, max_new_tokens: int = 8, upto: int = 0) -> Answers:
    """Greedy continuations of ``prompt`` by the current model and by the state after ``upto``."""
    current = greedy_answer(ws.lm, prompt, max_new_tokens)
    n_now = len(ws.ledger.active_at(int(ws.state()["head"])))
    with weights_at(ws, upto) as n_then:
        base = greedy_answer(ws.lm, prompt, max_new_tokens) if (n_now or n_then) else current
    return Answers(prompt, current, base, int(upto), n_now, n_then)
