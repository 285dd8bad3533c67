"""The memory an edit will need, from a checkpoint's config alone, before anything is loaded.

``plan_memory(folder, dtype=..., method=...)`` builds the model on the ``meta`` device (no
memory, exact parameter count and shapes for any architecture transformers knows), reads the
method's edited layers from ``resources/hparams/<method>_<family>.json`` and adds up, in bytes:

* ``weights``: every unique parameter in the load dtype (accelerate's ``compute_module_sizes``
  does the same sum for ``device_map="auto"``);
* ``stats_held``: C = E[k k^T] of each edited layer, d_ff x d_ff float32, kept by the Editor;
* ``held_out``: MEMIT's and AlphaEdit's held-out text keys (``HELD_OUT_TOKENS`` keys of d_ff
  float64 per edited layer, for the batch's ``held_out_change``), held from the batch's start
  through its evaluation, in host memory wherever the edit computes (``stats.held_out_keys``
  keeps them on the CPU): on the computing device only when that is the CPU;
* ``stats_pass``: one layer's statistics pass: the float64 accumulator and its k^T k product
  (2 x 8 d_ff^2), one batch's keys in float64 and the forward activations up to that layer: a
  gradient-free forward frees each block's tensors as it goes, so what is alive at once is the
  larger of the MLP's moment (the residual and its normed copy, and three d_ff-wide tensors:
  act(gate), up and their product) and the attention's (the residual, q, k, v, its output, and
  one layer's scores, which eager attention materialises);
* ``v_star``: the v* (ROME) / z* (MEMIT, AlphaEdit) optimisation of at most ``V_BATCH``
  requests at once. Each step recomputes only the blocks above the layer where v* / z* is added
  (ROME's layer; MEMIT's and AlphaEdit's last edited layer, kmeng01/memit's ``z_layer``) and only
  the columns from each prompt's subject on (``engine/suffix_forward.py``): the activations kept
  for the backward pass are those blocks' on ``V_SUFFIX_TOKENS`` columns (per block and column:
  attention's q, k, v and output and the MLP's act(gate), up and product in the weight dtype,
  the two RMS norms' float32 inputs), beside the cached keys and values of the columns before;
  and the logits at the target and KL positions only (float32, x3 for log-softmax and its
  gradient);
* ``evaluate``: one scoring pass of the evaluation or the audit (the trunk on ``SCORE_BATCH``
  prompts, then the head only at the positions that predict a target token);
* ``perplexity``: the perplexity check (the trunk on its ``PPL_TOKENS`` tokens' windows, at most
  ``PPL_BATCH`` at once, then the head on ``HEAD_CHUNK_ELEMENTS`` logits at a time);
* ``solve``: the float64 algebra of the layer being edited, only that layer (ROME: the ridged
  C and an identity; MEMIT: C, K K^T, A, the LU factor of ``solve`` and the condition number's
  copy of A; AlphaEdit: the projector P, S = K K^T (+ earlier keys), an identity, A, the LU
  factor and ``cond``'s copy and workspace), plus the dense float64 update and weight copy;
* ``audit``: the collateral audit's preservation cost tr(Delta C Delta^T) / tr(W C W^T) of the
  edited layer: C and W in float64, W C and its product with W.

``peak = weights + stats_held + max(stats_pass, v_star, solve, evaluate, audit, perplexity)`` on the
computing device,
plus ``held_out`` in host memory (on the same memory when the CPU computes: ``cpu_peak``): the phases run one
after another (kmeng01/memit ``compute_ks``/``compute_z``/``memit_main``; jianghoucheng/AlphaEdit
``AlphaEdit_main``). The estimate is checked against measured peaks by ``bench/bench_scale.py``.

``--max-memory`` has accelerate's meaning, the most *weights* a device may hold: what does not
fit goes to the next device, then to ``--offload-folder`` on disk. The working memory and one
materialised decoder block come on top, on the device that computes (:meth:`MemoryPlan.verdict`).

Example::

    plan = plan_memory(demo_folder(), dtype="bfloat16", method="memit")
    print(plan.table())
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from auditor.base import AuditorError

METHODS = ("rome", "memit", "alphaedit")
GIB = 1 << 30
# Settings of the passes the plan sizes (the defaults of RomeHParams and stats.collect_second_moment)
STATS_BATCH = 8  # windows per statistics forward pass
STATS_SEQ_LEN = 256  # tokens per window
V_PROMPTS_PER_REQUEST = 7  # the bare prompt, 5 context prefixes (context_n), the KL prompt
V_PROMPT_TOKENS = 20  # tokens per v* prompt (a prefix of context_len 10 + a request)
# columns of a v* prompt from the subject's last token on, with the target (the suffix forward
# recomputes these only; all prompts share the widest): 5 for the median CounterFact request, 9 the
# most over tests/data/counterfact_100.json, 7 for a batch of ten
V_SUFFIX_TOKENS = 8
# float64 d_ff x d_ff matrices alive at once while the edited layer is solved (see module docstring)
# (MEMIT measured: 4.3 alone, 4.8 inside a 360M-shape batch; AlphaEdit counted, not measured)
SOLVE_SQUARES = {"rome": 2, "memit": 5, "alphaedit": 7}
V_BATCH = 16  # requests whose v* are optimised together (auditor.engine.methods.V_BATCH; a test checks)
V_TARGET_TOKENS = 3  # tokens of a target: the head is applied at these positions and the KL one only
SCORE_BATCH = 64  # prompts scored in one pass (auditor.measure.collateral.SCORE_BATCH; a test checks)
SCORE_TOKENS = 16  # tokens of a scored prompt with its target
EVAL_ROWS_PER_REQUEST = 32  # prompts scored per request: efficacy, paraphrases, neighbourhood, audit swaps
HELD_OUT_TOKENS = 2048  # held-out keys per layer of a batch (auditor.engine.stats.HELD_OUT_TOKENS; a test checks)
# the perplexity check's tokens, windows per forward pass and window length, and the logits it
# computes at once (auditor.measure.perplexity's DEFAULT_TOKENS, DEFAULT_BATCH, DEFAULT_SEQ_LEN,
# HEAD_CHUNK_ELEMENTS; a test checks)
PPL_TOKENS = 512
PPL_BATCH = 4
PPL_SEQ_LEN = 256
HEAD_CHUNK_ELEMENTS = 1 << 22


class MemoryPlanError(AuditorError, RuntimeError):
    """A model will not fit the memory it is given; ``str(e)`` is one line, ``plan`` the details."""

    def __init__(self, message: str, plan: "MemoryPlan"):
        super().__init__(message)
        self.plan = plan


@dataclass
class MemoryPlan:
    model: str
    method: str
    dtype: str
    parameters: int
    layers: int
    hidden: int
    heads: int
    key_dim: int  # d_ff: the edited down-projection's input width (C is key_dim x key_dim)
    value_dim: int  # its output width
    vocab: int
    edited_layers: list[int]
    weights: int
    largest_block: int  # bytes of the largest decoder block: what an offloaded forward materialises
    stats_held: int
    stats_pass: int
    v_star: int
    solve: int
    requests: int = 1
    prompts: int = V_PROMPTS_PER_REQUEST  # v* prompts per request
    prompt_tokens: int = V_PROMPT_TOKENS  # tokens per v* prompt
    evaluate: int = 0  # one scoring pass of the edit's evaluation and collateral audit
    held_out: int = 0  # a batch's held-out text keys (float64), held through the whole batch
    suffix_tokens: int = V_SUFFIX_TOKENS  # v* columns recomputed per prompt (the rest: cached keys/values)
    audit: int = 0  # the collateral audit's preservation cost of the edited layer (float64)
    perplexity: int = 0  # the perplexity check before and after the edit

    @property
    def working(self) -> int:
        """Everything but the weights: what must sit on the computing device."""
        return self.stats_held + max(self.stats_pass, self.v_star, self.solve, self.evaluate, self.audit,
                                     self.perplexity)

    @property
    def peak(self) -> int:
        """The computing device's peak (a batch's held-out keys are in host memory besides)."""
        return self.weights + self.working

    @property
    def cpu_peak(self) -> int:
        """The peak when the CPU computes: the device's and the host's memory are one."""
        return self.peak + self.held_out

    def on(self, compute: str) -> int:
        """What the edit needs on ``compute`` besides the weights (``"cpu"`` or a GPU's name)."""
        return self.working + (self.held_out if compute == "cpu" else 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "working": self.working, "peak": self.peak, "cpu_peak": self.cpu_peak}

    def rows(self) -> dict[str, str]:
        """The plan as ``label: size`` lines for a table."""
        d = self.key_dim
        return {
            "model": self.model,
            "method": f"{self.method} (layers {','.join(map(str, self.edited_layers))}, {self.requests} request(s))",
            "dtype": self.dtype,
            "parameters": f"{self.parameters:,}",
            "weights": human(self.weights),
            "largest block": human(self.largest_block),
            f"key statistics held ({len(self.edited_layers)} x {d}x{d} float32)": human(self.stats_held),
            f"held-out keys ({HELD_OUT_TOKENS} per layer, float64, host memory)": human(self.held_out),
            "key statistics pass (float64, one layer)": human(self.stats_pass),
            "v* optimisation": human(self.v_star),
            f"float64 solve ({self.method}, edited layer only)": human(self.solve),
            f"evaluation ({SCORE_BATCH} prompts a pass)": human(self.evaluate),
            "collateral audit (preservation cost, float64)": human(self.audit),
            f"perplexity check ({PPL_TOKENS} tokens, windows of {PPL_SEQ_LEN})": human(self.perplexity),
            "working memory (computing device)": human(self.working),
            "peak (computing device)": human(self.peak),
            "peak, computed on the CPU": human(self.cpu_peak),
        }

    def table(self) -> str:
        rows = self.rows()
        width = max(map(len, rows))
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows.items())

    def verdict(self, budget: dict[str, int] | None, physical: dict[str, int], *,
                offload_folder: bool) -> str | None:
        """None if the plan fits, else why not (one clause).

        ``budget`` is ``--max-memory`` (accelerate's meaning: the most *weights* each device may
        hold, device names ``"0"``, ``"cpu"``), or None for the whole model on one device.
        ``physical`` is each present device's whole memory. The computing device is the first GPU
        of the budget, else ``cpu``; it also holds the working memory and one materialised block.
        A batch's held-out keys are in host memory (``cpu``) wherever the edit computes.
        """
        compute = next(iter(physical)) if not budget else next((k for k in budget if k != "cpu"), "cpu")
        extra = self.on(compute) + self.largest_block
        if not budget:
            room = physical[compute]
            need = self.weights + self.on(compute)
            if need > room:
                return f"it needs {human(need)} ({human(self.weights)} of weights), {compute} has {human(room)}"
            return None
        if self.weights > sum(budget.values()) and not offload_folder:
            return (f"its weights take {human(self.weights)}, more than the {human(sum(budget.values()))} "
                    f"--max-memory allows, and no --offload-folder is given")
        for dev, allowed in budget.items():
            held = min(allowed, self.weights) + (extra if dev == compute else self.held_out if dev == "cpu" else 0)
            if dev in physical and held > physical[dev]:
                return (f"{dev} would hold {human(held)} (weights up to {human(min(allowed, self.weights))}"
                        + (f" + working memory and one block {human(extra)}" if dev == compute else
                           f" + held-out keys {human(self.held_out)}" if dev == "cpu" and self.held_out else "")
                        + f"), it has {human(physical[dev])}")
        return None

    def options(self, budget: dict[str, int] | None, physical: dict[str, int], *, offload_folder: bool) -> list[str]:
        """What would make it fit: a smaller dtype, offload, a lighter method."""
        out = []
        if self.dtype == "float32":
            half = replan(self, dtype="bfloat16")
            if half.verdict(budget, physical, offload_folder=offload_folder) is None:
                out.append(f"--dtype bfloat16 (peak {human(half.peak)})")
        compute = next((k for k in (budget or physical) if k != "cpu"), "cpu")
        room = physical.get(compute)
        if budget and not offload_folder and self.verdict(budget, physical, offload_folder=True) is None:
            spilled = self.weights - sum(budget.values())
            out.append(f"--offload-folder DIR (the other {human(spilled)} of weights on disk)")
        elif room is not None and room > self.on(compute) + self.largest_block:
            weights_here = int(room - self.on(compute) - self.largest_block) * 9 // 10
            spill = {compute: weights_here}
            if self.verdict(spill, physical, offload_folder=True) is None:
                out.append(f"--max-memory {compute}={human(weights_here).replace(' ', '')} --offload-folder DIR "
                           f"(the other {human(max(0, self.weights - weights_here))} of weights on disk)")
        if self.method != "rome":
            rome = replan(self, method="rome")
            if rome.verdict(budget, physical, offload_folder=offload_folder) is None:
                out.append(f"--method rome (working memory {human(rome.working)})")
        if not out:
            out.append(f"a device with at least {human(self.on(compute) + self.largest_block)} free for the working "
                       "memory (it cannot be offloaded)")
        return out


