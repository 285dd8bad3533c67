"""The v* loop's forward pass, run only where the edit can change anything.

During ROME's v* optimisation (:func:`auditor.engine.rome.optimise_value`) the one thing that changes
between steps is ``delta``, added to the edited MLP's output at each prompt's subject's last
token (the *lookup* position). Hence (Meng et al. 2022, section 3 and appendix; the reference
implementation recomputes the whole network at every step):

* the blocks below the edited one, and the edited block itself apart from ``delta``, give the
  same hidden states at every step: they run once, without gradient, and the edited block's
  output is kept;
* a position before the lookup position cannot see ``delta`` at any layer (causal attention):
  its attention keys and values are computed once and served from a KV cache.

To give every prompt the same split point, :func:`align` left-pads the prompts so that every
lookup position falls into one column ``c``. Position ids follow the tokens (``cumsum(mask) - 1``),
so learned and rotary position embeddings see exactly the positions they see without padding,
and padded columns are masked out of attention. Each step then runs only the layers above the
edited block, only on the columns ``c..T``, against the cached keys and values of ``0..c``.
The result equals a full forward pass to floating-point tolerance (tests/test_rome_fast.py).

During a step the blocks up to the edited one are replaced by :class:`_StandIn` modules: those
below pass their input through, the edited one returns its recorded output plus ``delta``. The
decoder's own forward still builds the masks and position embeddings and indexes its blocks as
usual, so no model code is re-implemented here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from auditor.model.checkpoint import LoadedModel


@dataclass
class AlignedBatch:
    ids: torch.Tensor  # (B, T) token ids, left-padded so that every lookup sits in column ``column``
    mask: torch.Tensor  # (B, T) 1 on tokens, 0 on padding
    positions: torch.Tensor  # (B, T) position id of each token (its index in the unpadded prompt)
    column: int  # c: the column of every row's lookup position
    shift: list[int]  # columns of left padding per row: unpadded index p sits in column p + shift[i]


def align(seqs: list[list[int]], lookups: list[int], pad_id: int, device: torch.device) -> AlignedBatch:
    """Left-pad ``seqs`` so that ``seqs[i][lookups[i]]`` falls into one column for every row."""
    c = max(lookups)
    shift = [c - look for look in lookups]
    width = max(s + len(seq) for s, seq in zip(shift, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, seq) in enumerate(zip(shift, seqs)):
        ids[i, s:s + len(seq)] = torch.tensor(seq)
        mask[i, s:s + len(seq)] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return AlignedBatch(ids.to(device), mask.to(device), positions.to(device), c, shift)


class _StandIn(torch.nn.Module):
    """Stands in for a block below the edited one (returns its input) or for the edited block
    (returns ``hidden``, set before each call), in the block's output format."""

    def __init__(self, block: torch.nn.Module, as_tuple: bool, recorded: bool):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: its parameters stay where they are
        self.as_tuple, self.recorded = as_tuple, recorded
        self.hidden: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = self.hidden if self.recorded else (args[0] if args else kwargs["hidden_states"])
        return (hidden,) if self.as_tuple else hidden

    def __getattr__(self, name: str) -> Any:  # attributes the decoder reads off a block (attention_type ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


def _cache_kwarg(trunk: torch.nn.Module) -> str:
    """The decoder's name for the KV cache argument (``cache`` from transformers 5, before that
    ``past_key_values``)."""
    params = inspect.signature(trunk.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x: no config argument
        return DynamicCache()


def _layer_kv(cache: Any, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    return cache.key_cache[i], cache.value_cache[i]  # transformers 4.x


class SuffixForward:
    """Runs the decoder above ``layer`` on the columns ``c..T`` of an aligned batch, many times.

    ``__call__(delta)`` returns the decoder's last hidden state (after its final norm) at the
    columns ``c..T``, shape ``(B, T - c, H)``, with ``delta`` (``(H,)`` for every row or ``(B, H)``
    one per row; may require grad) added to the edited module's output in column ``c``.
    :attr:`v_init_rows` is the edited module's output at column ``c`` of every row without
    ``delta`` (``(B, H)``), :attr:`v_init` that of row 0.
    """

    def __init__(self, lm: LoadedModel, layer: int, batch: AlignedBatch):
        self.lm, self.layer, self.batch = lm, layer, batch
        self.trunk = lm.model.base_model
        self.blocks = lm.model.get_submodule(lm.spec.layers)
        parent, _, self.attr = lm.spec.layers.rpartition(".")
        self.parent = lm.model.get_submodule(parent) if parent else lm.model
        self.cache_kw = _cache_kwarg(self.trunk)
        self._record()

    @torch.no_grad()
    def _record(self) -> None:
        """One full pass without gradient: the edited block's output, v_init, the prefix's K/V."""
        b, c = self.batch, self.batch.column
        module = self.lm.spec.module(self.lm.model, self.layer)
        seen: dict[str, Any] = {}

        def on_block(_mod, _args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            seen["block"] = hidden[:, c:].detach().clone()  # (B, S, H)
            seen["as_tuple"] = isinstance(out, tuple)

        def on_module(_mod, _args, out):
            seen["v_init"] = out[:, c].detach().float().clone()  # (B, H)

        hooks = [self.blocks[self.layer].register_forward_hook(on_block), module.register_forward_hook(on_module)]
        cache = _new_cache(self.lm.model.config) if c > 0 else None
        try:
            self.trunk(input_ids=b.ids, attention_mask=b.mask, position_ids=b.positions,
                       use_cache=cache is not None, **{self.cache_kw: cache})
        finally:
            for h in hooks:
                h.remove()
        self.base = seen["block"]
        self.v_init_rows = seen["v_init"]  # (B, H): each row's edited-module output at the lookup column
        self.v_init = self.v_init_rows[0]
        tup = seen["as_tuple"]
        self.stand_ins = torch.nn.ModuleList(
            [_StandIn(blk, tup, recorded=False) for blk in list(self.blocks)[: self.layer]]
            + [_StandIn(self.blocks[self.layer], tup, recorded=True)]
            + list(self.blocks)[self.layer + 1:])
        self.recorded = self.stand_ins[self.layer]
        self.prefix_kv = ([tuple(t[..., :c, :].clone() for t in _layer_kv(cache, i)) for i in range(len(self.blocks))]
                          if cache is not None else None)

    def _prefix_cache(self) -> Any:
        if self.prefix_kv is None:
            return None
        cache = _new_cache(self.lm.model.config)
        for i, (k, v) in enumerate(self.prefix_kv):
            cache.update(k, v, i)
        return cache

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        b, c = self.batch, self.batch.column
        shift = delta if delta.dim() == 1 else delta[:, None, :]  # one delta for all rows, or one per row
        first = self.base[:, :1] + shift.to(self.base.dtype)  # (B, 1, H): the lookup column
        self.recorded.hidden = torch.cat([first, self.base[:, 1:]], dim=1)  # (B, S, H)
        cache = self._prefix_cache()
        setattr(self.parent, self.attr, self.stand_ins)
        try:
            out = self.trunk(input_ids=b.ids[:, c:], attention_mask=b.mask, position_ids=b.positions[:, c:],
                             use_cache=cache is not None, **{self.cache_kw: cache})
        finally:
            setattr(self.parent, self.attr, self.blocks)
            self.recorded.hidden = None
        return out.last_hidden_state  # (B, S, H)
