"""``edit-auditor trace``: causal tracing of one prompt, or the layer suggested by tracing known facts.

See trace.py (the method, Meng et al. 2022) and layer_suggestion.py.

Example::

    edit-auditor trace demo --prompt "The Eiffel Tower is located in the city of" \\
        --subject "The Eiffel Tower" --png eiffel.png
    edit-auditor trace demo --prompt "The capital of {} is" --subject France --kind mlp --json
    edit-auditor trace demo --suggest-layer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from auditor.cli.common import (add_json_arg, add_model_args, bounded_int, check_layer, fail, layer_index, load_from_args,
                                print_json, print_table, unicode_text)
from auditor.files import check_output

# noise samples per probability: the paper used 10; each costs one forward pass per token and layer
MAX_SAMPLES = 1000


def _errors() -> tuple[type[BaseException], ...]:
    from auditor.measure.trace import TraceError
    from auditor.run.edit import EditCancelled

    return (TraceError, EditCancelled)


def __getattr__(name: str) -> Any:  # ERRORS is resolved lazily so `--help` stays fast
    if name == "ERRORS":
        return _errors()
    raise AttributeError(name)


def _progress(enabled: bool) -> Any:
    def show(p: Any) -> None:
        if enabled and p.total:
            sys.stderr.write(f"\r{p.message or p.phase} {p.step}/{p.total}   ")
            sys.stderr.flush()
    return show


def _print_heatmap(tr: Any) -> None:
    """A compact text view: per token, P(answer) at every 3rd layer, and the best layer."""
    import numpy as np

    L = tr.effects.shape[1]
    cols = list(range(0, L, max(1, L // 10)))
    print(f"{tr.kind}: P({tr.answer!r}) clean {tr.clean_prob:.4f}, corrupted {tr.corrupted_prob:.4f} "
          f"({tr.samples} noise samples, window {tr.window}, {tr.precision})")
    labels = [repr(t) for t in tr.tokens]
    width = max(len(s) for s in labels) + 1
    print(" " * (width + 1) + " ".join(f"{c:>5}" for c in cols) + "  best")
    for i, (lab, row) in enumerate(zip(labels, tr.effects)):
        star = "*" if tr.subject_span[0] <= i < tr.subject_span[1] else " "
        print(f"{lab:<{width}}{star}" + " ".join(f"{row[c]:5.3f}" for c in cols) + f"  {int(np.argmax(row)):>4}")


def _check_fits(lm: Any, text: str, answer: str | None) -> None:
    """The prompt (and its answer) within the model's context, before any forward pass."""
    from auditor.measure.perplexity import max_positions

    limit = max_positions(lm.model.config)
    n = len(lm.tokenizer(text + " " + (answer or ""))["input_ids"]) + 1  # + the predicted token
    if limit is not None and n > limit:
        raise fail(f"--prompt is {n} tokens with its answer; the model reads at most {limit}: shorten it")


def cmd_trace(args: argparse.Namespace) -> int:
    if args.suggest_layer:
        return _suggest(args)
    if not args.prompt or not args.subject:
        raise fail("--prompt and --subject are required (or --suggest-layer)")
    text = args.prompt.replace("{}", args.subject, 1) if "{}" in args.prompt else args.prompt
    if args.subject not in text:
        raise fail(f"the subject {args.subject!r} does not occur in the prompt {text!r}")
    if args.png:
        check_output(args.png, what="--png")  # before the work: a refused path fails at once
    from auditor.measure.trace import DEFAULT_SAMPLES, KINDS, Tracer

    lm = load_from_args(args)
    check_layer(lm, args.layer)
    _check_fits(lm, text, args.answer)
    tracer = Tracer(lm, samples=args.samples or DEFAULT_SAMPLES, precision=args.precision,
                    noise_source=args.noise_source)
    kinds = [args.kind] if args.kind else list(KINDS)
    show = args.progress or (sys.stderr.isatty() and not args.json)
    traces = tracer.trace(args.prompt, args.subject, args.answer, kinds=kinds, progress=_progress(show))
    if show:
        sys.stderr.write("\n")
    ordered = [traces[k] for k in kinds]
    if args.png:
        from auditor.measure.trace_plot import write_png

        write_png(ordered, args.png, layer=args.layer)
    if args.json:
        print_json({"model": lm.info()["source"], "fingerprint": lm.fingerprint, "png": args.png,
                    "traces": [t.to_dict() for t in ordered]})
    else:
        for tr in ordered:
            _print_heatmap(tr)
        print(f"{ordered[0].seconds:.1f} s" + (f", heatmaps written to {args.png}" if args.png else ""))
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from auditor.measure.layer_suggestion import suggest_layer

    lm = load_from_args(args)
    s = suggest_layer(lm, fingerprint=lm.fingerprint, progress=_progress(args.progress))
    if args.json:
        print_json(s.to_dict())
        return 0
    print(s.summary() + (" (cached)" if s.cached else f" in {s.seconds:.1f} s"))
    print_table([{"subject": f["subject"], "answer": f["answer"], "clean": f["clean_prob"],
                  "corrupted": f["corrupted_prob"], "used": f["used"],
                  "best_layer": max(range(len(f["mlp_effect"])), key=f["mlp_effect"].__getitem__)}
                 for f in s.facts])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trace", help="causal tracing: where a fact lives in the model before editing it",
        description="Corrupt the subject's embeddings with noise (3x the embeddings' std), restore one "
                    "hidden state at a time and measure how much of the answer's probability comes "
                    "back (Meng et al. 2022). Prints the heatmaps (tokens x layers) or writes them as "
                    "JSON / PNG. With --suggest-layer: the layer suggested by tracing the known facts.")
    add_model_args(p)
    p.add_argument("--prompt", type=unicode_text, default=None,
                   help="the prompt, containing the subject (or '{}' where the subject goes)")
    p.add_argument("--subject", type=unicode_text, default=None, help="the subject whose embeddings are corrupted")
    p.add_argument("--answer", type=unicode_text, default=None,
                   help="the answer whose probability is traced (default: the model's top prediction)")
    p.add_argument("--kind", choices=("hidden", "mlp", "attn"), default=None,
                   help="restore only this kind of state (default: all three)")
    p.add_argument("--samples", type=bounded_int(1, MAX_SAMPLES), default=None, metavar="N",
                   help="noise samples per probability (default: 5; the paper used 10)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="matrix products of the restorations of a float32 model: bfloat16 is about 1.7x "
                        "faster on CPUs with bf16 instructions and moves probabilities by about 0.01 "
                        "(default: float32)")
    p.add_argument("--noise-source", choices=("subjects", "corpus"), default="subjects",
                   help="noise std = 3 x the std of the embeddings of subject tokens (the reference's, default) "
                        "or of a sample of the reference text (the choice before session 5)")
    p.add_argument("--layer", type=layer_index, default=None, help="layer to mark on the PNG (e.g. the edited one)")
    p.add_argument("--png", type=Path, default=None, metavar="FILE", help="write the heatmaps as a PNG")
    p.add_argument("--suggest-layer", action="store_true",
                   help="trace the known facts and print the suggested layer to edit (cached)")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when not a terminal")
    add_json_arg(p)
    p.set_defaults(func=cmd_trace)
