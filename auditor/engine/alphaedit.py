"""AlphaEdit: MEMIT's update projected onto the null space of the preserved keys.

Fang et al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models" (jianghoucheng/AlphaEdit, ``AlphaEdit_main.py``). Per edited layer:

* P = U0 U0^T with U0 eigenvectors of C = E[k k^T] (stats.py) of the smallest eigenvalues: the
  directions the preserved keys K0 (almost) never take. Which ones (``nullspace_rule``):
  ``"threshold"`` (default, the reference's): eigenvalues below ``nullspace_threshold`` (2e-2,
  absolute: on the demo model 1102-1340 of 1536 directions, holding 31-55% of tr(C), recorded per
  layer); ``"energy"`` (option, issue 19): as many as hold together at most ``nullspace_energy`` of
  tr(C), i.e. tr(P C) / tr(C) <= that share: scale-free, since eigenvalues scale with the keys'
  square. Measured on the demo (docs/notes/session-8/issue-19.md), a small share is worse on held-out
  text, not better: the small end of C's spectrum is sampling noise, and an update forced into it
  is large (held-out change 0.20 at 1%, 0.085 at 20%, 0.075 with the reference's rule);
* with K1 (in, n) this batch's keys, R (out, n) its share of z* - z (as in MEMIT) and Kp Kp^T the
  running sum of earlier batches' keys (the *key memory*)::

      Delta = R K1^T P (Kp Kp^T P + K1 K1^T P + L2 I)^-1          (float64)

  Every column of ``Delta^T`` lies in the range of P, so ``Delta k0 = 0`` for every k0 with
  P k0 = 0: the preserved knowledge is left exactly where it was, up to the energy P holds.

Recorded per layer: the null space's dimension, its share of tr(C) and, measured rather than
implied, the relative change of the layer's output on held-out text keys (methods.py,
``held_out_change``; ``Delta (I - P) = 0`` holds by construction and would show nothing).

After the update the batch's keys are recomputed at every edited layer and recorded with the
delta (``DeltaSet.tensors["keys.<param>"]``); the key memory is the sum of ``K K^T`` over the
applied, not reverted AlphaEdit batches in ledger order, so reverting a batch removes its keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from auditor.engine.deltas import DeltaSet
from auditor.engine.hparams import HParamsError
from auditor.engine.memit import MemitHParams
from auditor.engine.methods import MethodContext, MethodOutput, load_method_hparams, spread_over_layers
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest

KEYS_PREFIX = "keys."  # DeltaSet.tensors name of a layer's keys: "keys.<param>" (in, n) float32


@dataclass
class AlphaEditHParams(MemitHParams):
    nullspace_rule: str = "threshold"  # eigenvalues below nullspace_threshold (jianghoucheng/AlphaEdit's
    #                                    absolute rule); "energy": P holds <= nullspace_energy of tr(C)
    nullspace_energy: float = 0.01  # share of tr(C) the null space may hold (scale-free)
    nullspace_threshold: float = 2e-2  # rule "threshold": eigenvalues of C below this span the null space
    L2: float = 10.0  # ridge term of the inverted matrix


def projector(C: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P (in, in) float64 onto the eigenvectors of C with eigenvalue < threshold; and their number."""
    ev, U = torch.linalg.eigh(C.double())  # ascending eigenvalues
    U0 = U[:, ev < threshold]  # (in, d)
    return U0 @ U0.T, U0.shape[1]


def energy_projector(C: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int]:
    """P (in, in) float64 onto the most eigenvectors of C, smallest eigenvalues first, whose
    eigenvalues sum to at most ``fraction`` of tr(C) (tr(P C) / tr(C) <= fraction); and their number."""
    ev, U = torch.linalg.eigh(C.double())  # ascending
    ev = ev.clamp(min=0.0)  # rounding can leave the smallest slightly negative
    share = torch.cumsum(ev, 0) / ev.sum()
    d = int((share <= fraction).sum())
    U0 = U[:, :d]  # (in, d)
    return U0 @ U0.T, d


def null_space(C: torch.Tensor, hp: "AlphaEditHParams") -> tuple[torch.Tensor, dict]:
    """P of ``hp.nullspace_rule`` and what it holds: its dimension and tr(P C) / tr(C)."""
    if hp.nullspace_rule == "energy":
        P, d = energy_projector(C, hp.nullspace_energy)
    elif hp.nullspace_rule == "threshold":
        P, d = projector(C, hp.nullspace_threshold)
    else:
        raise HParamsError(f"unknown nullspace_rule {hp.nullspace_rule!r}; use 'energy' or 'threshold'")
    C64 = C.double()
    held = float(torch.trace(P @ C64) / torch.trace(C64)) if d else 0.0
    return P, {"null_space_dim": d, "null_space_energy": held, "nullspace_rule": hp.nullspace_rule}


def key_memory_add(memory: dict[str, torch.Tensor], delta: DeltaSet) -> None:
    """``memory[param] += K K^T`` (float64) for every layer's keys recorded in ``delta``."""
    for name, K in delta.tensors.items():
        if name.startswith(KEYS_PREFIX):
            param = name[len(KEYS_PREFIX):]
            K = K.double()
            kk = K @ K.T
            memory[param] = memory[param] + kk if param in memory else kk


class AlphaEditMethod:
    name = "alphaedit"
    max_batch = None

    def __init__(self) -> None:
        self._P: dict[tuple, tuple[torch.Tensor, int]] = {}

    def hparams(self, lm: LoadedModel, overrides: dict | None = None) -> AlphaEditHParams:
        hp = load_method_hparams(AlphaEditHParams, self.name, lm, overrides)
        return hp

    def layers(self, hp: AlphaEditHParams) -> list[int]:
        return list(hp.layers)

    def compute(self, lm: LoadedModel, requests: list[EditRequest], hp: AlphaEditHParams,
                ctx: MethodContext, shifts: tuple | None = None) -> MethodOutput:
        """``shifts``: ``methods.target_shifts``'s result when already computed (a sweep of the null space)."""
        def solve(layer: int, name: str, K: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, dict]:
            C = ctx.second_moment(layer)
            P, held = null_space(C, hp)
            P = P.to(K.device)
            memory = ctx.key_memory.get(name)
            S = K @ K.T if memory is None else memory.to(K.device, torch.float64) + K @ K.T  # (in, in)
            eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
            A = P @ S + hp.L2 * eye  # (in, in): A^T = S P + L2 I is the matrix of the formula
            right = torch.linalg.solve(A, P @ K)  # (in, n): Delta = R right^T = R K^T P (S P + L2 I)^-1
            return right, {
                "condition": float(torch.linalg.cond(A)),
                **held,
                "key_memory_batches_norm": float(memory.norm()) if memory is not None else 0.0,
            }

        parts, diags, vectors = spread_over_layers(lm, requests, hp, ctx, solve, shifts)
        state = {KEYS_PREFIX + n: K for n, K in vectors["keys_after"].items()}
        return MethodOutput(DeltaSet(parts, state), list(hp.layers), {"layers": diags}, vectors.pop("per_request"),
                            {}, vectors)
