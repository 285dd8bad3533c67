"""AlphaEdit: MEMIT's update projected onto the null space of the preserved keys.

Fang et al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language
Models" (jianghoucheng/AlphaEdit, ``AlphaEdit_main.py``). Per edited layer:

* P = U0 U0^T with U0 the eigenvectors of C = E[k k^T] (stats.py) whose eigenvalues are below
  ``nullspace_threshold``: the directions the preserved keys K0 (almost) never take;
* with K1 (in, n) this batch's keys, R (out, n) its share of z* - z (as in MEMIT) and Kp Kp^T the
  running sum of earlier batches' keys (the *key memory*)::

      Delta = R K1^T P (Kp Kp^T P + K1 K1^T P + L2 I)^-1          (float64)

  Every column of ``Delta^T`` lies in the range of P, so ``Delta k0 = 0`` for every k0 with
  P k0 = 0: the preserved knowledge is left exactly where it was (up to the threshold).

After the update the batch's keys are recomputed at every edited layer and recorded with the
delta (``DeltaSet.tensors["keys.<param>"]``); the key memory is the sum of ``K K^T`` over the
applied, not reverted AlphaEdit batches in ledger order, so reverting a batch removes its keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from auditor.engine.deltas import DeltaSet
from auditor.engine.memit import MemitHParams
from auditor.engine.methods import MethodContext, MethodOutput, load_method_hparams, spread_over_layers
from auditor.model.checkpoint import LoadedModel
from auditor.model.requests import EditRequest

KEYS_PREFIX = "keys."  # DeltaSet.tensors name of a layer's keys: "keys.<param>" (in, n) float32


@dataclass
class AlphaEditHParams(MemitHParams):
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space (P)
    L2: float = 10.0  # ridge term of the inverted matrix


def projector(C: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """P (in, in) float64 onto the eigenvectors of C with eigenvalue < threshold; and their number."""
    ev, U = torch.linalg.eigh(C.double())  # ascending eigenvalues
    U0 = U[:, ev < threshold]  # (in, d)
    return U0 @ U0.T, U0.shape[1]


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
                ctx: MethodContext) -> MethodOutput:
        def solve(layer: int, name: str, K: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, dict]:
            C = ctx.second_moment(layer)
            P, null_dim = projector(C, hp.nullspace_threshold)
            P = P.to(K.device)
            memory = ctx.key_memory.get(name)
            S = K @ K.T if memory is None else memory.to(K.device, torch.float64) + K @ K.T  # (in, in)
            eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
            A = P @ S + hp.L2 * eye  # (in, in): A^T = S P + L2 I is the matrix of the formula
            right = torch.linalg.solve(A, P @ K)  # (in, n): Delta = R right^T = R K^T P (S P + L2 I)^-1
            upd = R @ right.T  # (out, in)
            outside = upd - upd @ P
            return right, {
                "condition": float(torch.linalg.cond(A)),
                "null_space_dim": null_dim,
                "outside_projector": float(outside.norm() / upd.norm()) if upd.norm() > 0 else 0.0,
                "key_memory_batches_norm": float(memory.norm()) if memory is not None else 0.0,
            }

        parts, diags, vectors = spread_over_layers(lm, requests, hp, ctx, solve)
        state = {KEYS_PREFIX + n: K for n, K in vectors["keys_after"].items()}
        return MethodOutput(DeltaSet(parts, state), list(hp.layers), {"layers": diags}, vectors.pop("per_request"),
                            {}, vectors)
