"""ROME hyper-parameters: one JSON file per family in ``resources/hparams/``, overridable per edit.

Field meanings follow kmeng01/rome's ``ROMEHyperParams`` where a field exists there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
KEY_MODES = ("consistent", "original")


class HParamsError(ValueError):
    """An unknown or ill-typed hyper-parameter."""


@dataclass
class RomeHParams:
    layer: int  # index of the decoder block whose MLP down-projection is edited
    v_num_grad_steps: int = 25  # Adam steps of the v* optimisation
    v_lr: float = 0.5  # Adam learning rate of the v* optimisation
    v_weight_decay: float = 0.001  # weight of ||delta|| / ||v_init||^2 in the v* loss
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||v_init||
    kl_factor: float = 0.0625  # weight of KL(P_before || P_after) on "{subject} is a"
    early_stop_loss: float = 0.05  # stop the v* loop once the NLL falls below this
    mom2_adjustment: bool = True  # u = C^-1 k (True) or u = k (False, identity covariance)
    mom2_n_tokens: int = 40000  # tokens of reference text behind C = E[k k^T]
    mom2_seq_len: int = 256  # window length when collecting keys
    mom2_dtype: str = "float64"  # accumulation dtype of C
    context_n: int = 5  # number of random context prefixes besides the bare "{}" (kmeng01/rome: 5)
    context_len: int = 10  # tokens per generated prefix
    context_seed: int = 0  # seed of the prefix generator
    context_templates: list[str] | None = None  # fixed templates ("... {}"); None = generate

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def family_file(family: str) -> Path:
    return RESOURCES / "hparams" / f"{family}.json"


def load_hparams(family: str, overrides: dict[str, Any] | None = None) -> RomeHParams:
    """Defaults of ``family`` from ``resources/hparams``, then ``overrides`` (None values ignored)."""
    path = family_file(family)
    raw = json.loads(path.read_text()) if path.is_file() else {"layer": 4}
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    known = {f.name: f for f in fields(RomeHParams)}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise HParamsError(f"unknown hyper-parameter {key!r}; known: {', '.join(sorted(known))}")
        raw[key] = value
    try:
        hp = RomeHParams(**raw)
    except TypeError as e:
        raise HParamsError(f"{path}: {e}") from None
    _check(hp)
    return hp


def _check(hp: RomeHParams) -> None:
    if hp.v_num_grad_steps < 1:
        raise HParamsError("v_num_grad_steps must be at least 1")
    if hp.v_lr <= 0 or hp.clamp_norm_factor <= 0:
        raise HParamsError("v_lr and clamp_norm_factor must be positive")
    if hp.mom2_n_tokens < 1 or hp.mom2_seq_len < 2:
        raise HParamsError("mom2_n_tokens must be positive and mom2_seq_len at least 2")
    if hp.mom2_dtype not in ("float32", "float64"):
        raise HParamsError("mom2_dtype must be float32 or float64")
    if hp.context_templates is not None and not all("{}" in t for t in hp.context_templates):
        raise HParamsError("every context template needs a '{}'")
