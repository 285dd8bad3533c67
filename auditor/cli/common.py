"""Shared pieces of every command module: the one-line user error, the model options, output.

A command module (``auditor.cli.edit``, a plugin such as ``ui.cli_gui``) defines
``register(subparsers)``, adds :func:`add_model_args` / :func:`add_json_arg` to its parsers, loads
the model with :func:`load_from_args`, prints with :func:`emit`, :func:`print_json` or
:func:`print_table`, and reports a user error with ``raise fail("...")`` (one line on stderr, exit
code 2; see ``auditor.cli.parser``). These names are also importable from ``auditor.cli``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel

PROG = "edit-auditor"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A user error found by a command itself; printed as one line, exit code 2."""


def fail(message: str) -> CliError:
    """``raise fail("...")`` from a handler: one-line error, exit code 2."""
    return CliError(message)


def user_errors() -> tuple[type[BaseException], ...]:
    """The foundation's exception classes that mean "the input is wrong", not "the program is"."""
    from auditor.model.architectures import UnsupportedArchitecture
    from auditor.model.checkpoint import CheckpointError
    from auditor.model.corpus import CorpusError
    from auditor.model.requests import RequestError
    from auditor.model.resources import ResourceMissing

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
    add_memory_args(parser)


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    """``--max-memory`` and ``--offload-folder`` (read by :func:`memory_from_args`): for every
    command that loads a model, also those that open a workspace."""
    parser.add_argument("--max-memory", type=_max_memory, default=None, metavar="DEV=SIZE,...",
                        help="most weights each device may hold, e.g. 0=20GiB,cpu=8GiB (accelerate's "
                             "max_memory, device_map=auto); the rest goes to --offload-folder; the working "
                             "memory comes on top (see `info MODEL --plan`); a model that cannot fit is refused")
    parser.add_argument("--offload-folder", type=Path, default=None, metavar="DIR",
                        help="folder for weights offloaded to disk (created; must be new, empty or an "
                             "earlier offload folder)")


def _max_memory(text: str) -> dict[int | str, int]:
    from auditor.model.memory_plan import parse_max_memory

    try:
        return parse_max_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def memory_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``max_memory`` / ``offload_folder`` for :func:`~auditor.model.checkpoint.load_model` (or a
    workspace) from :func:`add_model_args`'s options; the offload folder checked first."""
    from auditor.model.checkpoint import cache_dir
    from auditor.model.offload import OffloadFolderError, check_offload_folder

    offload = getattr(args, "offload_folder", None)
    if offload is not None:
        named = [Path(p) for p in (getattr(args, "workspace", None), getattr(args, "model", None))
                 if p and str(p) != "demo"]
        try:
            check_offload_folder(offload, protected=[*named, cache_dir() / "models"])
        except OffloadFolderError as e:
            raise fail(str(e)) from None
    return {"max_memory": getattr(args, "max_memory", None), "offload_folder": offload}


def load_from_args(args: argparse.Namespace) -> "LoadedModel":
    """The model named by :func:`add_model_args`'s options (refused, with its memory plan on
    stderr, when the plan says it will not fit)."""
    import sys

    from auditor.model.checkpoint import MemoryRefused, load_model

    memory = memory_from_args(args)
    try:
        return load_model(args.model, dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                          method=getattr(args, "method", None), **memory)
    except MemoryRefused as e:
        print(e.plan.table(), file=sys.stderr)
        print("options: " + "; ".join(e.options), file=sys.stderr)
        raise


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
