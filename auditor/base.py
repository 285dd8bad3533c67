"""The few types every layer of ``auditor`` shares; this module imports nothing from the package.

- :class:`AuditorError`: the base class of every error the product raises on purpose (a bad
  checkpoint, request, ledger, ...). Each layer subclasses it (``CheckpointError``,
  ``HParamsError``, ``LedgerError``, ...), so a caller can tell the product's own errors from bugs.
- :class:`Progress`: one progress event of a long job (key statistics, v* steps, a trace), sent to
  a :data:`ProgressFn` callback that the window charts and the command line prints.
- :class:`EditCancelled`: the job's cancel event was set; whatever the job was changing is as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


class AuditorError(Exception):
    """An error the product raises on purpose: the input, the file or the state is wrong, not the program."""


class EditCancelled(Exception):
    """The cancel event was set; the weights are as they were."""


@dataclass
class Progress:
    phase: str  # "stats" | "keys" | "v" | "update" | "eval" | "ppl" | "trace" | ...
    step: int | None = None
    total: int | None = None
    loss: float | None = None  # phase "v": total loss of the v* step
    target_prob: float | None = None  # phase "v": mean P(target_new) over the prefixed prompts
    message: str = ""
    terms: dict[str, float] = field(default_factory=dict)  # phase "v": nll, kl, weight_decay


ProgressFn = Callable[[Progress], None]
