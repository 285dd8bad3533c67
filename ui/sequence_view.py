"""The "Sequence" view: run a file of edits with the collapse monitor on, and watch it live.

The view collects the run's options (requests file, method, key mode, batch size, what to stop
on, the per-edit guard override) and emits ``run_requested(path, options)``; the window starts
:func:`sequence_job` in its worker. Each step's record (auditor.run.sequence) arrives through the
worker's progress messages as ``("sequence-step", record)`` and is buffered; the curves of every
monitored figure (auditor.run.monitor, the same figures as the capacity report) are redrawn at most
every ``REDRAW_MS`` while the tab is seen (``ui.refresh``), each with its threshold as a dashed red line. When the run ends,
:meth:`SequenceView.finish` shows whether and why it stopped. ``report_requested(path)`` asks
for the capacity report of the workspace (auditor.run.report). The watchlist panel (watch_panel.py)
sits above the curves. No science here.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Iterator
from typing import Any, Callable

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from auditor.run.monitor import FIGURE_KEYS, FIGURES, MonitorError, Thresholds, parse_stop_on
from auditor.run.report import PLOTS, THRESHOLD_OF

from .charts import (
    BLUE,
    BOTTOM_AXIS_PX,
    RED,
    REDRAW_MS,
    TICKS_AXIS_PX,
    EmptyNote,
    IntAxis,
    cache_axes,
    chart_page,
    wrapped,
)
from .dialogs import output_refusal
from .refresh import Refresh
from .watch_panel import WatchPanel

STEP_MESSAGE = "sequence-step"
TOTAL_MESSAGE = "sequence-total"  # ("sequence-total", number of steps), sent once at the start
EMPTY_NOTE = "one point per step\nappears here during a run"
# figures that need more than one step: their note says when the first point comes
EMPTY_NOTES = {"ppl_trend": "a slope over the last steps\nappears here from the third step"}


def sequence_job(ws: Any, path: str, options: dict[str, Any], *,
                 after_step: Callable[[], Any] | None = None) -> Callable:
    """The worker job of one run: ``job(report, cancel) -> final record``. The engine's progress
    events are reported as they come (the view's bar); ``after_step()``, when given, runs in the
    worker after each step and its value is reported as ``("answers", value)``."""

    def job(report: Callable[[Any], None], cancel: Any) -> dict[str, Any]:
        import torch

        from auditor.model.requests import load_requests
        from auditor.run.calibration import monitor_for
        from auditor.run.sequence import run_sequence

        requests = load_requests(path)
        parse_stop_on(options.get("stop_on"))  # checked before the first edit
        size = max(1, int(options.get("batch_size", 1)))
        report((TOTAL_MESSAGE, -(-len(requests) // size)))

        def on_step(record: dict[str, Any]) -> None:
            report((STEP_MESSAGE, record))
            if after_step is not None:
                with torch.no_grad():
                    report(("answers", after_step()))

        with torch.enable_grad():  # ROME's v* optimisation needs gradients
            return run_sequence(ws, requests, monitor_for(ws.base_fingerprint, options.get("stop_on")),
                                batch_size=size, cancel=cancel, on_step=on_step, progress=report,
                                method=options.get("method", "rome"),
                                key_mode=options.get("key_mode", "consistent"), hparams=options.get("hparams"),
                                allow_collapse=bool(options.get("allow_collapse")))

    return job


class SequenceView(QWidget):
    run_requested = Signal(str, dict)
    stop_requested = Signal()
    report_requested = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.hparams: dict[str, Any] | None = None  # overrides for every edit of the run (tests, scripts)
        self.steps: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        # everything scrolls as one page: at 1280x800 the charts keep a readable height instead of
        # being squeezed or cut off
        scroll, page = chart_page()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        box = QVBoxLayout(page)
        box.addLayout(self._build_form())
        self.watch = WatchPanel()
        box.addWidget(self.watch)
        self.status = QLabel("No sequence run yet.")
        self.status.setObjectName("sequenceStatus")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        box.addWidget(self.status)
        self.total_steps = 0
        self._step_seen = 0  # steps done when the bar was last drawn
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.set_idle_text("idle")
        box.addWidget(self.progress)
        self.charts = pg.GraphicsLayoutWidget()
        rows = -(-len(PLOTS) // 3)
        self.charts.setMinimumHeight(180 * rows)  # the page scrolls rather than squeeze a row of plots
        box.addWidget(self.charts, 1)
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.threshold_lines: dict[str, pg.InfiniteLine] = {}
        self.threshold_shown: dict[str, bool] = {}  # drawn once the chart has a point
        self.empty_notes: dict[str, EmptyNote] = {}
        for i, (key, (title, ylabel)) in enumerate(PLOTS.items()):
            plot = self.charts.addPlot(row=i // 3, col=i % 3, axisItems={"bottom": IntAxis("bottom")})
            # the y quantity goes under the title: a long rotated axis label overlaps its neighbour
            # titles wrapped narrow: a wide label widens its column until the third is cut off at 1280x800
            plot.setTitle(f"{wrapped(title, 28)}<br><span style='color:#555; font-size:8pt'>y: {wrapped(ylabel, 30)}</span>",
                          size="9pt")
            plot.setLabel("bottom", "edits")
            self.empty_notes[key] = EmptyNote(plot, EMPTY_NOTES.get(key, EMPTY_NOTE))
            plot.showGrid(x=True, y=True, alpha=0.2)
            cache_axes(plot, TICKS_AXIS_PX, BOTTOM_AXIS_PX)
            # the title spans the left axis too: with a fixed-width axis beside it, a title as wide
            # as the plot area pushed the third column past the window at 1280x800
            plot.layout.removeItem(plot.titleLabel)
            plot.layout.addItem(plot.titleLabel, 0, 0, 1, 2)
            self.plots[key] = plot
            self.curves[key] = plot.plot([], [], pen=pg.mkPen(BLUE, width=2), symbol="o", symbolSize=5,
                                         symbolBrush=BLUE, symbolPen=None)
            line = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen(RED, width=1.5, style=Qt.PenStyle.DashLine))
            line.setVisible(False)
            plot.addItem(line)
            self.threshold_lines[key] = line
        for col in range(3):  # three equal columns, whatever the titles' lengths
            self.charts.ci.layout.setColumnStretchFactor(col, 1)
            self.charts.ci.layout.setColumnMinimumWidth(col, 180)
        self._drawn: dict[str, tuple] = {}  # key -> (xs, ys, threshold shown) as drawn
        self.refresh = Refresh(self.charts, self._redraw, delay_ms=REDRAW_MS)
        # the open model's monitor thresholds (its calibration or the defaults; the window sets them)
        self.base_thresholds = Thresholds()
        self.set_thresholds(Thresholds(), list(FIGURE_KEYS))
        self.set_busy(False)

    def _build_form(self) -> QFormLayout:
        form = QFormLayout()
        self.requests_path = QLineEdit()
        self.requests_path.setPlaceholderText("a JSON / JSON-lines file of edit requests, applied in order")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.requests_path, 1)
        row.addWidget(browse)
        form.addRow("Requests", row)
        self.method = QComboBox()
        self.method.addItems(_methods())
        self.key_mode = QComboBox()
        self.key_mode.addItems(["consistent", "original"])
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 10_000)
        row = QHBoxLayout()
        for label, widget in (("method", self.method), ("key mode", self.key_mode), ("batch size", self.batch_size)):
            row.addWidget(QLabel(label))
            row.addWidget(widget)
        row.addStretch(1)
        form.addRow("Edits", row)
        self.stop_on = QLineEdit("all")
        self.stop_on.setToolTip("figures that stop the run: all, none, or e.g. ppl=1.5,retention,norm")
        self.stop_on.textChanged.connect(self._stop_on_changed)
        self.allow_collapse = QCheckBox("apply edits even when the per-edit collapse guard flags them")
        row = QHBoxLayout()
        row.addWidget(self.stop_on, 1)
        row.addWidget(self.allow_collapse)
        form.addRow("Stop on", row)
        self.run_button = QPushButton("Run sequence")
        self.run_button.clicked.connect(self._run_clicked)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop_requested)
        self.report_button = QPushButton("Capacity report…")
        self.report_button.clicked.connect(self._report_clicked)
        row = QHBoxLayout()
        for b in (self.run_button, self.stop_button, self.report_button):
            row.addWidget(b)
        row.addStretch(1)
        form.addRow(row)
        return form

    # ------------------------------------------------------------ input

    def options(self) -> dict[str, Any]:
        return {"method": self.method.currentText(), "key_mode": self.key_mode.currentText(),
                "batch_size": self.batch_size.value(), "stop_on": self.stop_on.text().strip() or "all",
                "allow_collapse": self.allow_collapse.isChecked(), "hparams": self.hparams}

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Edit requests", "", "Requests (*.json *.jsonl);;All files (*)")
        if path:
            self.requests_path.setText(path)

    def set_base_thresholds(self, thresholds: Thresholds) -> None:
        """The open model's monitor thresholds (calibrated or the defaults); "Stop on" overrides them."""
        self.base_thresholds = thresholds
        self._stop_on_changed()

    def _stop_on_changed(self) -> bool:
        try:
            names, thresholds = parse_stop_on(self.stop_on.text().strip() or "all",
                                              dataclasses.replace(self.base_thresholds))
        except MonitorError as e:
            self.stop_on.setStyleSheet("border: 1.5px solid #c0392b;")
            self.stop_on.setToolTip(str(e))
            return False
        self.stop_on.setStyleSheet("")
        self.set_thresholds(thresholds, names)
        return True

    def _run_clicked(self) -> None:
        path = self.requests_path.text().strip()
        if not path:
            self.show_message("Choose a requests file first.", error=True)
            return
        if not self._stop_on_changed():
            self.show_message(f"Stop on: {self.stop_on.toolTip()}", error=True)
            return
        self.run_requested.emit(path, self.options())

    def _report_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Capacity report", "report.html", "HTML (*.html)")
        refused = output_refusal(path, what="report") if path else None
        if refused:
            self.show_message(refused, error=True)
        elif path:
            self.report_requested.emit(path)

    # ------------------------------------------------------------ run state

    def set_busy(self, busy: bool, stoppable: bool = False) -> None:
        """Run and report while the window is idle; Stop while this view's run goes on."""
        self.run_button.setEnabled(not busy)
        self.stop_button.setEnabled(stoppable)
        self.report_button.setEnabled(not busy)

    def set_thresholds(self, thresholds: Thresholds, stop_on: list[str]) -> None:
        """Draw each figure's threshold (dashed red; only for the figures the run stops on).

        An empty chart has no scale for the line to sit on (it crossed the note at a meaningless
        height): there the note says the threshold, and the line appears with the first point.
        """
        for key, line in self.threshold_lines.items():
            name = THRESHOLD_OF.get(key)
            shown = name is not None and name in stop_on
            self.threshold_shown[key] = shown
            note = EMPTY_NOTES.get(key, EMPTY_NOTE)
            if shown:
                line.setPos(thresholds.value(name))
                word = "above" if FIGURES[name][1] == "max" else "below"
                note += f"\n(the run stops {word} {thresholds.value(name):g})"
            self.empty_notes[key].item.setText(note)
        self.refresh.mark()

    def start(self, path: str) -> None:
        self.steps.clear()
        self.final = None
        self.total_steps = 0
        self.refresh.mark()
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        self.show_message(f"Running {html.escape(path)}…")

    def set_total(self, steps: int) -> None:
        self.total_steps = max(1, int(steps))
        self._step_seen, self._within = 0, 0.0
        self._show_overall(0.0, "starting")

    def show_progress(self, p: Any) -> None:
        """One engine event inside the current step, shown as a share of the whole run."""
        from ui.edit_panel import progress_text, within_edit

        self._within = within_edit(p, self._within)
        self._show_overall(self._within, progress_text(p))

    _within = 0.0  # how far the current step has come (0..1)

    def _show_overall(self, within: float, text: str) -> None:
        n, done = max(1, self.total_steps), len(self.steps)
        if done != self._step_seen:  # a new step: its phases start again
            self._step_seen, within, self._within = done, 0.0, 0.0
        self.progress.setRange(0, n * 100)
        self.progress.setValue(int(min(n, done + within) * 100))
        self.progress.setFormat(f"step {min(done + 1, n)} of {n}: {text}")

    def set_idle_text(self, text: str) -> None:
        """An idle bar: empty, not moving, saying how the last run ended."""
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(text)

    def add_step(self, record: dict[str, Any]) -> None:
        """Buffer one step record (drawn on the next timer tick)."""
        self.steps.append(record)
        self.refresh.mark()
        crossed = ", ".join(c["reason"] for c in record.get("crossed", []))
        self.show_message(f"Step {record['step']}: {record['edits']} edit(s) applied"
                          + (f"; crossed: {html.escape(crossed)}" if crossed else ""))

    def finish(self, final: dict[str, Any]) -> None:
        self.final = final
        self.refresh.mark()  # the final curves soon, or when the tab is shown
        self.set_idle_text("cancelled" if final.get("cancelled") else "stopped" if final.get("stopped") else "done")
        if final.get("cancelled"):
            self.show_message("Cancelled: the edits already applied stay on record.")
        elif final.get("stopped"):
            self.show_message(f"<b>Stopped at step {final.get('stopped_at_step')}</b>: "
                              f"{html.escape(final['reason'])}. The step was rolled back "
                              f"(revert entries {', '.join(map(str, final.get('reverts', [])))}).", error=True)
        else:
            self.show_message(f"Done: {final['edits_applied']} edit(s) applied, no threshold crossed.")

    def show_message(self, text: str, *, error: bool = False) -> None:
        self.status.setText(f"<span style='color:{RED}'>{text}</span>" if error else text)

    # ------------------------------------------------------------ drawing

    @property
    def redraws(self) -> int:
        return self.refresh.redraws

    def flush(self) -> None:
        """Redraw now, seen or not (the end of a run, a screenshot)."""
        self.refresh.stale = True
        self.refresh.flush()

    def series(self, key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for s in self.steps:
            v = s.get(key)
            if s.get("changed", True) and isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(s["edits"])
                ys.append(float(v))
        return xs, ys

    def _redraw(self) -> Iterator[None]:
        """One plot a piece (``ui.refresh``): each plot's axes are laid out and painted in an
        event-loop turn of their own; a plot whose points did not change is not touched."""
        for key, curve in self.curves.items():
            xs, ys = self.series(key)
            shown = self.threshold_shown.get(key, False) and bool(xs)
            if self._drawn.get(key) == (xs, ys, shown):
                continue
            self._drawn[key] = (xs, ys, shown)
            self.empty_notes[key].set_empty(not xs)
            self.threshold_lines[key].setVisible(shown)
            curve.setData(xs, ys)
            yield


def _methods() -> list[str]:
    from auditor.engine.registry import METHOD_NAMES

    return list(METHOD_NAMES)
