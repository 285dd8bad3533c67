"""Weight deltas: what an edit changes, stored exactly, applied in one place.

A ROME edit of the matrix ``W`` (``[out, in]`` orientation) is the rank-one
update ``W' = W + left @ right.T`` with ``left`` of length ``out`` (the value
side, ``(v* - W k*) / (u . k*)``) and ``right`` of length ``in`` (the key side,
``u = C^-1 k``). A :class:`Delta` keeps the two factors in the dtype they were
computed in; :func:`apply_delta` is the *only* code that writes an edit into a
weight, so the engine, revert and replay produce bit-identical tensors.

Example::

    delta = Delta(param="model.layers.4.mlp.down_proj.weight", transposed=False,
                  left=torch.randn(576), right=torch.randn(1536))
    apply_delta(model, delta)            # W += outer(left, right)
    apply_delta(model, delta, sign=-1)   # W -= outer(left, right)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass
class Delta:
    param: str  # parameter name in model.named_parameters()
    transposed: bool  # the stored weight is [in, out] (GPT-2 Conv1D)
    left: torch.Tensor  # (out,) value-side factor
    right: torch.Tensor  # (in,) key-side factor
    meta: dict[str, str] = field(default_factory=dict)

    def dense(self) -> torch.Tensor:
        """The full update in the *stored* orientation of the weight."""
        full = torch.outer(self.left, self.right)  # (out, in)
        return full.T if self.transposed else full

    def content_hash(self) -> str:
        """sha256 over the parameter name, orientation, dtypes, shapes and bytes."""
        h = hashlib.sha256()
        header = {
            "param": self.param,
            "transposed": self.transposed,
            "left": [str(self.left.dtype), list(self.left.shape)],
            "right": [str(self.right.dtype), list(self.right.shape)],
        }
        h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        for t in (self.left, self.right):
            h.update(_tensor_bytes(t))
        return "sha256:" + h.hexdigest()

    def save(self, path: Path) -> None:
        """Write the factors to a safetensors file (atomically: temp name, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        meta = {"format": "pt", "param": self.param, "transposed": str(int(self.transposed))}
        meta.update({f"x-{k}": v for k, v in self.meta.items()})
        save_file(
            {"left": self.left.detach().cpu().contiguous(), "right": self.right.detach().cpu().contiguous()},
            str(tmp),
            metadata=meta,
        )
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Delta":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        return cls(
            param=meta["param"],
            transposed=meta["transposed"] == "1",
            left=tensors["left"],
            right=tensors["right"],
            meta={k[2:]: v for k, v in meta.items() if k.startswith("x-")},
        )


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


@torch.no_grad()
def apply_delta(model: torch.nn.Module, delta: Delta, sign: int = 1) -> None:
    """``W <- W + sign * left right^T`` in float32 (or the factors' dtype if wider), cast back."""
    weight = model.get_parameter(delta.param)
    compute = torch.promote_types(torch.float32, delta.left.dtype)
    upd = delta.dense().to(device=weight.device, dtype=compute)
    new = weight.to(compute) + (upd if sign > 0 else -upd)
    weight.copy_(new.to(weight.dtype))
