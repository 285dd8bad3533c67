"""Second moment of a layer's keys, C = E[k k^T], over reference text; cached on disk.

ROME's key-side vector is u = C^-1 k (kmeng01/rome ``layer_stats.py`` and ``compute_u.py``).
The keys are the inputs of the edited down-projection at every token of the
reference text. The forward pass is cut off right after the edited module has
seen its input, so only the layers up to the edited one run.

The cache key is (the fingerprint of the weights the keys depend on, the layer,
the corpus hash, the token count, the window length, the dtype). The weights the
keys depend on are every parameter outside the decoder stack (embeddings ...)
and every parameter of blocks ``0..layer`` except the edited down-projection
itself: so an edit of that matrix (ROME's own output) does not invalidate C,
while any change that can alter a key does.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from auditor.engine.rome import StopForward
from auditor.model.checkpoint import LoadedModel, cache_dir, fingerprint_tensors, named_unique_tensors
from auditor.model.offload import give_freed_buffers_back

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (tokens done, tokens total)


def key_weights_fingerprint(lm: LoadedModel, layer: int, *, ignore_edits: bool = False) -> str:
    """Fingerprint of the parameters that determine the keys of ``layer``.

    ``ignore_edits`` also leaves out the down-projections of the layers below: MEMIT and AlphaEdit
    take C as the statistics of the preserved knowledge, computed once and kept while they edit
    those matrices (as kmeng01/memit and jianghoucheng/AlphaEdit do).
    """
    prefix = lm.spec.layers + "."
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    skipped = range(layer + 1) if ignore_edits else [layer]
    skip = {n for i in skipped for n in (lm.spec.weight_name(i), lm.spec.down_proj_name(i) + ".bias")}
    chosen = []
    for name, t in named_unique_tensors(lm.model):
        m = pattern.match(name)
        if m and int(m.group(1)) > layer:
            continue
        if name in skip:
            continue
        chosen.append((name, t))
    return fingerprint_tensors(chosen, lm.model)


def corpus_tokens(lm: LoadedModel, text: str, n_tokens: int, seq_len: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``text`` as ``[n_windows, seq_len]`` (last window dropped if short)."""
    from auditor.model.corpus import first_tokens

    ids = first_tokens(lm.tokenizer, text, n_tokens)
    n = len(ids) // seq_len * seq_len
    if n == 0:
        raise ValueError(f"the statistics text holds {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[:n]).view(-1, seq_len)  # (n_windows, seq_len)


@torch.no_grad()
def collect_second_moment(
    lm: LoadedModel,
    layer: int,
    windows: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, int]:
    """Sum k k^T over every token of ``windows``; returns (C, token count)."""
    module = lm.spec.module(lm.model, layer)
    dim = lm.spec.key_dim(lm.model, layer)
    acc = torch.zeros(dim, dim, dtype=dtype, device=lm.device)
    count = 0

    def hook(_mod, args):
        nonlocal acc, count
        k = args[0].reshape(-1, dim).to(dtype)  # (B*T, dim)
        acc += k.T @ k
        count += k.shape[0]
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        total = windows.numel()
        for start in range(0, windows.shape[0], batch_size):
            if cancel is not None and cancel():
                raise InterruptedError("key statistics cancelled")
            batch = windows[start:start + batch_size].to(lm.device)
            try:
                lm.model(input_ids=batch, use_cache=False)
            except StopForward:
                pass
            if progress:
                progress(min(count, total), total)
    finally:
        handle.remove()
        give_freed_buffers_back()  # the batches' activations and any offloaded blocks read
    return acc / count, count


def _stats_path(key: str) -> Path:
    return cache_dir() / "stats" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".safetensors")