def human(n: int | float) -> str:
    """Bytes in the largest binary unit that keeps the number at or above 1."""
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``20GiB``, ``512MB``, ``1.5GB`` or a byte count -> bytes (ValueError with the reason)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 20GiB, 512MB, 1.5GB)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()]
    if value < 1:
        raise ValueError(f"{text!r}: a memory budget must be at least one byte")
    return int(value)


def parse_max_memory(text: str) -> dict[int | str, int]:
    """``0=20GiB,cpu=8GiB`` -> ``{0: 21474836480, "cpu": 8589934592}`` (accelerate's max_memory)."""
    out: dict[int | str, int] = {}
    for item in text.split(","):
        key, sep, size = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise ValueError(f"{item.strip()!r}: expected DEVICE=SIZE, e.g. 0=20GiB,cpu=8GiB")
        if key.isdigit():
            dev: int | str = int(key)
        elif key.startswith("cuda:") and key[5:].isdigit():
            dev = int(key[5:])
        elif key == "cpu":
            dev = "cpu"
        else:
            raise ValueError(f"{key!r}: a device is a GPU index (0, 1, ...) or cpu")
        if dev in out:
            raise ValueError(f"{key!r} is named twice")
        out[dev] = parse_size(size)
    return out


def budget_names(max_memory: dict[int | str, int]) -> dict[str, int]:
    """accelerate's keys (0, "cpu") as the plan's device names ("0", "cpu"), GPUs first."""
    gpus = sorted(k for k in max_memory if isinstance(k, int))
    return {**{str(k): max_memory[k] for k in gpus}, **({"cpu": max_memory["cpu"]} if "cpu" in max_memory else {})}


