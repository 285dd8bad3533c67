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

from auditor.cli.common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USER_ERROR, PROG, printable, user_errors

# The core's command modules (one line per module; optional commands use ENTRY_POINT_GROUP).
COMMAND_MODULES: tuple[str, ...] = (
    "auditor.cli.model",
    "auditor.cli.edit",
    "auditor.cli.ledger",
    "auditor.cli.watch",
    "auditor.cli.reviewed",
    "auditor.cli.patch",
    "auditor.cli.sequence",
    "auditor.cli.calibrate",
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
        message = printable(" ".join(message.split()))  # it echoes the arguments: no raw escapes, no surrogates
        self.exit(EXIT_USER_ERROR, f"{PROG}: error: {where}{message} (see `{self.prog} --help`)\n")


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


def describe(error: BaseException, errors: tuple[type[BaseException], ...] = ()) -> str:
    """The one line a user sees for ``error``: what failed, on which file, what to do.

    The product's own errors (:class:`~auditor.base.AuditorError`, the command modules' ``ERRORS``)
    already say all three. An ``OSError`` names its file and the system's reason. Anything else is a
    bug: its type and message, and how to see the traceback.
    """
    from auditor.base import AuditorError
    from auditor.files import describe_os_error

    if isinstance(error, (AuditorError, *errors)):
        return _one_line(error)
    if isinstance(error, (MemoryError,)) or type(error).__name__ == "OutOfMemoryError":
        return ("out of memory: " + _one_line(error)[:200] + "; try --device cpu, a smaller --dtype, fewer requests "
                "per batch, or `edit-auditor info MODEL --plan`")
    if isinstance(error, OSError):
        names = [str(n) for n in (error.filename, error.filename2) if n is not None]
        where = f"{' -> '.join(names)}: " if names else ""
        return " ".join(f"{where}{describe_os_error(error)}".split())
    if isinstance(error, UnicodeError):
        return f"text that cannot be encoded or decoded ({_one_line(error)[:200]})"
    return (f"unexpected {type(error).__name__}: {_one_line(error)[:300]} "
            f"(a bug; run `{PROG} -v ...` for the traceback and report it)")


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
         errors: tuple[type[BaseException], ...], verbose: bool) -> int:
    from auditor.record.ledger import closing_opened

    try:
        with closing_opened():  # whatever the command opened is closed when it returns or fails
            return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_stdout()
    except Exception as e:  # the error boundary: every failure is one line and exit 2
        return report_error(e, errors, verbose)


def report_error(error: BaseException, errors: tuple[type[BaseException], ...] = (), verbose: bool = False) -> int:
    """Print ``error`` as one line on stderr (and its traceback with ``verbose``); the exit code."""
    if verbose:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    line = describe(error, errors).encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return EXIT_USER_ERROR


def _closed_stdout() -> int:
    """The reader of our output went away (``... | head``): stop quietly, as a shell tool does."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _quiet_libraries(verbose: bool) -> None:
    """Our log lines on stderr; the libraries' progress bars only with ``--verbose``."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=f"{PROG}: %(message)s")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edit-auditor``; returns the exit code.

    The error boundary of every command: whatever a command raises ends as one line on stderr and
    exit code 2 (a failed check returns 1 itself), with the traceback only under ``-v``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    errors: tuple[type[BaseException], ...] = ()
    try:
        modules = command_modules()
        args = build_parser(modules).parse_args(argv)
        verbose = args.verbose
        _quiet_libraries(args.verbose)
        errors = user_errors() + tuple(e for m in modules for e in getattr(m, "ERRORS", ()))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        return report_error(e, errors, verbose)
    return _run(args.func, args, errors, verbose)
