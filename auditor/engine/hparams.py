"""ROME hyper-parameters: one JSON file per family in ``resources/hparams/``, overridable per edit.

Field meanings follow kmeng01/rome's ``ROMEHyperParams`` where a field exists there.

Every value goes through one validation path, :func:`check_value`, whatever it comes from: the
family's file, ``--hparams`` JSON, the ``--layer``/``--steps``/``--stats-tokens`` flags or the
window's fields. It checks the JSON type the field's annotation names (an integer is not a bool,
a float is finite: JSON's ``NaN`` is refused) and the field's range in :data:`RANGES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from auditor.base import AuditorError
from auditor.model.resources import ResourceMissing, resource_path, resources_dir

RESOURCES = resources_dir(strict=False)
KEY_MODES = ("consistent", "original", "joint")


class HParamsError(AuditorError, ValueError):
    """An unknown or ill-typed hyper-parameter."""


@dataclass
class RomeHParams:
    layer: int  # index of the decoder block whose MLP down-projection is edited
    v_num_grad_steps: int = 25  # Adam steps of the v* optimisation
    v_lr: float = 0.5  # Adam learning rate of the v* optimisation
    v_weight_decay: float = 0.001  # weight of ||delta|| / ||v_init||^2 in the v* loss
    clamp_norm_factor: float = 4.0  # ||delta|| <= factor * ||v_init||
    kl_factor: float = 0.0625  # weight of the KL term on "{subject} is a"; by default KL(P_after || P_before),
    #                            as kmeng01/rome computes it (kl_direction below; rome._kl)
    early_stop_loss: float = 0.05  # stop the v* loop once the NLL falls below this
    mom2_adjustment: bool = True  # u = C^-1 k (True) or u = k (False, identity covariance)
    mom2_n_tokens: int = 40000  # tokens of reference text behind C = E[k k^T]
    mom2_seq_len: int = 256  # window length when collecting keys
    mom2_dtype: str = "float64"  # accumulation dtype of C
    context_n: int = 5  # number of random context prefixes besides the bare "{}" (kmeng01/rome: 5)
    context_len: int = 10  # tokens per generated prefix
    context_seed: int = 0  # seed of the prefix generator
    context_templates: list[str] | None = None  # fixed templates ("... {}"); None = generate
    # --- issue 10 (ROME round two); see auditor/rome.py for the references
    v_fast: bool = True  # v* loop recomputes only what delta can change (same v* to float tolerance)
    kl_direction: str = "reference"  # "reference": KL(P_new||P_init) as kmeng01/rome; "forward": KL(P_init||P_new)
    early_stop_on: str = "nll"  # stop the v* loop when this falls below early_stop_loss: "nll" or "total" (reference)
    context_style: str = "memit"  # "memit": context_n prefixes of context_len tokens from fixed starts;
    #                               "rome": kmeng01/rome's 20 ([[5, 10], [10, 10]]) from the start token
    mom2_ridge: float = 1e-3  # u = (C + ridge * mean(diag C) * I)^-1 k_bar (rome.regularised); 0: plain C^-1
    joint_lambda: float = 0.0  # key mode "joint": weight of C in R K^T (lambda C + K K^T)^-1 (0: fit both keys)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def family_file(family: str) -> Path:
    """``hparams/<family>.json`` of the shipped resources; ResourceMissing when it is not there."""
    return resource_path(f"hparams/{family}.json")


# field -> (lowest, highest, lowest allowed itself?); fields added later without an entry get only
# the type check of their annotation
RANGES: dict[str, tuple[float, float, bool]] = {
    "layer": (0, 4095, True),
    "v_num_grad_steps": (1, 10_000, True),
    "v_lr": (0.0, 100.0, False),
    "v_weight_decay": (0.0, 1e6, True),
    "clamp_norm_factor": (0.0, 1e6, False),
    "kl_factor": (0.0, 1e6, True),
    "early_stop_loss": (0.0, 1e6, True),
    "mom2_n_tokens": (1, 100_000_000, True),
    "mom2_seq_len": (2, 1 << 16, True),
    "context_n": (0, 100, True),
    "context_len": (1, 1024, True),
    "context_seed": (0, 2**63 - 1, True),
}
CHOICES: dict[str, tuple[str, ...]] = {"mom2_dtype": ("float32", "float64")}
MAX_TEMPLATES, MAX_TEMPLATE_CHARS = 100, 2000


def load_hparams(family: str, overrides: dict[str, Any] | None = None) -> RomeHParams:
    """Defaults of ``family`` from ``resources/hparams``, then ``overrides`` (None values ignored)."""
    try:
        path = family_file(family)
    except ResourceMissing as e:
        raise HParamsError(f"no default hyper-parameters for the {family} family: {e}") from None
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    try:
        raw = check_hparams(raw)
    except HParamsError as e:
        raise HParamsError(f"{path}: {e}") from None
    raw.update(check_hparams(overrides or {}))
    try:
        hp = RomeHParams(**raw)
    except TypeError as e:
        raise HParamsError(f"{path}: {e}") from None
    _check(hp)
    return hp


def check_hparams(values: Mapping[str, Any] | Any, cls: type = None) -> dict[str, Any]:
    """``values`` checked field by field (None values dropped); raises HParamsError naming the field.
    ``cls``: the dataclass whose fields are allowed (default RomeHParams; MemitHParams, ...)."""
    if not isinstance(values, Mapping):
        raise HParamsError(f"hyper-parameters must be a JSON object, not {type(values).__name__}")
    known = {f.name: f for f in fields(cls or RomeHParams)}
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        if key not in known:
            raise HParamsError(f"unknown hyper-parameter {str(key)[:60]!r}; known: {', '.join(sorted(known))}")
        out[key] = check_value(key, value, str(known[key].type))
    return out


def check_value(name: str, value: Any, annotation: str) -> Any:
    """One hyper-parameter: the type its annotation names, then its range or choices."""
    kind = annotation.split("|")[0].strip()
    if kind == "bool":
        if not isinstance(value, bool):
            raise HParamsError(f"{name} must be true or false, not {_shown(value)}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise HParamsError(f"{name} must be an integer, not {_shown(value)}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise HParamsError(f"{name} must be a finite number, not {_shown(value)}")
        value = float(value)
    elif kind == "str":
        if not isinstance(value, str):
            raise HParamsError(f"{name} must be a string, not {_shown(value)}")
    elif kind.startswith("list[str]"):
        _check_templates(name, value)
    if name in RANGES:
        low, high, low_ok = RANGES[name]
        if not (low <= value if low_ok else low < value) or value > high:
            bound = f"[{low}, {high}]" if low_ok else f"({low}, {high}]"
            raise HParamsError(f"{name} = {_shown(value)} is outside {bound}")
    if name in CHOICES and value not in CHOICES[name]:
        raise HParamsError(f"{name} must be one of {', '.join(CHOICES[name])}, not {_shown(value)}")
    return value


def _check_templates(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise HParamsError(f"{name} must be a list of strings, not {_shown(value)}")
    if len(value) > MAX_TEMPLATES or any(len(t) > MAX_TEMPLATE_CHARS for t in value):
        raise HParamsError(f"{name}: at most {MAX_TEMPLATES} templates of {MAX_TEMPLATE_CHARS} characters")


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check(hp: RomeHParams) -> None:
    if hp.context_templates is not None and not all("{}" in t for t in hp.context_templates):
        raise HParamsError("every context template needs a '{}'")


# ---------------------------------------------------------------- issue 8: MEMIT / AlphaEdit fields
# (their dataclasses live in memit.py and alphaedit.py; `layers` is checked by methods.py)
RANGES.update({
    "mom2_update_weight": (0.0, 1e12, True),  # MEMIT's lambda
    "nullspace_threshold": (0.0, 1e6, False),  # AlphaEdit
    "L2": (0.0, 1e12, False),  # AlphaEdit
})


# issue 19: MEMIT / AlphaEdit as the references by default, the older choices as options
CHOICES.update({
    "key_average": ("groups", "flat"),
    "z_norm": ("residual", "mlp_output"),
    "nullspace_rule": ("energy", "threshold"),
})
RANGES.update({
    "nullspace_energy": (0.0, 1.0, False),  # AlphaEdit: share of tr(C) the null space may hold
})


# issue 10's options (ROME round two): their allowed values and ranges, checked by check_value
CHOICES.update({
    "kl_direction": ("reference", "forward"),
    "early_stop_on": ("nll", "total"),
    "context_style": ("memit", "rome"),
})
RANGES.update({
    "mom2_ridge": (0.0, 1.0, True),
    "joint_lambda": (0.0, 1e6, True),
})
