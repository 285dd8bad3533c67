"""Causal tracing: which hidden states carry a fact from the subject to the answer.

Reference: Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 2
(kmeng01/rome ``experiments/causal_trace.py``). Three runs of the same prompt:

* the *clean* run gives P(answer), the model's probability of the answer's first token after the
  prompt (the answer is the model's own top prediction when none is given);
* the *corrupted* run adds Gaussian noise to the subject's token embeddings (standard deviation
  ``NOISE_FACTOR`` = 3 times the standard deviation of the embeddings of subject tokens, as the
  reference does: ``collect_embedding_std`` over the known facts' subjects; here the subjects of
  the shipped requests. ``noise_source="corpus"``, the choice before session 5: the embeddings of
  a sample of the reference text), which lowers P(answer);
* each *restoration* run is the corrupted run in which one state is set back to its clean value;
  the probability that comes back measures how much that state carries the fact.

States are indexed by (token, layer): ``hidden`` is the residual stream (a decoder block's output),
``mlp`` the MLP output (the down-projection's output, whatever the family), ``attn`` the attention
output. As in the paper, ``mlp`` and ``attn`` restore a *window* of layers around the named one
(layers ``l - w//2 .. l + (w-1)//2`` clipped to the model): one layer alone is too small a piece of
the computation to show an effect. The paper used w = 10 for GPT-2 XL (48 layers); we scale it to
the depth, ``default_window(n) = round(10 n / 48)``, so the demo model (30 layers) uses w = 6.

Every probability is the mean over ``samples`` noise draws (the paper: 10; default here 5, see
``DEFAULT_SAMPLES``). The same draws are
used by the corrupted run and by every restoration, so the differences between cells are not noise.

Speed (the paper runs one forward pass per cell): restorations are batched, one batch row per
(restoration, noise draw), many restorations per forward pass. Two exact savings follow from the
structure of a causal decoder:

* tokens before the subject are not corrupted, and a later token cannot reach them, so restoring
  them changes nothing: those cells are the corrupted probability without a forward pass;
* a restoration at layer l leaves every block before l (and, for the residual stream, block l
  itself) exactly as in the corrupted run: those blocks are replaced, for that forward pass, by the
  corrupted run's stored output;
* a restoration at token t leaves every position before t as in the corrupted run: the pass
  starts at position t with the corrupted run's keys and values as the cache of the earlier ones.

Rows are grouped by first token and first changed block (see ``Tracer._plan``).

Nothing here changes the weights.

Example::

    tracer = Tracer(lm, samples=10)
    traces = tracer.trace("The Eiffel Tower is in the city of", "The Eiffel Tower")
    traces["mlp"].effects        # (tokens, layers) P(answer) after each restoration
    traces["mlp"].clean_prob, traces["mlp"].corrupted_prob
"""

from __future__ import annotations

import math
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from auditor.base import AuditorError, EditCancelled, Progress
from auditor.model.checkpoint import LoadedModel

KINDS = ("hidden", "mlp", "attn")
NOISE_FACTOR = 3.0  # noise std = NOISE_FACTOR x std of token embeddings (the paper's 3 sigma)
DEFAULT_SAMPLES = 5  # noise draws per probability; kmeng01/rome uses 10 (samples=10): 5 keeps a full
# trace of a 10-token prompt of the demo near half a minute of CPU (bench/bench_trace.py)
DEFAULT_SEED = 1  # seed of the noise draws (kmeng01/rome seeds its RandomState with 1)
EMBEDDING_SAMPLE_TOKENS = 4000  # tokens of the reference text behind the embedding std ("corpus")
NOISE_SOURCES = ("subjects", "corpus")  # whose embeddings' std sets the noise (Tracer ``noise_source``)
SUBJECT_FILES = ("demo/known_facts.json", "demo/first_token_subjects.json", "hard/roundedit_hard_40.json")
ATTN_NAMES = ("self_attn", "attn", "attention")  # attention submodule of a block, per family
BATCH_TOKENS = 2048  # token positions per restoration forward pass (batch rows x positions run)
PRECISIONS = ("float32", "bfloat16")  # the restorations' products (Tracer ``precision``)
PASS_OVERHEAD = 200  # cost of one more forward pass, in (batch row x position x block) units (measured: 100-200 best)

State = tuple[str, int, int]  # (kind, layer, token): one state set back to its clean value


class TraceError(AuditorError, ValueError):
    """The prompt, subject or answer cannot be traced (subject not in the prompt, ...)."""