def second_moment(
    lm: LoadedModel,
    layer: int,
    *,
    text_path: Path | None = None,
    n_tokens: int = 40000,
    seq_len: int = 256,
    dtype: str = "float64",
    progress: ProgressFn | None = None,
    cancel: Callable[[], bool] | None = None,
    ignore_edits: bool = False,
) -> tuple[torch.Tensor, dict]:
    """C for ``layer`` (on the model's device, float32), and how it was obtained.

    The info dict says whether the cache was used (``cached``), the cache file, the
    token count and the cache key's parts.
    """
    from auditor.model.corpus import read_text, stats_text_path

    path = Path(text_path) if text_path else stats_text_path()
    text = read_text(path)
    corpus_hash = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    weights_fp = key_weights_fingerprint(lm, layer, ignore_edits=ignore_edits)
    parts = {
        "weights": weights_fp,
        "layer": layer,
        "corpus": corpus_hash,
        "n_tokens": n_tokens,
        "seq_len": seq_len,
        "dtype": dtype,
    }
    if ignore_edits:
        parts["ignore_edits"] = True
    key = repr(sorted(parts.items()))
    file = _stats_path(key)
    info = {"cached": False, "file": str(file), **parts}
    if file.is_file():
        try:
            C = load_file(str(file))["C"]
            info["cached"] = True
            info["tokens"] = _stored_tokens(file)
            return C.to(lm.device), info
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            log.warning("statistics cache %s unreadable; recomputing", file)
    windows = corpus_tokens(lm, text, n_tokens, seq_len)
    C, count = collect_second_moment(
        lm, layer, windows, dtype=getattr(torch, dtype), progress=progress, cancel=cancel
    )
    C = C.float().cpu()
    info["tokens"] = count
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    save_file({"C": C.contiguous()}, str(tmp), metadata={**{k: str(v) for k, v in parts.items()}, "tokens": str(count)})
    tmp.replace(file)
    return C.to(lm.device), info


def _stored_tokens(file: Path) -> int | None:
    """The token count written with a cached C (None for caches written before it was recorded)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        value = (f.metadata() or {}).get("tokens")
    return int(value) if value is not None else None


@torch.no_grad()
def conditioning(C: torch.Tensor, ridge: float = 0.0) -> dict:
    """Condition numbers of C and of C + ridge * mean(diag C) * I (rome.regularised), from the
    eigenvalues in float64: how far u = C^-1 k can amplify noise in k (or in C itself)."""
    eig = torch.linalg.eigvalsh(C.double().cpu())  # ascending
    shift = ridge * float(eig.mean())  # mean eigenvalue = mean diagonal
    lo, hi = float(eig[0]), float(eig[-1])
    return {"eig_min": lo, "eig_max": hi, "condition": hi / lo if lo > 0 else float("inf"),
            "condition_ridged": (hi + shift) / (lo + shift) if lo + shift > 0 else float("inf"), "ridge": ridge}


HELD_OUT_TOKENS = 2048  # held-out keys per layer (issue 19): enough for a stable ratio of norms, ~0.1 s


@torch.no_grad()
def held_out_keys(lm: LoadedModel, layer: int, *, text_path: Path | None = None,
                  n_tokens: int = HELD_OUT_TOKENS, seq_len: int = 128) -> torch.Tensor:
    """The edited module's inputs at every token of the first ``n_tokens`` of a text C never saw:
    ``(in, N)`` float64. Default text: the perplexity sentences (corpus.ppl_text_path), kept apart
    from the statistics text, so a change measured on these keys is not fitted to them."""
    from auditor.model.corpus import ppl_text_path, read_text

    windows = corpus_tokens(lm, read_text(Path(text_path) if text_path else ppl_text_path()), n_tokens, seq_len)
    module = lm.spec.module(lm.model, layer)
    dim = lm.spec.key_dim(lm.model, layer)
    rows: list[torch.Tensor] = []

    def hook(_mod, args):
        rows.append(args[0].reshape(-1, dim).double().cpu())
        raise StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        for start in range(0, windows.shape[0], 8):
            try:
                lm.model(input_ids=windows[start:start + 8].to(lm.device), use_cache=False)
            except StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(rows).T.contiguous()  # (in, N)
