"""MEMIT: many facts at once, spread over several MLP down-projections.

Meng et al. 2023, "Mass-Editing Memory in a Transformer" (kmeng01/memit, ``memit_main.py``).
For a batch of n requests:

1. z*_i: the residual stream the last edited layer must output at request i's subject (the v* of
   ``rome.optimise_value`` at that layer, see ``methods.target_shifts``);
2. for each edited layer l, ascending, with the keys K (in, n) recomputed on the model as
   updated so far and R (out, n) = (z* - z) / (number of layers left)::

       Delta_l = R K^T (lambda C + K K^T)^-1                 (float64)

   the minimiser of ||Delta K - R||^2 + lambda tr(Delta C Delta^T): the new facts against the
   preserved keys' second moment C = E[k k^T] (stats.py). It is stored as the factors R and
   (lambda C + K K^T)^-1 K, rank n.

Faithful to the reference by default (issue 19), each older choice kept as a named option:

* ``key_average="groups"``: a request's key is the mean over each template group, then over the
  groups (``compute_ks.py``; the bare prompt weighs 1/2); ``"flat"``: all templates alike.
* ``z_norm="residual"``, ``clamp_norm_factor=0.75``: z* - z is clamped to 0.75 times the residual
  stream's norm at the last edited layer and the weight decay is relative to it (``compute_z.py``);
  ``"mlp_output"``: ROME's ``||v_init||`` (the MLP output; with ROME's factor 4).
* ``early_stop_on="total"``, ``early_stop_loss=0.05``: the z* loop stops once the total loss
  (NLL + KL + weight decay) is below 0.05, as ``compute_z.py``; ``"nll"``: on the NLL alone.

lambda (``mom2_update_weight``): the share of R a layer writes depends on k^T C^-1 k, which is
about the key dimension d whatever the keys' scale (C is made of the same keys): the reference's
15000 for GPT-J (d = 16384) corresponds to about 15000 d'/16384 for a model of key dimension d'.
Per family the value is chosen by a recorded sweep (docs/notes/session-5/issue-19.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from auditor.engine.deltas import DeltaSet
from auditor.engine.hparams import HParamsError, RomeHParams
from auditor.engine.methods import (
    MethodContext,
    MethodOutput,
    load_method_hparams,
    spread_over_layers,
    symmetric_condition,
)
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest


@dataclass
class MemitHParams(RomeHParams):
    # `layer` (inherited) is set to max(layers): z* is optimised there. The v* fields configure z*.
    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6])  # edited layers (ascending)
    mom2_update_weight: float = 15000.0  # lambda: weight of C (preserved keys) against the new keys
    # --- issue 19: the reference's choices by default, each older behaviour an option
    key_average: str = "groups"  # "groups": mean per template group, then of the groups (kmeng01/memit
    #                              compute_ks.py: the bare prompt 1/2); "flat": every template alike (1/6)
    z_norm: str = "residual"  # clamp and weight decay of z* relative to ||residual at the last layer||
    #                           (kmeng01/memit compute_z.py); "mlp_output": ROME's ||v_init|| (before session 5)
    clamp_norm_factor: float = 0.75  # kmeng01/memit: ||z* - z|| <= 0.75 ||z|| (z_norm "residual")
    early_stop_on: str = "total"  # kmeng01/memit compute_z.py stops when the total loss < 5e-2


class MemitMethod:
    name = "memit"
    max_batch = None

    def hparams(self, lm: LoadedModel, overrides: dict | None = None) -> MemitHParams:
        hp = load_method_hparams(MemitHParams, self.name, lm, overrides)
        if not hp.mom2_adjustment:
            raise HParamsError("MEMIT needs the key statistics C (mom2_adjustment true)")
        return hp

    def layers(self, hp: MemitHParams) -> list[int]:
        return list(hp.layers)

    def compute(self, lm: LoadedModel, requests: list[EditRequest], hp: MemitHParams,
                ctx: MethodContext, shifts: tuple | None = None) -> MethodOutput:
        """``shifts``: ``methods.target_shifts``'s result when already computed (a lambda sweep)."""
        def solve(layer: int, _name: str, K: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, dict]:
            C = ctx.second_moment(layer).to(K.device, torch.float64)  # (in, in)
            A = hp.mom2_update_weight * C + K @ K.T  # (in, in)
            right = torch.linalg.solve(A, K)  # (in, n): Delta = R right^T = R K^T A^-1 (A symmetric)
            return right, {"condition": symmetric_condition(A)}

        parts, diags, vectors = spread_over_layers(lm, requests, hp, ctx, solve, shifts)
        return MethodOutput(DeltaSet(parts), list(hp.layers), {"layers": diags}, vectors.pop("per_request"),
                            {}, vectors)