class TraceCancelled(EditCancelled):
    """The cancel event was set during a trace."""


def default_window(n_layers: int) -> int:
    """Layers restored together for ``mlp``/``attn``: the paper's 10 of 48, scaled to the depth."""
    return max(1, round(10 * n_layers / 48))


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The layers restored for a windowed restoration named ``layer`` (as kmeng01/rome centres it)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@dataclass
class Trace:
    """One heatmap: P(answer) after restoring ``kind`` at each (token, layer)."""

    kind: str  # "hidden" | "mlp" | "attn"
    prompt: str  # the traced text
    subject: str
    answer: str  # decoded answer token
    answer_id: int
    tokens: list[str]  # decoded prompt tokens, one per row of effects
    subject_span: tuple[int, int]  # [start, end) token positions of the subject
    window: int  # layers restored together (1 for hidden)
    samples: int  # noise draws behind each probability
    noise: float  # std of the added noise
    clean_prob: float  # P(answer) of the clean run
    corrupted_prob: float  # P(answer) with the subject corrupted, nothing restored
    effects: np.ndarray  # (tokens, layers) P(answer) after restoring that state
    seconds: float = 0.0
    precision: str = "float32"  # the restorations' matrix products (Tracer ``precision``)
    noise_source: str = "corpus"  # whose embeddings' std set ``noise`` (traces stored before issue 19: corpus)

    @property
    def subject_last(self) -> int:
        return self.subject_span[1] - 1

    def indirect_effect(self) -> np.ndarray:
        """``effects - corrupted_prob``: how much probability each restoration brings back."""
        return self.effects - self.corrupted_prob

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "prompt": self.prompt, "subject": self.subject, "answer": self.answer,
            "answer_id": self.answer_id, "tokens": self.tokens, "subject_span": list(self.subject_span),
            "window": self.window, "samples": self.samples, "noise": self.noise,
            "clean_prob": self.clean_prob, "corrupted_prob": self.corrupted_prob,
            "effects": self.effects.tolist(), "seconds": self.seconds, "precision": self.precision,
            "noise_source": self.noise_source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        return cls(**{**d, "subject_span": tuple(d["subject_span"]), "effects": np.asarray(d["effects"])})


@dataclass
class Prepared:
    """A prompt ready to trace: its tokens, the subject span, and the clean and corrupted runs."""

    text: str
    subject: str
    ids: torch.Tensor  # (T,) token ids on the model's device
    tokens: list[str]
    subject_span: tuple[int, int]
    answer_id: int
    answer: str
    noise: torch.Tensor  # (S, n_subject, H) noise added to the subject's embeddings
    clean: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # kind -> per layer (T, H)
    corrupted_blocks: list[torch.Tensor] = field(default_factory=list)  # per layer (S, T, H)
    corrupted_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (S, heads, T, d) keys, values
    clean_prob: float = math.nan
    corrupted_prob: float = math.nan


# ------------------------------------------------------------------ hooks


