"""``edit-auditor gui``: the window, registered as a subcommand of the command line."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from .app import add_arguments

    p = subparsers.add_parser("gui", help="open the Edit Auditor window",
                              description="Open the desktop window: edit with live charts, review, "
                                          "revert and export from the audit trail.")
    add_arguments(p)
    p.set_defaults(func=cmd_gui)


def cmd_gui(args: argparse.Namespace) -> int:
    from .app import run

    return run(args.path, args.device)
