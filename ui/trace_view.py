"""The "Trace" view: causal-trace heatmaps of a prompt before editing it (Meng et al. 2022).

Three heatmaps, tokens down and layers across (residual stream, MLP output, attention output):
the colour is P(answer) after restoring that state in the corrupted run, from the corrupted
probability (white) to the clean one. A dashed line marks the layer the edit will use; clicking a
cell of the MLP map emits ``layer_chosen(layer)`` (the window sets the edit panel's layer). The
"Suggest layer" button asks for the layer suggested by tracing the known facts.

The view holds no science: the window runs ``auditor.measure.trace`` in its worker thread and hands the
results to :meth:`TraceView.show_traces`; "Save PNG" draws them with ``auditor.measure.trace_plot``.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
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

from .charts import EmptyNote
from .dialogs import output_refusal

KINDS = ("hidden", "mlp", "attn")  # the order of the maps (auditor.measure.trace.KINDS)
TITLES = {"hidden": "Residual stream", "mlp": "MLP output", "attn": "Attention output"}
COLOURS = {"hidden": "#5b2a86", "mlp": "#1e7b3a", "attn": "#b03a2e"}  # as the paper's figures


LEGEND = ("Colour: P(answer) after restoring that state in the corrupted run, from the corrupted probability "
          "(white) to the clean one (the bar beside each map). <b>*</b> marks the subject's tokens (the ones "
          "corrupted with noise); the <b>dashed line</b> is the edit panel's layer. Hover a cell for its value.")
EMPTY = "P(answer) by layer and token\nappears here after Trace"


class HeatmapImage(pg.ImageItem):
    """An image whose pixels are (layer, token) cells; a left click emits ``cell_clicked(token, layer)``,
    hovering a cell ``cell_hovered(token, layer)`` (-1, -1 when the pointer leaves)."""

    cell_clicked = Signal(int, int)
    cell_hovered = Signal(int, int)

    def hoverEvent(self, ev) -> None:  # noqa: N802 - pyqtgraph API
        if self.image is None or ev.isExit():
            self.cell_hovered.emit(-1, -1)
            return
        layer, token = int(ev.pos().x()), int(ev.pos().y())
        inside = 0 <= layer < self.image.shape[0] and 0 <= token < self.image.shape[1]
        self.cell_hovered.emit(token if inside else -1, layer if inside else -1)

    def mouseClickEvent(self, ev) -> None:  # noqa: N802 - pyqtgraph API
        if ev.button() != Qt.MouseButton.LeftButton or self.image is None:
            return
        layer, token = int(ev.pos().x()), int(ev.pos().y())
        if 0 <= layer < self.image.shape[0] and 0 <= token < self.image.shape[1]:
            ev.accept()
            self.cell_clicked.emit(token, layer)


class TraceView(QWidget):
    trace_requested = Signal(str, str, str, int, str)  # prompt, subject, answer ("" = top), samples, precision
    suggest_requested = Signal()
    cancel_requested = Signal()
    layer_chosen = Signal(int)  # a cell of the MLP map was clicked

    def __init__(self, parent=None):
        super().__init__(parent)
        self.traces: dict[str, Any] = {}
        self.layer: int | None = None
        self.edits_in_effect = 0  # of the current model (the window's model_changed)
        self.traced_with: int | None = None  # edits in effect when the shown traces ran
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("The Eiffel Tower is located in the city of   (or with {} for the subject)")
        self.subject = QLineEdit()
        self.subject.setPlaceholderText("The Eiffel Tower")
        self.answer = QLineEdit()
        self.answer.setPlaceholderText("empty: the model's own top prediction")
        self.samples = QSpinBox()
        self.samples.setRange(1, 100)
        self.samples.setValue(5)  # auditor.measure.trace.DEFAULT_SAMPLES
        self.samples.setToolTip("noise samples per probability (the paper: 10; more is slower)")
        form = QFormLayout()
        form.addRow("Prompt", self.prompt)
        form.addRow("Subject", self.subject)
        form.addRow("Answer", self.answer)
        form.addRow("Noise samples", self.samples)
        self.bf16 = QCheckBox("bfloat16 products (faster, probabilities within ~0.01)")
        self.bf16.setToolTip("run the restorations' matrix products of a float32 model in bfloat16: about 1.7x "
                             "faster on CPUs with bf16 instructions; the residual stream stays float32")
        form.addRow("", self.bf16)

        self.trace_button = QPushButton("Trace")
        self.trace_button.clicked.connect(self._request)
        self.suggest_button = QPushButton("Suggest layer")
        self.suggest_button.setToolTip("trace the known facts and suggest the layer to edit (cached per model)")
        self.suggest_button.clicked.connect(self.suggest_requested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.save_button = QPushButton("Save PNG…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._ask_png)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        buttons = QHBoxLayout()
        for b in (self.trace_button, self.suggest_button, self.cancel_button, self.save_button):
            buttons.addWidget(b)
        buttons.addWidget(self.progress, 1)

        self.summary = QLabel("Trace a prompt to see where the fact lives: restoring a state that carries "
                              "it brings the answer's probability back.")
        self.summary.setWordWrap(True)
        self.suggestion_label = QLabel("")
        self.suggestion_label.setWordWrap(True)
        self.state_label = QLabel("")  # which model a trace runs on: the base or the edited one
        self.state_label.setWordWrap(True)
        self.legend = QLabel(LEGEND)
        self.legend.setWordWrap(True)
        self.legend.setStyleSheet("color: #555")
        self.hover_label = QLabel("")
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setMinimumHeight(260)
        self.images: dict[str, HeatmapImage] = {}
        self.markers: dict[str, pg.InfiniteLine] = {}
        self.bars: dict[str, pg.ColorBarItem] = {}
        self.empty_notes: dict[str, EmptyNote] = {}
        for col, kind in enumerate(KINDS):
            plot = self.plots.addPlot(row=0, col=2 * col)  # its colour bar goes in the next column
            plot.setTitle(TITLES[kind], size="10pt")
            plot.setLabel("bottom", "layer")
            plot.invertY(True)
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            image = HeatmapImage()
            cmap = pg.ColorMap([0.0, 1.0], [QColor("#ffffff"), QColor(COLOURS[kind])])
            image.setLookupTable(cmap.getLookupTable(nPts=256))
            plot.addItem(image)
            bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=cmap, interactive=False, width=12,
                                  label="P(answer)")
            bar.setVisible(False)
            self.plots.addItem(bar, row=0, col=2 * col + 1)
            self.bars[kind] = bar
            self.empty_notes[kind] = EmptyNote(plot, EMPTY)
            image.cell_hovered.connect(lambda t, layer, kind=kind: self._hovered(kind, t, layer))
            marker = pg.InfiniteLine(angle=90, movable=False,
                                     pen=pg.mkPen("#222222", width=1.5, style=Qt.PenStyle.DashLine))
            marker.setVisible(False)
            plot.addItem(marker)
            self.images[kind], self.markers[kind] = image, marker
        self.images["mlp"].cell_clicked.connect(lambda _t, layer: self.layer_chosen.emit(layer))

        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.state_label)
        box.addWidget(self.summary)
        box.addWidget(self.suggestion_label)
        box.addWidget(self.plots, 1)
        box.addWidget(self.hover_label)
        box.addWidget(self.legend)
        self.show_state(0)

    # -------------------------------------------------------------- input

    def fill(self, prompt: str, subject: str) -> None:
        """Prefill from the edit panel (a "{}" prompt stays as it is)."""
        if prompt and not self.prompt.text():
            self.prompt.setText(prompt)
        if subject and not self.subject.text():
            self.subject.setText(subject)

    def _request(self) -> None:
        prompt, subject = self.prompt.text().strip(), self.subject.text().strip()
        if not prompt or not subject:
            self.summary.setText("<span style='color:#c0392b'>Enter a prompt and its subject.</span>")
            return
        self.trace_requested.emit(prompt, subject, self.answer.text().strip(), self.samples.value(),
                                  "bfloat16" if self.bf16.isChecked() else "float32")

    # -------------------------------------------------------------- state

    def set_enabled_for_model(self, enabled: bool) -> None:
        self.trace_button.setEnabled(enabled)
        self.suggest_button.setEnabled(enabled)

    def set_busy(self, busy: bool, ours: bool) -> None:
        """``ours``: the running job is a trace (cancel applies); otherwise only disable."""
        self.trace_button.setEnabled(not busy)
        self.suggest_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and ours)
        if busy and ours:
            self.progress.setRange(0, 0)
            self.progress.setFormat("tracing…")
        elif not busy:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.progress.setFormat("")

    def show_progress(self, p: Any) -> None:
        if getattr(p, "total", None):
            self.progress.setRange(0, int(p.total))
            self.progress.setValue(int(p.step or 0))
            self.progress.setFormat(f"{p.message or 'tracing'}: %v/%m")

    def show_message(self, text: str) -> None:
        self.summary.setText(text)

    def show_state(self, edits_in_effect: int) -> None:
        """Say which model a trace runs on now (and which one the shown traces ran on)."""
        self.edits_in_effect = int(edits_in_effect)
        now = model_words(self.edits_in_effect)
        then = "" if self.traced_with is None or self.traced_with == self.edits_in_effect else \
            f" The maps below ran on {model_words(self.traced_with)}: trace again to see the model as it is now."
        self.state_label.setText(f"A trace runs on <b>{now}</b>.{then}")

    def _hovered(self, kind: str, token: int, layer: int) -> None:
        tr = self.traces.get(kind)
        if tr is None or token < 0:
            self.hover_label.setText("")
            return
        value = tr.effects[token, layer]
        shown = "n/a" if not np.isfinite(value) else f"{value:.3f}"
        self.hover_label.setText(f"{TITLES[kind]}, token {token} {tr.tokens[token]!r}, layer {layer}: "
                                 f"P(answer) = {shown} (clean {tr.clean_prob:.3f}, corrupted {tr.corrupted_prob:.3f})")

    # -------------------------------------------------------------- results

    def show_traces(self, traces: dict[str, Any]) -> None:
        self.traces = dict(traces)
        first = next(iter(self.traces.values()))
        labels = [(i + 0.5, repr(t)[1:-1] + ("*" if first.subject_span[0] <= i < first.subject_span[1] else ""))
                  for i, t in enumerate(first.tokens)]
        for kind, image in self.images.items():
            tr = self.traces.get(kind)
            if tr is None:
                image.clear()
                continue
            data = np.nan_to_num(tr.effects, nan=tr.corrupted_prob).T  # (layers, tokens): x = layer
            levels = (tr.corrupted_prob, max(tr.clean_prob, float(data.max())))
            image.setImage(data, levels=levels)
            bar = self.bars[kind]
            bar.setLevels(levels)
            bar.setVisible(True)
            self.empty_notes[kind].set_empty(False)
            plot = self.plots.getItem(0, 2 * KINDS.index(kind))
            plot.getAxis("left").setTicks([labels])
            plot.setRange(xRange=(0, data.shape[0]), yRange=(0, data.shape[1]), padding=0)
        self.traced_with = self.edits_in_effect
        self.show_state(self.edits_in_effect)
        self.summary.setText(
            f"Traced on {model_words(self.traced_with)}. "
            f"<b>{first.prompt}</b> → <b>{first.answer.strip()}</b>: P = {first.clean_prob:.3f} clean, "
            f"{first.corrupted_prob:.3f} with the subject corrupted ({first.samples} noise samples, "
            f"{first.precision} products, "
            f"noise {first.noise:.3f}; MLP and attention restored over {self.traces.get('mlp', first).window} "
            f"layers). Click a cell of the MLP map to edit that layer.")
        self.save_button.setEnabled(True)
        self.set_layer(self.layer)

    def show_suggestion(self, s: Any) -> None:
        self.suggestion_label.setText(f"Suggested: <b>{s.summary()}</b>" + (" (cached)" if s.cached else ""))

    def set_layer(self, layer: int | None) -> None:
        """Mark ``layer`` (the edit panel's) on every map."""
        self.layer = layer
        for marker in self.markers.values():
            marker.setVisible(layer is not None and bool(self.traces))
            if layer is not None:
                marker.setValue(layer + 0.5)

    def save_png(self, path: str) -> str:
        from auditor.measure.trace_plot import write_png

        traces = [self.traces[k] for k in KINDS if k in self.traces]
        return str(write_png(traces, path, layer=self.layer))

    def _ask_png(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the heatmaps", "trace.png", "PNG images (*.png)")
        refused = output_refusal(path, what="heatmap PNG") if path else None
        if refused:
            self.summary.setText(self.summary.text() + f"<br><span style='color:#c0392b'>{html.escape(refused)}</span>")
        elif path:
            self.save_png(path)
            self.summary.setText(self.summary.text() + f"<br>Saved to {html.escape(path)}")


def model_words(edits_in_effect: int) -> str:
    n = int(edits_in_effect)
    return "the base model (no edits in effect)" if n == 0 else \
        f"the edited model ({n} {'edit' if n == 1 else 'edits'} in effect)"


def install(window: Any) -> TraceView:
    """Add the Trace tab to the main window and connect it to the window's runner and edit panel.

    Jobs run in the window's worker thread: ``trace`` (three heatmaps of the typed prompt) and
    ``suggest`` (the layer suggested by the known facts, cached per weights fingerprint).
    """
    view = TraceView()
    window.tabs.addTab(view, "Trace")
    runner, panel = window.runner, window.panel
    view.set_enabled_for_model(False)

    def start_trace(prompt: str, subject: str, answer: str, samples: int, precision: str) -> None:
        ws = window.workspace
        if ws is None or runner.busy:
            return

        def job(report, cancel):
            from auditor.measure.trace import Tracer

            return Tracer(ws.lm, samples=samples, precision=precision).trace(prompt, subject, answer or None,
                                                        progress=report, cancel=cancel)

        runner.start("trace", job, no_grad=True)

    def start_suggest() -> None:
        ws = window.workspace
        if ws is None or runner.busy:
            return

        def job(report, cancel):
            from auditor.measure.layer_suggestion import suggest_layer

            return suggest_layer(ws.lm, fingerprint=ws.editor.fingerprint(), progress=report, cancel=cancel)

        runner.start("suggest", job, no_grad=True)

    def suggest_default_layer() -> None:
        """A family without a hyper-parameter file: the suggestion becomes the form's layer."""
        family = window.workspace.lm.spec.family
        view.show_message(f"No hyper-parameter file for the {family} family: tracing the known facts "
                          "to suggest the layer to edit…")
        QTimer.singleShot(0, start_suggest)  # once the runner has let go of the job that opened the model

    view.suggest_default_layer = suggest_default_layer

    def finished(name: str, value: Any) -> None:
        if name == "open":
            view.set_enabled_for_model(True)
            view.set_layer(panel.layer.value())
        elif name == "trace":
            view.show_traces(value)
            window.statusBar().showMessage("Causal trace done")
        elif name == "suggest":
            view.show_suggestion(value)
            panel.layer.setToolTip(f"Suggested by causal tracing: {value.summary()}")
            if getattr(window, "layer_needs_suggestion", False):  # no family file: the suggestion is the default
                window.layer_needs_suggestion = False
                panel.set_default_layer(value.layer)

    def failed(name: str, message: str) -> None:
        if name in ("trace", "suggest"):
            view.show_message(f"<span style='color:#c0392b'><b>Trace failed:</b> {message}</span>")

    def cancelled(name: str) -> None:
        if name in ("trace", "suggest"):
            view.show_message("Trace cancelled.")

    view.trace_requested.connect(start_trace)
    view.suggest_requested.connect(start_suggest)
    view.cancel_requested.connect(runner.cancel)
    view.layer_chosen.connect(panel.layer.setValue)
    panel.layer.valueChanged.connect(view.set_layer)
    def busy_changed(busy: bool) -> None:
        view.set_busy(busy, runner.name in ("trace", "suggest"))
        if not busy and window.workspace is None:
            view.set_enabled_for_model(False)

    runner.busy_changed.connect(busy_changed)
    runner.progress.connect(lambda p: view.show_progress(p) if runner.name in ("trace", "suggest") else None)
    runner.finished.connect(finished)
    runner.failed.connect(failed)
    runner.cancelled.connect(cancelled)
    window.tabs.currentChanged.connect(
        lambda _i: view.fill(panel.prompt.text(), panel.subject.text()) if window.tabs.currentWidget() is view else None)
    return view