def _main_tensor(out: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (a tensor, or a tuple starting with one)."""
    return out[0] if isinstance(out, tuple) else out


def attention_module(lm: LoadedModel, layer: int) -> torch.nn.Module:
    block = block_module(lm, layer)
    for name in ATTN_NAMES:
        if hasattr(block, name):
            return getattr(block, name)
    raise TraceError(f"no attention module ({', '.join(ATTN_NAMES)}) in {lm.spec.layers}.{layer}")


def block_module(lm: LoadedModel, layer: int) -> torch.nn.Module:
    return lm.model.get_submodule(f"{lm.spec.layers}.{layer}")


def kind_module(lm: LoadedModel, kind: str, layer: int) -> torch.nn.Module:
    """The module whose output is the state ``kind`` at ``layer``."""
    if kind == "hidden":
        return block_module(lm, layer)
    if kind == "mlp":
        return lm.spec.module(lm.model, layer)  # the down-projection's output is the MLP's output
    if kind == "attn":
        return attention_module(lm, layer)
    raise TraceError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")


@contextmanager
def _hooks(pairs: Sequence[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    handles = [m.register_forward_hook(fn) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _skipped_blocks(lm: LoadedModel, n: int, output: Callable[[], torch.Tensor]) -> Iterator[None]:
    """Blocks ``0..n-1`` return ``output()`` (the corrupted run's block ``n-1`` output) unrun."""
    blocks = [block_module(lm, i) for i in range(n)]
    for b in blocks:
        b.forward = lambda *_a, **_k: output()  # instance attribute shadows the class method
    try:
        yield
    finally:
        for b in blocks:
            del b.forward


# ------------------------------------------------------------------ the tracer


class Tracer:
    """Causal traces of prompts on one loaded model (one thread at a time)."""

    def __init__(self, lm: LoadedModel, *, samples: int = DEFAULT_SAMPLES, window: int | None = None,
                 noise: float | None = None, seed: int = DEFAULT_SEED, batch_tokens: int = BATCH_TOKENS,
                 skip_blocks: bool = True, skip_tokens: bool = True, precision: str = "float32",
                 noise_source: str = "subjects"):
        if samples < 1:
            raise TraceError("samples must be at least 1")
        if precision not in PRECISIONS:
            raise TraceError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
        # bfloat16: the restorations' matrix products of a float32 model run in bfloat16 (autocast);
        # the residual stream, the stored clean and corrupted states and the answer's softmax stay
        # float32. A model loaded in half precision computes in its own dtype either way.
        self.precision = precision
        if noise_source not in NOISE_SOURCES:
            raise TraceError(f"unknown noise source {noise_source!r}; use {' or '.join(NOISE_SOURCES)}")
        self.noise_source = noise_source if noise is None else "given"
        self.lm = lm
        self.samples = samples  # noise draws per probability
        self.window = window or default_window(lm.n_layers)  # layers restored together (mlp, attn)
        self.seed = seed
        self.batch_tokens = batch_tokens  # token positions per forward pass
        self.skip_blocks = skip_blocks  # replace unchanged early blocks by the corrupted run's output
        self.skip_tokens = skip_tokens  # keys/values of unchanged early positions from the corrupted run
        self._noise = noise  # std of the noise; None = NOISE_FACTOR x embedding std (computed once)

    # -------------------------------------------------------------- inputs

    @property
    def noise_level(self) -> float:
        if self._noise is None:
            std = subject_embedding_std(self.lm) if self.noise_source == "subjects" else embedding_std(self.lm)
            self._noise = NOISE_FACTOR * std
        return self._noise

    def prepare(self, prompt: str, subject: str, answer: str | None = None) -> Prepared:
        """Tokenise, locate the subject, run the clean and corrupted passes."""
        text = prompt.replace("{}", subject, 1) if "{}" in prompt else prompt
        if not subject.strip():
            raise TraceError("the subject is empty")
        if subject not in text:
            raise TraceError(f"the subject {subject!r} does not occur in the prompt {text!r}")
        ids, span = subject_tokens(self.lm, text, subject)
        hidden = self.lm.model.get_input_embeddings().weight.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.samples, span[1] - span[0], hidden, generator=gen) * self.noise_level
        prep = Prepared(
            text=text, subject=subject, ids=torch.tensor(ids, device=self.lm.device),
            tokens=[self.lm.tokenizer.decode([i]) for i in ids], subject_span=span, answer_id=-1,
            answer="", noise=noise.to(self.lm.device, self.lm.dtype),
        )
        self._clean_run(prep, answer)
        self._corrupted_run(prep)
        return prep

    @torch.no_grad()
    def _clean_run(self, prep: Prepared, answer: str | None) -> None:
        lm, L = self.lm, self.lm.n_layers
        store: dict[str, list[torch.Tensor]] = {k: [torch.empty(0)] * L for k in KINDS}

        def keep(kind: str, layer: int) -> Callable:
            def hook(_m, _a, out):
                store[kind][layer] = _main_tensor(out)[0].detach().clone()  # (T, H)
            return hook

        pairs = [(kind_module(lm, k, i), keep(k, i)) for k in KINDS for i in range(L)]
        with _hooks(pairs):
            logits = self._last_logits(prep.ids[None])[0]  # (V,)
        if answer is None:
            prep.answer_id = int(logits.argmax())
        else:
            from auditor.engine.rome import RomeError, encode_target

            try:
                prep.answer_id = encode_target(lm, answer)[0]
            except RomeError as e:
                raise TraceError(str(e)) from None
        prep.answer = lm.tokenizer.decode([prep.answer_id])
        prep.clean = store
        prep.clean_prob = float(torch.softmax(logits, -1)[prep.answer_id])

    @torch.no_grad()
    def _corrupted_run(self, prep: Prepared) -> None:
        S, L = self.samples, self.lm.n_layers
        blocks: list[torch.Tensor] = [torch.empty(0)] * L

        def keep(layer: int) -> Callable:
            def hook(_m, _a, out):
                blocks[layer] = _main_tensor(out).detach().clone()  # (S, T, H)
            return hook

        pairs = [(block_module(self.lm, i), keep(i)) for i in range(L)]
        rows = torch.arange(S, device=self.lm.device)
        with _hooks(pairs + [self._noise_hook(prep, rows, 0)]):
            hidden, cache = self._forward(prep.ids.expand(S, -1), use_cache=self.skip_tokens)
        prep.corrupted_blocks = blocks
        prep.corrupted_kv = _cache_tensors(cache, L) if self.skip_tokens else None
        prep.corrupted_prob = float(self._answer_probs(prep, hidden).mean())

    def _noise_hook(self, prep: Prepared, sample_of_row: torch.Tensor, t0: int) -> tuple[torch.nn.Module, Callable]:
        """Adds the noise to the subject's embeddings; the forward pass starts at position ``t0``."""
        s0, s1 = prep.subject_span
        lo = max(s0, t0)

        def hook(_m, _a, out):
            if lo >= s1:
                return out
            out = out.clone()
            out[:, lo - t0:s1 - t0] += prep.noise[sample_of_row, lo - s0:]  # (B, n, H)
            return out

        return self.lm.model.get_input_embeddings(), hook

    def _forward(self, ids: torch.Tensor, past: Any = None, use_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Final hidden state at the last position ``(B, H)`` and the cache (when asked)."""
        trunk = self.lm.model.base_model
        name = _cache_argument(trunk)
        out = trunk(input_ids=ids, use_cache=use_cache or past is not None, **({name: past} if past is not None else {}))
        return out.last_hidden_state[:, -1], (getattr(out, name, None) if use_cache else None)

    def _last_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits at the last position, ``(B, V)`` float32 (the LM head only where needed)."""
        return self._logits(self._forward(ids)[0])

    def _logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """The head on final hidden states of any dtype (a float32 model's under bfloat16 autocast,
        a bfloat16 model's), run in the head's own dtype; float32 logits."""
        head = self.lm.model.get_output_embeddings()
        return head(last_hidden.to(head.weight.dtype)).float()

    def _answer_probs(self, prep: Prepared, last_hidden: torch.Tensor) -> torch.Tensor:
        """P(answer) per batch row, ``(B,)``, from the final hidden states ``(B, H)``."""
        return torch.softmax(self._logits(last_hidden), -1)[:, prep.answer_id]

    # -------------------------------------------------------------- restorations

    @torch.no_grad()
    def restore(self, prep: Prepared, rows: Sequence[Sequence[State]], *,
                progress: Callable[[int, int], None] | None = None,
                cancel: threading.Event | None = None) -> np.ndarray:
        """P(answer), ``(len(rows),)``: the corrupted run with each row's states set back to clean.

        Each row is a list of ``(kind, layer, token)`` states restored together; every row sees
        the same ``samples`` noise draws. ``progress(done, total)`` is called after each forward.
        """
        L, T = self.lm.n_layers, len(prep.tokens)
        for row in rows:
            for kind, layer, token in row:
                if kind not in KINDS or not 0 <= layer < L or not 0 <= token < T:
                    raise TraceError(f"no state {(kind, layer, token)} (kinds {KINDS}, {L} layers, {T} tokens)")
        out = np.empty(len(rows))
        done = 0
        for chunk, first, t0 in self._plan(rows, L, T, self.skip_tokens and prep.corrupted_kv is not None):
            if cancel is not None and cancel.is_set():
                raise TraceCancelled("the trace was cancelled")
            out[chunk] = self._restore_pass(prep, [rows[i] for i in chunk], first, t0)
            done += len(chunk)
            if progress:
                progress(done, len(rows))
        return out

    def _plan(self, rows: Sequence[Sequence[State]], L: int, T: int,
              skip_tokens: bool) -> list[tuple[list[int], int, int]]:
        """Forward passes as (row indices, first block run, first position run).

        A row only changes blocks from its first changed block on and positions from its first
        restored token on; a pass runs from the smallest of each over its rows (exact for the
        others, which merely recompute corrupted values). Rows are sorted by (token, block) and
        a row joins the current pass when it has the same first token, the pass stays within
        ``batch_tokens`` and the blocks it would recompute in vain cost less than another pass
        (``PASS_OVERHEAD``).
        """
        keys = []
        for i, row in enumerate(rows):
            first = _first_changed_block(row, L) if self.skip_blocks else 0
            t0 = min((t for _k, _l, t in row), default=T - 1) if skip_tokens else 0
            keys.append((t0, first, i))
        keys.sort()
        plan: list[tuple[list[int], int, int]] = []
        for t0, first, i in keys:
            if plan:
                chunk, f0, c_t0 = plan[-1]
                fits = (len(chunk) + 1) * self.samples * (T - t0) <= self.batch_tokens
                waste = (first - f0) * self.samples * (T - t0)
                if c_t0 == t0 and waste <= PASS_OVERHEAD and fits:
                    chunk.append(i)
                    continue
            plan.append(([i], first, t0))
        return plan

    def _restore_pass(self, prep: Prepared, rows: list[Sequence[State]], first: int, t0: int) -> np.ndarray:
        """One forward pass over positions ``t0..T-1``: ``len(rows) * samples`` batch rows.

        Blocks before ``first`` are replaced by the corrupted run's output; the corrupted run's
        keys and values stand for positions before ``t0``.
        """
        S, dev = self.samples, self.lm.device
        sample_of_row = torch.arange(len(rows) * S, device=dev) % S  # (B,)
        where: dict[tuple[str, int], tuple[list[int], list[int]]] = {}
        for r, row in enumerate(rows):
            for kind, layer, token in row:
                b, t = where.setdefault((kind, layer), ([], []))
                b.extend(range(r * S, (r + 1) * S))
                t.extend([token] * S)
        pairs = [self._noise_hook(prep, sample_of_row, t0)]
        for (kind, layer), (b, t) in where.items():
            tok = torch.tensor(t, device=dev)
            pairs.append((kind_module(self.lm, kind, layer),
                          _restore_hook(prep.clean[kind][layer][tok], torch.tensor(b, device=dev), tok - t0)))
        past = _make_cache(prep.corrupted_kv, sample_of_row, t0) if t0 > 0 else None
        ids = prep.ids[t0:].expand(len(rows) * S, -1)
        with ExitStack() as stack:
            if first > 0:
                skipped = prep.corrupted_blocks[first - 1][sample_of_row, t0:]  # (B, T - t0, H)
                stack.enter_context(_skipped_blocks(self.lm, first, skipped.clone))
            stack.enter_context(_hooks(pairs))
            if self.precision == "bfloat16" and self.lm.dtype == torch.float32:
                stack.enter_context(torch.autocast(device_type=dev.type, dtype=torch.bfloat16))
            hidden, _ = self._forward(ids, past)
        probs = self._answer_probs(prep, hidden)  # (B,): the head in the model's dtype
        return probs.view(len(rows), S).mean(1).cpu().double().numpy()

    # -------------------------------------------------------------- heatmaps

    def trace(self, prompt: str, subject: str, answer: str | None = None, *,
              kinds: Sequence[str] = KINDS, tokens: Sequence[int] | None = None,
              prep: Prepared | None = None,
              progress: Callable[[Progress], None] | None = None,
              cancel: threading.Event | None = None) -> dict[str, Trace]:
        """One :class:`Trace` per kind; ``tokens`` limits the restored positions (others: NaN)."""
        import time

        t0 = time.perf_counter()
        for kind in kinds:
            if kind not in KINDS:
                raise TraceError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        prep = prep or self.prepare(prompt, subject, answer)
        L, T = self.lm.n_layers, len(prep.tokens)
        wanted = range(T) if tokens is None else tokens
        cells, rows = [], []
        for kind in kinds:
            for token in wanted:
                for layer in range(L):
                    if token < prep.subject_span[0]:
                        continue  # before the subject: never corrupted, nothing to restore
                    cells.append((kind, token, layer))
                    rows.append(self.states(kind, layer, token))

        def on_pass(done: int, total: int) -> None:
            if progress:
                progress(Progress("trace", done, total, message="causal trace: restorations"))

        probs = self.restore(prep, rows, progress=on_pass, cancel=cancel)
        seconds = time.perf_counter() - t0
        out = {}
        for kind in kinds:
            effects = np.full((T, L), np.nan)
            for token in wanted:
                if token < prep.subject_span[0]:
                    effects[token] = prep.corrupted_prob
            out[kind] = Trace(
                kind=kind, prompt=prep.text, subject=subject, answer=prep.answer, answer_id=prep.answer_id,
                tokens=prep.tokens, subject_span=prep.subject_span, window=1 if kind == "hidden" else self.window,
                samples=self.samples, noise=self.noise_level, clean_prob=prep.clean_prob,
                corrupted_prob=prep.corrupted_prob, effects=effects, seconds=seconds, noise_source=self.noise_source,
                precision=self.precision if self.lm.dtype == torch.float32 else str(self.lm.dtype).replace("torch.", ""),
            )
        for (kind, token, layer), p in zip(cells, probs):
            out[kind].effects[token, layer] = p
        return out

    def states(self, kind: str, layer: int, token: int) -> list[State]:
        """The states one heatmap cell restores (a window of layers for ``mlp`` and ``attn``)."""
        if kind == "hidden":
            return [("hidden", layer, token)]
        return [(kind, j, token) for j in window_layers(layer, self.window, self.lm.n_layers)]


def _first_changed_block(row: Sequence[State], n_layers: int) -> int:
    """Index of the first block whose output differs from the corrupted run for this row.

    Restoring a block's output leaves that block's own computation as corrupted; restoring its
    MLP or attention output changes the block itself.
    """
    return min((layer + 1 if kind == "hidden" else layer for kind, layer, _t in row), default=n_layers)


def _restore_hook(values: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> Callable:
    """Forward hook: ``output[rows[i], positions[i]] = values[i]`` (values ``(n, H)``, clean states)."""

    def hook(_m, _a, out):
        h = _main_tensor(out)
        h[rows, positions] = values.to(h.dtype)
        return out

    return hook


def _cache_argument(trunk: torch.nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier): the decoder's cache argument."""
    import inspect

    return "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"


def _cache_tensors(cache: Any, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of a ``transformers`` cache, each ``(B, heads, T, d)``."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers[:n_layers]]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    return [(k, v) for k, v, *_ in cache]  # legacy tuples


def _make_cache(kv: list[tuple[torch.Tensor, torch.Tensor]], sample_of_row: torch.Tensor, t0: int) -> Any:
    """A fresh cache holding the corrupted run's first ``t0`` positions for each batch row."""
    from transformers import DynamicCache

    pairs = [(k[sample_of_row, :, :t0], v[sample_of_row, :, :t0]) for k, v in kv]
    try:
        return DynamicCache(ddp_cache_data=pairs)
    except TypeError:  # transformers < 4.56
        return DynamicCache.from_legacy_cache(tuple(pairs))


# ------------------------------------------------------------------ helpers


def subject_tokens(lm: LoadedModel, text: str, subject: str) -> tuple[list[int], tuple[int, int]]:
    """Token ids of ``text`` and the ``[start, end)`` token span covering the subject's first occurrence."""
    c0 = text.index(subject)
    c1 = c0 + len(subject)
    enc = lm.tokenizer(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    offsets = enc["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < c1 and b > c0]
    if not inside:
        raise TraceError(f"the subject {subject!r} covers no token of {text!r}")
    return ids, (inside[0], inside[-1] + 1)


@torch.no_grad()
def embedding_std(lm: LoadedModel, n_tokens: int = EMBEDDING_SAMPLE_TOKENS) -> float:
    """Standard deviation of the input embeddings of the reference text's first ``n_tokens`` tokens."""
    from auditor.model.corpus import first_tokens, read_text, stats_text_path

    ids = first_tokens(lm.tokenizer, read_text(stats_text_path()), n_tokens)
    emb = lm.model.get_input_embeddings()(torch.tensor(ids, device=lm.device))  # (n, H)
    return float(emb.float().std())


@torch.no_grad()
def subject_embedding_std(lm: LoadedModel, subjects: list[str] | None = None) -> float:
    """Standard deviation of the input embeddings of the subjects' tokens (kmeng01/rome
    ``causal_trace.collect_embedding_std`` over the known facts' subjects); default subjects: those
    of the shipped requests (:data:`SUBJECT_FILES`), each tokenised alone without special tokens."""
    if subjects is None:
        subjects = shipped_subjects()
    ids = [i for s in subjects for i in lm.tokenizer(s, add_special_tokens=False)["input_ids"]]
    if len(ids) < 2:
        raise TraceError("too few subject tokens to estimate the embeddings' spread")
    emb = lm.model.get_input_embeddings()(torch.tensor(ids, device=lm.device))  # (n, H)
    return float(emb.float().std())


def shipped_subjects() -> list[str]:
    """The distinct subjects of the shipped request files, in file order."""
    import json

    from auditor.model.resources import resource_path

    seen: dict[str, None] = {}
    for name in SUBJECT_FILES:
        for rec in json.loads(resource_path(name).read_text(encoding="utf-8")):
            if isinstance(rec, dict) and isinstance(rec.get("subject"), str) and rec["subject"].strip():
                seen.setdefault(rec["subject"], None)
    return list(seen)