# ---------------------------------------------------------------- the estimate


def _meta_model(config: Any, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _edited_layers(method: str, family: str, n_layers: int) -> list[int]:
    """The layers the shipped hyper-parameters edit; layer 0 (the costliest v*: every block above
    it keeps activations) for a family without shipped hyper-parameters."""
    from auditor.model.resources import ResourceMissing, resource_path

    name = f"hparams/{family}.json" if method == "rome" else f"hparams/{method}_{family}.json"
    try:
        raw = json.loads(resource_path(name).read_text(encoding="utf-8"))
    except ResourceMissing:
        return [0]
    layers = [raw["layer"]] if method == "rome" else raw["layers"]
    return [min(int(x), n_layers - 1) for x in layers]


def plan_memory(folder: str | Path, *, dtype: str = "float32", method: str = "rome", requests: int = 1,
                name: str | None = None, **v_prompts: int) -> MemoryPlan:
    """The memory plan of editing the checkpoint ``folder`` (config.json only is read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    return plan_config(config, dtype=dtype, method=method, requests=requests, name=name or str(folder), **v_prompts)


def plan_config(config: Any, *, dtype: str = "float32", method: str = "rome", requests: int = 1,
                name: str = "model", prompts: int = V_PROMPTS_PER_REQUEST,
                prompt_tokens: int = V_PROMPT_TOKENS) -> MemoryPlan:
    """The memory plan of a transformers config (a model of that shape built on ``meta``);
    ``prompts`` v* prompts of ``prompt_tokens`` tokens per request (the defaults: the shipped
    hyper-parameters' 5 generated prefixes of 10 tokens)."""
    from auditor.model.architectures import spec_for

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    torch_dtype = getattr(torch, dtype)
    model = _meta_model(config, torch_dtype)
    spec = spec_for(model.config)
    n_layers = spec.n_layers(model.config)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    blocks = model.get_submodule(spec.layers)
    block_params = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    cfg = model.config
    w = torch_dtype.itemsize
    shape = dict(parameters=n_params, layers=n_layers, key_dim=spec.key_dim(model, 0),
                 value_dim=spec.value_dim(model, 0), vocab=int(cfg.vocab_size),
                 hidden=int(getattr(cfg, "hidden_size", None) or cfg.n_embd),
                 heads=int(getattr(cfg, "num_attention_heads", None) or cfg.n_head))
    return assemble(name, method, str(torch_dtype).replace("torch.", ""), shape,
                    edited_layers=_edited_layers(method, spec.family, n_layers), weights=n_params * w,
                    largest_block=block_params * w, requests=requests, prompts=prompts,
                    prompt_tokens=prompt_tokens)


def assemble(model: str, method: str, dtype: str, shape: dict[str, int], *, edited_layers: list[int],
             weights: int, largest_block: int, requests: int = 1, prompts: int = V_PROMPTS_PER_REQUEST,
             prompt_tokens: int = V_PROMPT_TOKENS, suffix_tokens: int = V_SUFFIX_TOKENS) -> MemoryPlan:
    """The plan's sums from the model's shape (``parameters``, ``layers``, ``hidden``, ``heads``,
    ``key_dim``, ``value_dim``, ``vocab``), the weights' size and the edited layers."""
    act = getattr(torch, dtype).itemsize  # activations are in the weight dtype
    hidden, d, out, heads = shape["hidden"], shape["key_dim"], shape["value_dim"], shape["heads"]
    tokens = STATS_BATCH * STATS_SEQ_LEN

    def forward(batch: int, seq: int) -> int:
        """A forward without gradient of ``batch`` sequences of ``seq`` tokens: the larger of the
        MLP's and the attention's live tensors (module docstring); measured with glibc's bytes in
        use (bench_scale's "live"), 135M and 360M shapes, bfloat16 and float32: 0.95-0.99 of this."""
        mlp = batch * seq * (2 * hidden + 3 * d) * act
        attention = batch * seq * 5 * hidden * act + batch * heads * seq ** 2 * act
        return max(mlp, attention)

    stats_pass = 2 * 8 * d * d + tokens * d * 8 + forward(STATS_BATCH, STATS_SEQ_LEN)
    together = min(requests, V_BATCH)  # v* runs V_BATCH requests at a time
    rows = prompts * together
    suffix = min(suffix_tokens, prompt_tokens)
    # the blocks recomputed at each step: those above the layer v* / z* is added at (the last edited)
    above = shape["layers"] - 1 - max(edited_layers)
    # per block and recomputed column, what autograd keeps (the weights are frozen, so a linear
    # layer keeps none of its inputs): attention's q, k, v and output (4 hidden-wide) and the MLP's
    # act(gate), up and their product (3 d_ff-wide) in the weight dtype, the two RMS norms' float32
    # inputs (2 hidden-wide); per column before the suffix, the keys and values its attention
    # reads, expanded to every head (2 hidden-wide). Measured (live peak of rome.optimise_values,
    # a MEMIT batch of 10, 135M and 360M shapes): 0.96-1.05 of this, in bfloat16 and float32 alike
    saved = (rows * suffix * above * ((4 * hidden + 3 * d) * act + 8 * hidden)
             + rows * (prompt_tokens - suffix) * above * 2 * hidden * act)
    # the head only at the target positions and the KL position: logits, float32 copy, log-softmax, grad
    head_rows = together * ((prompts - 1) * V_TARGET_TOKENS + 1)
    v_star = saved + head_rows * shape["vocab"] * (act + 3 * 4)
    # per logit: the head's output, its float32 copy (none when the head is float32) and the log-softmax
    upcast = (act if act != 4 else 0) + 8
    # a scoring pass of the evaluation or the audit: the trunk on its prompts, then the head only
    # at the positions that predict a target token (metrics.score, collateral.target_scores):
    # their logits, float32 copy and log-softmax
    scored = min(SCORE_BATCH, EVAL_ROWS_PER_REQUEST * requests)
    # (the trunk's activations are gone when the head runs: its final hidden states remain)
    evaluate = max(forward(scored, SCORE_TOKENS),
                   scored * SCORE_TOKENS * hidden * act + scored * V_TARGET_TOKENS * shape["vocab"] * upcast)
    # the perplexity check before and after an edit (measure.perplexity): the trunk on its windows
    # (at most PPL_BATCH at once), their final hidden states, and HEAD_CHUNK_ELEMENTS logits at a time
    # (the head's output, its float32 copy, the log-softmax)
    windows = max(1, min(PPL_BATCH, PPL_TOKENS // PPL_SEQ_LEN))
    perplexity = max(forward(windows, PPL_SEQ_LEN), windows * PPL_SEQ_LEN * hidden * act
                     + min(HEAD_CHUNK_ELEMENTS, windows * PPL_SEQ_LEN * shape["vocab"]) * upcast)
    # the dense float64 update and weight copy; MEMIT/AlphaEdit also snapshot every edited weight
    dense = 2 * out * d * 8 + (len(edited_layers) * out * d * act if method != "rome" else 0)
    solve = SOLVE_SQUARES[method] * 8 * d * d + dense
    held_out = len(edited_layers) * d * HELD_OUT_TOKENS * 8 if method != "rome" else 0
    # collateral.preservation_cost: C and W in float64, W C, and (W C) * W (measured exactly this)
    audit = 8 * d * d + 3 * 8 * out * d
    return MemoryPlan(model=model, method=method, dtype=dtype, **shape, edited_layers=list(edited_layers),
                      weights=weights, largest_block=largest_block, stats_held=len(edited_layers) * 4 * d * d,
                      stats_pass=stats_pass, v_star=v_star, solve=solve, requests=requests, prompts=prompts,
                      prompt_tokens=prompt_tokens, evaluate=evaluate, held_out=held_out, suffix_tokens=suffix,
                      audit=audit, perplexity=perplexity)


def shape_of(plan: MemoryPlan) -> dict[str, int]:
    return {k: getattr(plan, k) for k in ("parameters", "layers", "hidden", "heads", "key_dim", "value_dim", "vocab")}


def replan(plan: MemoryPlan, *, dtype: str | None = None, method: str | None = None) -> MemoryPlan:
    """The same model planned in another weight dtype or for another method (ROME edits the last
    of MEMIT's layers)."""
    dtype = dtype or plan.dtype
    method = method or plan.method
    scale = getattr(torch, dtype).itemsize / getattr(torch, plan.dtype).itemsize
    layers = [max(plan.edited_layers)] if method == "rome" and plan.method != "rome" else plan.edited_layers
    return assemble(plan.model, method, dtype, shape_of(plan), edited_layers=layers,
                    weights=int(plan.weights * scale), largest_block=int(plan.largest_block * scale),
                    requests=plan.requests, prompts=plan.prompts, prompt_tokens=plan.prompt_tokens,
                    suffix_tokens=plan.suffix_tokens)
