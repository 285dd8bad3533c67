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
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from auditor.model.checkpoint import LoadedModel

PROG = "edit-auditor"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output went away


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


# ---------------------------------------------------------------- argument types

# The largest id SQLite stores (a signed 64-bit integer); larger ones raise OverflowError there.
MAX_ID = 2**63 - 1


def bounded_int(low: int, high: int | None = None, *, what: str = "") -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[low, high]`` (no upper bound when ``high`` is None).

    Every integer option and argument of the command line is parsed by one of these, so a negative
    ``--limit``, an id SQLite cannot hold or a billion ``--samples`` is refused by argparse with one
    line (exit 2) before any command runs.
    """
    def parse(text: str) -> int:
        value = int(text.strip(), 10)  # ValueError: argparse says "invalid int value: 'TEXT'"
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {value})")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}{f' ({what})' if what else ''} (got {value})")
        return value

    parse.__name__ = "int"  # argparse names the type in its message: "invalid int value: 'x'"
    return parse


def model_or_workspace(args: argparse.Namespace) -> None:
    """Commands that work on a MODEL or on a workspace's base checkpoint take exactly one of them:
    a MODEL named beside a --workspace would otherwise be passed over for the workspace's own base
    (the user named one model, another would be edited)."""
    if getattr(args, "model", None) and getattr(args, "workspace", None):
        raise fail("name a MODEL or a --workspace, not both (a workspace edits its own base checkpoint)")
    if not getattr(args, "model", None) and not getattr(args, "workspace", None):
        raise fail("name a MODEL (a folder, a .gguf file or 'demo') or a --workspace")


positive_int = bounded_int(1, MAX_ID)  # counts and limits (SQLite holds them)
entry_id = bounded_int(1, MAX_ID, what="the largest id SQLite stores")
layer_index = bounded_int(0, 4095)  # checked against the loaded model by check_layer
# a hyper-parameter flag (--layer, --steps of edit): its range is the engine's (hparams.RANGES), so the
# flag and the same value in --hparams JSON fail alike; here only "a whole number SQLite can hold"
hparam_int = bounded_int(-MAX_ID - 1, MAX_ID)


def unicode_text(value: str) -> str:
    """An argparse ``type`` for free text that is stored or searched (notes, prompts, search words):
    valid Unicode only. An argument the OS could not decode arrives with lone surrogates
    (``surrogateescape``), which SQLite, JSON files and terminals cannot take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid text (bytes that are not UTF-8)") from None
    return value


def check_layer(lm: "LoadedModel", layer: int | None, option: str = "--layer") -> None:
    """Refuse a layer index the loaded model does not have (argparse cannot know the model)."""
    if layer is not None and not 0 <= layer < lm.n_layers:
        raise fail(f"{option} {layer}: the model has {lm.n_layers} layers (0-{lm.n_layers - 1})")


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
    text = json.dumps(obj, indent=2, default=str, ensure_ascii=False)  # C0 controls always escaped
    if any(ord(ch) in _JSON_UNSAFE or 0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        text = json.dumps(obj, indent=2, default=str)  # every non-ASCII character as \\uNNNN: still exact JSON
    print(text)


# C0 and C1 control characters (ESC starts the ANSI sequences that recolour, move the cursor or
# rewrite a terminal's title), DEL, and the bidirectional overrides that reorder what a reader sees
_UNSAFE = {c: None for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x202A, 0x202B, 0x202C, 0x202D,
                             0x202E, 0x2066, 0x2067, 0x2068, 0x2069)}
_JSON_UNSAFE = {c for c in _UNSAFE if c >= 0x7F}  # what json.dumps(ensure_ascii=False) leaves raw


def printable(text: Any) -> str:
    """``text`` as one safe line for a terminal: control characters, escape sequences' ESC and
    bidirectional overrides shown as ``\\xNN`` / ``\\uNNNN`` escapes, lone surrogates as ``\\udNNN``
    (text from request files and ledgers is untrusted). Every table and key/value line the command
    line prints goes through here; JSON output (:func:`print_json`) stays exact JSON instead."""
    s = str(text)
    if s.isprintable() and s.translate(_UNSAFE) == s:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    out = []
    for ch in s:
        code = ord(ch)
        if code in _UNSAFE or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else printable(value)


def print_table(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """A mapping as ``key  value`` lines, or a list of mappings as an aligned table with a header."""
    if isinstance(rows, Mapping):
        width = max((len(str(k)) for k in rows), default=0)
        for key, value in rows.items():
            print(f"{printable(key):<{width}}  {_cell(value)}")
        return
    if not rows:
        return
    cols = [printable(c) for c in (columns or rows[0].keys())]
    cells = [[_cell(r.get(c)) for c in (columns or rows[0].keys())] for r in rows]
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
