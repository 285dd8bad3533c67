"""Deterministic perplexity of a model on a fixed reference text.

:class:`PerplexityProbe` tokenizes the text once, keeps the first ``n_tokens`` tokens as a
fixed ``[n_windows, seq_len]`` tensor, and scores every model it is given on exactly those
tokens, so "before" and "after" numbers of an edit are comparable. Each window is scored on
its own (no context carried across windows); perplexity is ``exp`` of the mean negative
log-likelihood over all predicted tokens (``seq_len - 1`` per window), computed in float32,
batched and without gradient.

The default text is the ME-PPL set of Yang et al., "The Butterfly Effect of Model Editing"
(Findings of ACL 2024), who use perplexity on it as the signal of model collapse after edits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from auditor.model.corpus import CorpusError, first_tokens, ppl_text_path, read_text

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel

DEFAULT_TOKENS = 512  # token budget of the default check: ~3-5 s for the 135M demo on a 2-core CPU
DEFAULT_SEQ_LEN = 256  # window length; each window is scored independently
DEFAULT_BATCH = 4  # windows per forward pass


def windows(ids: list[int], seq_len: int) -> torch.Tensor:
    """``ids`` cut into whole windows: a ``[n_windows, seq_len]`` LongTensor (the tail is dropped)."""
    n_windows = len(ids) // seq_len
    if n_windows == 0:
        raise CorpusError(f"the text gives only {len(ids)} tokens; at least {seq_len} are needed")
    return torch.tensor(ids[: n_windows * seq_len], dtype=torch.long).view(n_windows, seq_len)


def max_positions(config: Any) -> int | None:
    """The longest sequence the model accepts, when its config says (windows are cut to it)."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model computes: the first device of accelerate's map that is not ``cpu`` or
    ``disk`` (a dispatched model), else its first parameter's that is not ``meta`` (an offloaded
    parameter sits there), else the CPU. Inputs put there are moved on by accelerate's hooks."""
    mapped = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if str(d) not in ("cpu", "disk")]
    if mapped:
        return torch.device(mapped[0])
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


# logits computed at once: rows x vocabulary at most this many elements (16 MiB in float32), so the
# check's memory does not grow with the window count and length times the vocabulary
HEAD_CHUNK_ELEMENTS = 1 << 22


@torch.no_grad()
def perplexity_of_tokens(model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> float:
    """exp(mean NLL) of ``model`` over every predicted token of ``tokens`` ``[n_windows, seq_len]``.

    The trunk runs on ``batch_size`` windows at a time; the output head and the float32
    log-softmax run on :data:`HEAD_CHUNK_ELEMENTS` // vocabulary positions at a time, so the
    logits of a whole batch (windows x positions x vocabulary, float32: 0.3 GB for the demo's
    two windows, 4 GB for four windows of a Llama-3 vocabulary) are never held at once.
    """
    device = model_device(model)
    trunk, head = model.base_model, model.get_output_embeddings()
    total_nll = 0.0
    total_count = 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size].to(device)  # (B, T)
        hidden = trunk(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]  # (B, T-1, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        targets = batch[:, 1:].reshape(-1).to(hidden.device)  # (B (T-1),)
        rows = max(1, HEAD_CHUNK_ELEMENTS // head.weight.shape[0])
        for i in range(0, targets.numel(), rows):
            logits = head(hidden[i:i + rows].to(head.weight.dtype)).float()  # (rows, V)
            total_nll += float(F.cross_entropy(logits, targets[i:i + rows].to(logits.device), reduction="sum"))
        total_count += targets.numel()
    return math.exp(total_nll / total_count)


class PerplexityProbe:
    """Perplexity of one tokenizer's models on a fixed token budget of a reference text.

    ``lm`` is an :class:`auditor.model.checkpoint.LoadedModel`; ``text_path`` defaults to the shipped
    ME-PPL text (:func:`auditor.model.corpus.ppl_text_path`). The tokens are fixed at construction.
    """

    def __init__(
        self,
        lm: "LoadedModel",
        text_path: str | Path | None = None,
        n_tokens: int = DEFAULT_TOKENS,
        seq_len: int = DEFAULT_SEQ_LEN,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if n_tokens < 2 or seq_len < 2 or batch_size < 1:
            raise ValueError("n_tokens and seq_len must be at least 2, batch_size at least 1")
        self.lm = lm
        self.text_path = Path(text_path) if text_path is not None else ppl_text_path()
        self.seq_len = min(seq_len, n_tokens, max_positions(lm.model.config) or seq_len)
        self.batch_size = batch_size
        ids = first_tokens(lm.tokenizer, read_text(self.text_path), n_tokens)
        self.tokens: torch.Tensor = windows(ids, self.seq_len)  # (n_windows, seq_len), on CPU

    @property
    def n_tokens(self) -> int:
        """Tokens actually scored as inputs (whole windows only)."""
        return self.tokens.numel()

    def compute(self, model: torch.nn.Module | None = None) -> float:
        """Perplexity of ``model`` (default: ``lm.model``) on the fixed tokens, on the model's device."""
        return perplexity_of_tokens(model if model is not None else self.lm.model, self.tokens, self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {
            "text": str(self.text_path),
            "tokens": self.n_tokens,
            "seq_len": self.seq_len,
            "windows": int(self.tokens.shape[0]),
            "batch_size": self.batch_size,
        }
