"""Weight deltas: what an edit changes, stored exactly, applied in one place.

An edit of the matrix ``W`` (``[out, in]`` orientation) is ``W' = W + left @ right.T``:

* ROME: rank one, ``left`` ``(out,)`` (the value side, ``(v* - W k*) / (u . k*)``) and ``right``
  ``(in,)`` (the key side, ``u = C^-1 k``);
* MEMIT / AlphaEdit: rank ``r`` (the batch size) per layer, ``left`` ``(out, r)`` (the residuals R)
  and ``right`` ``(in, r)`` (e.g. ``(lambda C + K K^T)^-1 K``); when ``r (out + in) >= out * in``
  the factors would be larger than the product, and the dense update ``full`` ``(out, in)`` is
  stored instead (:meth:`Delta.factored` chooses).

A :class:`Delta` touches one parameter; a :class:`DeltaSet` is the update of one batch over
several layers (one :class:`Delta` per parameter) plus exact state recorded with it (AlphaEdit's
keys of the batch, ``tensors["keys.<param>"]``). Both keep their tensors in the dtype they were
computed in, hash their exact bytes, and save to one safetensors file. :func:`apply_delta` is the
*only* code that writes an edit into a weight, so the engine, revert and replay produce
bit-identical tensors.

Example::

    delta = Delta(param="model.layers.4.mlp.down_proj.weight", transposed=False,
                  left=torch.randn(576), right=torch.randn(1536))
    apply_delta(model, delta)            # W += outer(left, right)
    apply_delta(model, delta, sign=-1)   # W -= outer(left, right)
    batch = DeltaSet([Delta.factored(p, False, R_l, A_l) for p, R_l, A_l in ...])
    apply_delta(model, batch)            # every layer of the batch
    apply_delta(model, batch, params={"model.layers.5.mlp.down_proj.weight"})  # one of them
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import torch
from safetensors.torch import load_file, save_file

from auditor.model.offload import read_param, write_param

SET_KIND = "delta-set"  # safetensors metadata "kind" of a DeltaSet file


@dataclass
class Delta:
    param: str  # parameter name in model.named_parameters()
    transposed: bool  # the stored weight is [in, out] (GPT-2 Conv1D)
    left: torch.Tensor | None  # (out,) or (out, r) value-side factor; None when `full` is stored
    right: torch.Tensor | None  # (in,) or (in, r) key-side factor; None when `full` is stored
    meta: dict[str, str] = field(default_factory=dict)
    full: torch.Tensor | None = None  # (out, in) the dense update, when smaller than its factors

    @classmethod
    def factored(cls, param: str, transposed: bool, left: torch.Tensor, right: torch.Tensor,
                 meta: dict[str, str] | None = None) -> "Delta":
        """``left (out, r) @ right (in, r).T`` kept as factors, or as the product when that is smaller."""
        (out, r), n_in = left.shape, right.shape[0]
        if r * (out + n_in) < out * n_in:
            return cls(param, transposed, left.contiguous(), right.contiguous(), dict(meta or {}))
        return cls(param, transposed, None, None, dict(meta or {}), full=left @ right.T)

    @property
    def rank(self) -> int:
        """Number of factor columns (the product's rank at most); ``-1`` for a dense update."""
        if self.full is not None:
            return -1
        return 1 if self.left.dim() == 1 else self.left.shape[1]

    @property
    def params(self) -> list[str]:
        return [self.param]

    def dense(self) -> torch.Tensor:
        """The full update in the *stored* orientation of the weight."""
        if self.full is not None:
            full = self.full
        elif self.left.dim() == 1:
            full = torch.outer(self.left, self.right)  # (out, in)
        else:
            full = self.left @ self.right.T  # (out, r) @ (r, in)
        return full.T if self.transposed else full

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"full": self.full} if self.full is not None else {"left": self.left, "right": self.right}

    def header(self) -> dict:
        head: dict = {"param": self.param, "transposed": self.transposed}
        head.update({k: [str(t.dtype), list(t.shape)] for k, t in self._tensors().items()})
        return head

    def content_hash(self) -> str:
        """sha256 over the parameter name, orientation, dtypes, shapes and bytes."""
        h = hashlib.sha256()
        h.update(_canonical(self.header()).encode())
        for t in self._tensors().values():
            h.update(_tensor_bytes(t))
        return "sha256:" + h.hexdigest()

    def save(self, path: Path) -> None:
        """Write the factors (or the dense update) to a safetensors file (temp name, then rename)."""
        meta = {"format": "pt", "param": self.param, "transposed": str(int(self.transposed))}
        meta.update({f"x-{k}": v for k, v in self.meta.items()})
        _save(path, self._tensors(), meta)

    @classmethod
    def load(cls, path: Path) -> "Delta":
        meta, tensors = _read(path)
        return cls(
            param=meta["param"],
            transposed=meta["transposed"] == "1",
            left=tensors.get("left"),
            right=tensors.get("right"),
            meta={k[2:]: v for k, v in meta.items() if k.startswith("x-")},
            full=tensors.get("full"),
        )

    def parts_on(self, params: Iterable[str] | None) -> list["Delta"]:
        return [self] if params is None or self.param in set(params) else []


