"""The window's command-line arguments, shared by ``edit-auditor gui`` (``ui.cli_gui``) and
``edit-auditor-gui`` (``ui.app.main``). No Qt here: the command line imports it to build its parser."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The window's arguments (shared by ``edit-auditor gui`` and ``edit-auditor-gui``)."""
    parser.add_argument("path", nargs="?", default=None,
                        help="workspace folder, checkpoint folder, .gguf file or 'demo' to open "
                             "(default: the last workspace, or the welcome page on the first run)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (remembered)")
