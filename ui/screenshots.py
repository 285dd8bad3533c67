"""Take the documentation screenshots: the main window mid-edit, and the audit trail.

Runs a real session on the demo model in a temporary workspace (and temporary settings,
so the user's own are untouched): an applied edit, then a second edit photographed while
its v* optimisation is running, then the audit trail with its entries. Works offscreen::

    QT_QPA_PLATFORM=offscreen python -m ui.screenshots            # writes docs/screenshots/*.png
    xvfb-run python -m ui.screenshots --out /tmp/shots            # or under Xvfb

``--quick`` makes one edit instead of two (the test suite uses it). ``--tabs`` photographs every
tab after a real session (an edit, a question, a batch, a sequence, a trace) at 1400x900 and
1280x800 (``tab-<tab>-<w>x<h>.png``).
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


def _open_demo(workspace: Path | None, timeout: float):
    """The main window on the demo model, in temporary settings (and workspace unless given)."""
    from PySide6.QtCore import QSettings

    from . import settings
    from .app import make_app
    from .app import process_until as _spin

    make_app()
    tmp = Path(tempfile.mkdtemp(prefix="edit-auditor-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "settings"))
    settings.put(settings.WORKSPACES_DIR, str(workspace or tmp / "workspaces"))
    from .main_window import MainWindow

    window = MainWindow(restore_last=False)
    window.resize(*SIZE)
    window.show()
    window.open_path("demo")
    if not _spin(lambda: window.workspace is not None and not window.runner.busy, timeout):
        raise RuntimeError(f"the demo model did not open: {window.last_error}")
    return window, tmp


def _close(window, timeout: float) -> None:
    from .app import process_until as _spin

    window.runner.cancel()  # closing waits for the worker (never blocking): let it end first
    _spin(lambda: not window.runner.busy, timeout)
    window.close()
    window.deleteLater()


def take(out: Path, *, quick: bool = False, workspace: Path | None = None, timeout: float = 1800) -> list[Path]:
    """Run the session and write the PNGs into ``out``; returns their paths."""
    from .app import process_until as _spin

    window, _tmp = _open_demo(workspace, timeout)
    try:
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
        _close(window, timeout)


TAB_SIZES = ((1400, 900), (1280, 800))
SEQUENCE_REQUESTS = [
    {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"prompt": "{} is a company from the country of", "subject": "Toyota", "target_new": "Germany"},
]


def take_tabs(out: Path, *, sizes=TAB_SIZES, steps: int = 0, timeout: float = 3600) -> list[Path]:
    """Every tab after a real session, at each window size: an applied edit with the optional
    fields empty (default probes), a question in the Ask box, a trace, a MEMIT batch of two and a
    sequence of two. ``steps`` sets the v* steps of every edit (0: the family's default)."""
    import json

    from auditor.model.requests import EditRequest

    from .app import process_until as _spin

    window, tmp = _open_demo(None, timeout)

    def wait(what: str) -> None:
        if not _spin(lambda: not window.runner.busy and not window.panel._answer_timer.isActive(), timeout):
            raise RuntimeError(f"{what} did not finish")
        if window.last_error:
            raise RuntimeError(f"{what} failed: {window.last_error}")

    try:
        panel = window.panel
        if steps:
            panel.hp["v_num_grad_steps"].setValue(steps)
        prompt, subject, new = EDITS[0][:3]
        panel.prompt.setText(prompt)
        panel.subject.setText(subject)
        panel.target_new.setText(new)
        window.ask_view.prompt.setText("Where is the Eiffel Tower? It is in the city of")
        wait("the answer")
        panel.apply_button.click()
        wait("the edit")
        batch = window.batch_panel
        batch.set_requests([EditRequest(*e[:4]) for e in EDITS])
        if steps:
            batch.hparams.setText(json.dumps({"v_num_grad_steps": steps}))
        batch.submit()
        wait("the batch")
        path = tmp / "sequence.json"
        path.write_text(json.dumps(SEQUENCE_REQUESTS))
        view = window.sequence_view
        view.hparams = {"v_num_grad_steps": steps} if steps else None
        view.requests_path.setText(str(path))
        view.stop_on.setText("none")
        view.allow_collapse.setChecked(True)
        view.watch.prompt.setText("The capital of France is")  # a watched answer: its pass rate is charted
        view.watch.answer.setText("Paris")
        view.watch.add()
        wait("the watchlist's answer")
        view.run_button.click()
        wait("the sequence")
        trace = window.trace_view
        trace.prompt.setText(EDITS[0][0])
        trace.subject.setText(EDITS[0][1])
        trace.samples.setValue(3)
        trace.trace_button.click()
        wait("the trace")
        window.audit.select_entry(window.rows[0]["id"])
        shots = []
        for w, h in sizes:
            window.resize(w, h)
            for i in range(window.tabs.count()):
                window.tabs.setCurrentIndex(i)
                window.live_chart.flush()
                window.sequence_view.flush()
                _spin(lambda: False, 0.4)
                _spin(lambda: not window.runner.busy, timeout)  # an answer refresh may still be running
                name = window.tabs.tabText(i).lower().replace(" ", "-")
                shots.append(_save(window, out / f"tab-{name}-{w}x{h}.png"))
        return shots
    finally:
        _close(window, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default: {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="one edit instead of two")
    parser.add_argument("--tabs", action="store_true",
                        help="every tab after a real session, at 1400x900 and 1280x800 (tab-*.png)")
    parser.add_argument("--steps", type=int, default=0, help="with --tabs: v* steps of every edit (0: default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")
    paths = take_tabs(args.out, steps=args.steps) if args.tabs else take(args.out, quick=args.quick)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
