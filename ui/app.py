"""Start the window: ``edit-auditor gui`` or the ``edit-auditor-gui`` gui-script.

``main()`` builds the QApplication (organisation and application names for QSettings,
the icon, the Fusion style), shows :class:`~ui.main_window.MainWindow` and runs the
event loop. The first run offers the demo model; later runs reopen the last workspace.
A path on the command line (a workspace, a checkpoint folder, a ``.gguf`` file or
``demo``) is opened instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QStyleFactory

from auditor.model.resources import resources_dir

from . import settings
from .arguments import add_arguments

ICON_DIR = resources_dir(strict=False) / "icons"


def make_app(argv: Sequence[str] | None = None) -> QApplication:
    """The QApplication of the process (created once), set up for Edit Auditor."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setOrganizationName(settings.ORG)
    app.setApplicationName(settings.APP)
    app.setApplicationDisplayName(settings.APP)
    app.setDesktopFileName("io.github.edit_auditor.EditAuditor")
    if "Fusion" in QStyleFactory.keys():
        app.setStyle("Fusion")
    icon = ICON_DIR / "edit-auditor.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    return app


def process_until(until, timeout: float) -> bool:
    """Run the event loop until ``until()`` is true or ``timeout`` seconds passed; returns ``until()``.

    For scripts (screenshots, benchmarks) and module-scoped test fixtures, which have no qtbot.
    """
    from PySide6.QtCore import QEventLoop

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while not until():
        if time.monotonic() > end:
            return False
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.005)
    return True


def run(open_path: str | None = None, device: str | None = None) -> int:
    app = make_app()
    if device:
        settings.put(settings.DEVICE, device)
    from .main_window import MainWindow

    window = MainWindow(restore_last=open_path is None)
    window.show()
    if open_path is not None:
        window.open_path(open_path)
    return app.exec()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edit-auditor-gui`` gui-script."""
    parser = argparse.ArgumentParser(prog="edit-auditor-gui", description="The Edit Auditor window.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.path, args.device)


if __name__ == "__main__":
    sys.exit(main())
