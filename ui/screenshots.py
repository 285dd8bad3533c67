"""Take the documentation screenshots: the main window mid-edit, and the audit trail.

Runs a real session on the demo model in a temporary workspace (and temporary settings,
so the user's own are untouched): an applied edit, then a second edit photographed while
its v* optimisation is running, then the audit trail with its entries. Works offscreen::

    QT_QPA_PLATFORM=offscreen python -m ui.screenshots            # writes docs/screenshots/*.png
    xvfb-run python -m ui.screenshots --out /tmp/shots            # or under Xvfb

``--quick`` makes one edit instead of two (the test suite uses it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SIZE = (1440, 900)
MID_EDIT = "main-window-mid-edit.png"
AUDIT = "audit-trail.png"

EDITS = [
    # (prompt, subject, new target, true target, paraphrase, neighbourhood "prompt | answer")
    ("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris",
     "Where is the Eiffel Tower? It is in the city of", "The Louvre is located in the city of | Paris"),
    ("The capital of {} is", "Canada", "Sydney", "Ottawa",
     "Canada's capital city is", "The capital of France is | Paris"),
]


def _fill(panel, edit) -> None:
    prompt, subject, new, true, para, neigh = edit
    panel.prompt.setText(prompt)
    panel.subject.setText(subject)
    panel.target_new.setText(new)
    panel.target_true.setText(true)
    panel.paraphrases.setPlainText(para)
    panel.neighborhood.setPlainText(neigh)


def _save(widget, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not widget.grab().save(str(path)):
        raise RuntimeError(f"could not write {path}")
    return path


def take(out: Path, *, quick: bool = False, workspace: Path | None = None, timeout: float = 1800) -> list[Path]:
    """Run the session and write the PNGs into ``out``; returns their paths."""
    from PySide6.QtCore import QSettings

    from . import settings
    from .app import make_app
    from .app import process_until as _spin

    app = make_app()
    tmp = Path(tempfile.mkdtemp(prefix="edit-auditor-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    settings.put(settings.WORKSPACES_DIR, str(workspace or tmp / "workspaces"))
    from .main_window import MainWindow

    window = MainWindow(restore_last=False)
    window.resize(*SIZE)
    window.show()
    try:
        window.open_path("demo")
        if not _spin(lambda: window.workspace is not None and not window.runner.busy, timeout):
            raise RuntimeError(f"the demo model did not open: {window.last_error}")
        edits = EDITS[:1] if quick else EDITS
        for i, edit in enumerate(edits):
            last = i == len(edits) - 1
            _fill(window.panel, edit)
            _spin(lambda: False, 0.8)  # let the answer preview run
            _spin(lambda: not window.runner.busy, timeout)
            (window.panel.dry_button if last and not quick else window.panel.apply_button).click()
            if last:
                if not _spin(lambda: window.live_chart.steps >= 4 or not window.runner.busy, timeout):
                    raise RuntimeError("the edit produced no optimisation steps")
                window.live_chart.flush()
                _spin(lambda: False, 0.1)
                shot = _save(window, out / MID_EDIT)
            if not _spin(lambda: not window.runner.busy, timeout):
                raise RuntimeError("the edit did not finish")
            if window.last_error:
                raise RuntimeError(f"the edit failed: {window.last_error}")
        window.tabs.setCurrentWidget(window.audit)
        if window.rows:
            window.audit.select_entry(window.rows[0]["id"])
        _spin(lambda: False, 0.3)
        return [shot, _save(window, out / AUDIT)]
    finally:
        window.runner.cancel()  # closing waits for the worker (never blocking): let it end first
        _spin(lambda: not window.runner.busy, timeout)
        window.close()
        window.deleteLater()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default: {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="one edit instead of two")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")
    for path in take(args.out, quick=args.quick):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
