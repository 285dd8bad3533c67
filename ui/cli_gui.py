"""``edit-auditor gui``: the window, registered as an optional subcommand of the command line.

Registered through the ``edit_auditor.commands`` entry-point group (``pyproject.toml``), so the
core's command line never imports ``ui``. This module imports nothing from Qt: ``register`` only
declares the arguments, and the window (PySide6) is imported when ``gui`` runs. Without a usable
PySide6 (not installed, or a headless machine without libEGL) ``gui`` fails with one line and
every other command works.
"""

from __future__ import annotations

import argparse

from auditor.cli import fail

from .arguments import add_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gui", help="open the Edit Auditor window",
                              description="Open the desktop window: edit with live charts, review, "
                                          "revert and export from the audit trail.")
    add_arguments(p)
    p.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    from .system_libs import check_window_libraries

    missing = check_window_libraries()
    if missing:
        raise fail(missing)
    try:
        from .app import run
    except ImportError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise fail(f"the window cannot start: Qt (PySide6) cannot be imported ({first}); "
                   "install PySide6 and its system libraries (README), or use the other commands") from None
    return run(args.path, args.device)
