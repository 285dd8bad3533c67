"""``edit-auditor``: the command line.

``main()`` builds one ``argparse`` parser and lets every module named in :data:`COMMAND_MODULES`
(the core's own commands, one module per command family in this package)
and every module registered under the entry-point group :data:`ENTRY_POINT_GROUP` (optional
commands such as the window's ``gui``, declared in ``pyproject.toml`` as simonw/llm declares its
plugins) add its own: each such module defines ``register(subparsers)`` and sets a handler with
``parser.set_defaults(func=handler)``, where ``handler(args) -> int`` returns the exit code.
A module may also define ``ERRORS``, a tuple of exception classes that are the user's fault;
they are reported like the foundation's own.

The core never imports ``ui`` or Qt: it only knows the entry point's *name*, and a plugin's
``register`` must not import its heavy dependencies (``gui`` imports the window only when it
runs). A plugin that cannot be imported is left out; every core command keeps working.

Errors a user can fix (:class:`~auditor.model.checkpoint.CheckpointError`,
:class:`~auditor.model.requests.RequestError`, :class:`~auditor.model.architectures.UnsupportedArchitecture`,
:class:`~auditor.model.corpus.CorpusError`, ...) print one line ``edit-auditor: error: ...`` on stderr
and exit with code 2, as argparse does for bad arguments; never a traceback.

Shared helpers for command modules (:func:`~auditor.cli.common.add_model_args`, ``fail``, ...)
are in ``auditor.cli.common``.

Example::

    edit-auditor info demo --json
    edit-auditor ppl ./my-model --text notes.txt --tokens 4096 --device cuda
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Callable

from auditor.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, PROG, user_errors

# The core's command modules (one line per module; optional commands use ENTRY_POINT_GROUP).
COMMAND_MODULES: tuple[str, ...] = (
    "auditor.cli.model",
    "auditor.cli.edit",
    "auditor.cli.ledger",
    "auditor.cli.watch",
    "auditor.cli.reviewed",
    "auditor.cli.sequence",
    "auditor.cli.trace",
    "auditor.cli.audit",
)
ENTRY_POINT_GROUP = "edit_auditor.commands"


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
    """Every installed module of :data:`COMMAND_MODULES`, then the entry-point plugins
    (:func:`plugin_modules`)."""
    found = [_import_command_module(name) for name in COMMAND_MODULES]
    core = [m for m in found if m is not None]
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