@dataclass
class DeltaSet:
    """The update of one batch: one :class:`Delta` per edited parameter, plus recorded state."""

    parts: list[Delta]  # applied in this order (a method's: ascending layers, one per parameter;
    #                     an applied patch's: its deltas in ledger order, a parameter possibly twice)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # exact state kept with the edit
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        """The parameters the set changes, each once, in order of first change."""
        return list(dict.fromkeys(p.param for p in self.parts))

    def part(self, param: str) -> Delta:
        for p in self.parts:
            if p.param == param:
                return p
        raise KeyError(param)

    def parts_on(self, params: Iterable[str] | None) -> list[Delta]:
        wanted = None if params is None else set(params)
        return [p for p in self.parts if wanted is None or p.param in wanted]

    def header(self) -> dict:
        return {"kind": SET_KIND, "parts": [p.header() for p in self.parts],
                "tensors": {k: [str(t.dtype), list(t.shape)] for k, t in sorted(self.tensors.items())}}

    def content_hash(self) -> str:
        """sha256 over every part's header and bytes, then the recorded tensors (sorted by name)."""
        h = hashlib.sha256()
        h.update(_canonical(self.header()).encode())
        for p in self.parts:
            for t in p._tensors().values():
                h.update(_tensor_bytes(t))
        for _name, t in sorted(self.tensors.items()):
            h.update(_tensor_bytes(t))
        return "sha256:" + h.hexdigest()

    def save(self, path: Path) -> None:
        tensors = {f"{i}.{k}": t for i, p in enumerate(self.parts) for k, t in p._tensors().items()}
        tensors.update({f"state.{k}": t for k, t in self.tensors.items()})
        meta = {"format": "pt", "kind": SET_KIND,
                "parts": _canonical([{"param": p.param, "transposed": p.transposed, "meta": p.meta}
                                     for p in self.parts])}
        meta.update({f"x-{k}": v for k, v in self.meta.items()})
        _save(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> "DeltaSet":
        meta, tensors = _read(path)
        parts = []
        for i, d in enumerate(json.loads(meta["parts"])):
            parts.append(Delta(d["param"], bool(d["transposed"]), tensors.get(f"{i}.left"),
                               tensors.get(f"{i}.right"), dict(d.get("meta") or {}), full=tensors.get(f"{i}.full")))
        state = {k[len("state."):]: t for k, t in tensors.items() if k.startswith("state.")}
        return cls(parts, state, {k[2:]: v for k, v in meta.items() if k.startswith("x-")})


AnyDelta = Union[Delta, DeltaSet]


def load_delta(path: Path) -> AnyDelta:
    """A :class:`Delta` or a :class:`DeltaSet`, whichever the file holds."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        kind = (f.metadata() or {}).get("kind")
    return DeltaSet.load(path) if kind == SET_KIND else Delta.load(path)


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        save_file({k: plain(t) for k, t in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
    except BaseException:  # a full disk, an I/O error: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return meta, load_file(str(path))


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, on the CPU, with the standard strides of its shape.

    Hashing and saving read a tensor's bytes in row-major order, whatever view it arrived as: a
    transpose (``K.T``), a slice, or a tensor PyTorch calls contiguous although its strides are not
    the standard ones (a size-1 dimension, e.g. ``(in, 1)`` with strides ``(1, in)``, on which
    ``view(torch.uint8)`` fails). ``reshape(-1)`` of a contiguous tensor is a plain 1-d view,
    and viewing it back to the shape gives the standard strides (no copy unless one is needed).
    """
    return t.detach().cpu().contiguous().reshape(-1).view(t.shape)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes in row-major order (any stride, view or device; see :func:`plain`)."""
    return plain(t).reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


@torch.no_grad()
def apply_delta(model: torch.nn.Module, delta: AnyDelta, sign: int = 1, *,
                params: Iterable[str] | None = None) -> None:
    """``W <- W + sign * dense`` for every part (only those on ``params`` when given).

    The sum is formed in float32, or in the delta's dtype if wider (MEMIT's float64), then cast
    back to the weight's dtype.
    """
    for part in delta.parts_on(params):
        weight = read_param(model, part.param)  # materialised when accelerate offloaded it
        first = part.full if part.full is not None else part.left
        compute = torch.promote_types(torch.float32, first.dtype)
        upd = part.dense().to(device=weight.device, dtype=compute)
        new = weight.to(compute) + (upd if sign > 0 else -upd)
        write_param(model, part.param, new.to(weight.dtype))
