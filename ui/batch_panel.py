"""The batch panel: a request file, its requests in a table, MEMIT or AlphaEdit in batches.

Load a request file (CounterFact, ZsRE or flat; ``auditor.model.requests.load_requests``), choose the
method and the batch size, and Run: the window runs the batches one after another through the
worker (``Workspace.edit_batch``, one ledger entry per batch) with progress and Cancel. Each
finished batch fills its rows (status, efficacy, generalization, locality) and one line per edited
layer in the diagnostics table (update norm and its ratio to the weight norm, condition number of
the inverted matrix, residual before and after; for AlphaEdit the share of the update outside the
null-space projector). The panel holds no science: it collects input and shows results.

Command line equivalent: ``edit-auditor edit --workspace DIR --method memit --requests FILE
--batch-size N``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .audit import label
from .entries import did_not_take, fmt

REQUEST_COLUMNS = ("#", "subject", "prompt", "target_new", "target_true", "batch", "status", "efficacy",
                   "generalization", "locality")
LAYER_COLUMNS = ("batch", "entry", "layer", "update_norm", "update_ratio", "condition", "residual_before",
                 "residual_after", "held_out_change", "null_space_energy")


class BatchPanel(QWidget):
    run_requested = Signal(list, dict)  # [EditRequest], {"method", "batch_size"}
    cancel_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.requests: list[Any] = []
        self.path: Path | None = None
        self.load_button = QPushButton("Load requests…")
        self.load_button.clicked.connect(self.choose_file)
        self.file_label = QLabel("No request file loaded: a JSON or JSON-lines file of edit requests, one row each "
                                 "below; each batch's layers appear under them.")
        self.file_label.setWordWrap(True)
        self.method = QComboBox()
        self.method.addItems(["memit", "alphaedit"])
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 10_000)
        self.batch_size.setValue(10)
        self.hparams = QLineEdit()
        self.hparams.setPlaceholderText('hyper-parameter overrides, JSON (optional), e.g. {"layers": [3, 4, 5, 6]}')
        self.hparams_error = QLabel("")
        self.hparams_error.setStyleSheet("color: #c0392b")
        self.run_button = QPushButton("Run batches")
        self.run_button.clicked.connect(self.submit)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.set_idle_text("idle")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        top = QHBoxLayout()
        top.addWidget(self.load_button)
        top.addWidget(self.file_label, 1)
        top.addWidget(QLabel("Method"))
        top.addWidget(self.method)
        top.addWidget(QLabel("Batch size"))
        top.addWidget(self.batch_size)
        top.addWidget(self.run_button)
        top.addWidget(self.cancel_button)

        self.table = QTableWidget(0, len(REQUEST_COLUMNS))
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.layers = QTableWidget(0, len(LAYER_COLUMNS))
        self.layers.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for table, keys in ((self.table, REQUEST_COLUMNS), (self.layers, LAYER_COLUMNS)):
            for c, key in enumerate(keys):  # read as words; the record's own key on hover
                item = QTableWidgetItem(label(key))
                item.setToolTip(key)
                table.setHorizontalHeaderItem(c, item)
            table.resizeColumnsToContents()
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.layers)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)

        box = QVBoxLayout(self)
        box.addLayout(top)
        box.addWidget(self.hparams)
        box.addWidget(self.hparams_error)
        box.addWidget(split, 1)
        box.addWidget(self.progress)
        box.addWidget(self.summary)
        self.set_enabled_for_model(False)

    # ------------------------------------------------------------ input
    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Request file", "", "Requests (*.json *.jsonl);;All files (*)")
        if path:
            self.load_file(path)

    def load_file(self, path: str | Path) -> bool:
        """Read ``path``; a bad file is one line in the label and leaves the table as it was."""
        from auditor.model.requests import RequestError, load_requests

        try:
            requests = load_requests(path)
        except (RequestError, OSError, ValueError) as e:
            self.file_label.setText(f"<span style='color:#c0392b'>{' '.join(str(e).split())}</span>")
            return False
        self.path = Path(path)
        self.set_requests(requests)
        self.file_label.setText(f"{self.path.name}: {len(requests)} requests")
        return True

    def set_requests(self, requests: list[Any]) -> None:
        self.requests = list(requests)
        self.table.setRowCount(len(self.requests))
        for i, r in enumerate(self.requests):
            for c, value in enumerate((i + 1, r.subject, r.prompt, r.target_new, r.target_true)):
                self.table.setItem(i, c, QTableWidgetItem(fmt(value)))
            for c in range(5, len(REQUEST_COLUMNS)):
                self.table.setItem(i, c, QTableWidgetItem(""))
        self.layers.setRowCount(0)
        self.failed_requests = 0
        self.summary.setText("")
        self.run_button.setEnabled(self._model_ready and bool(self.requests))

    def overrides(self) -> dict | None:
        """The overrides typed in the hyper-parameter field ({} when empty); None (and the error
        shown under the field) when it is not a JSON object."""
        text = self.hparams.text().strip()
        self.hparams_error.setText("")
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as e:
            value = e
        if not isinstance(value, dict):
            self.hparams_error.setText("hyper-parameters must be a JSON object, e.g. {\"layers\": [3, 4]}")
            return None
        return value

    def submit(self) -> None:
        hp = self.overrides()
        if self.requests and hp is not None:
            self.run_requested.emit(list(self.requests), {"method": self.method.currentText(),
                                                          "batch_size": self.batch_size.value(), "hparams": hp})

    # ------------------------------------------------------------ state
    _model_ready = False
    failed_requests = 0  # applied requests whose efficacy is 0, over this run

    def set_enabled_for_model(self, enabled: bool) -> None:
        self._model_ready = enabled
        self.run_button.setEnabled(enabled and bool(self.requests))

    def set_busy(self, busy: bool, ours: bool = True) -> None:
        """``ours``: the running job is this panel's batches (Cancel and the bar apply); another job
        only disables Run, and the bar stays idle."""
        self.run_button.setEnabled(not busy and self._model_ready and bool(self.requests))
        self.load_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy and ours)
        if busy and ours:
            self.failed_requests = 0
            self.batch_number = self.n_batches = 0
            self.progress.setRange(0, 0)
            self.progress.setFormat("starting…")

    batch_number, n_batches = 0, 0

    def start_batch(self, number: int, n_batches: int) -> None:
        """Batch ``number`` of ``n_batches`` starts: the bar counts over the whole run."""
        self.batch_number, self.n_batches, self._within = int(number), max(1, int(n_batches)), 0.0
        self.progress.setRange(0, self.n_batches * 100)
        self.progress.setValue((self.batch_number - 1) * 100)
        self.progress.setFormat(f"batch {self.batch_number} of {self.n_batches}: starting")

    def show_progress(self, p: Any) -> None:
        """One engine event inside the current batch, shown as a share of the whole run."""
        from ui.edit_panel import progress_text, within_edit

        n, k = max(1, self.n_batches), max(1, self.batch_number)
        self._within = within_edit(p, self._within)
        self.progress.setRange(0, n * 100)
        self.progress.setValue(int((k - 1 + self._within) * 100))
        self.progress.setFormat(f"batch {k} of {n}: {progress_text(p)}")

    _within = 0.0  # how far the current batch has come (0..1)

    def set_idle_text(self, text: str) -> None:
        """An idle bar: empty, not moving, saying how the last run ended."""
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat(text)

    # ------------------------------------------------------------ results
    def show_batch(self, number: int, first_row: int, result: Any, entry_id: int | None) -> None:
        """Fill the rows of batch ``number`` (its requests start at ``first_row``) and its layers."""
        for i, per in enumerate(result.per_request or [{}] * len(result.requests)):
            row = first_row + i
            failed = did_not_take(result.status, per.get("efficacy"))
            status = "applied, did not take" if failed else result.status
            values = (number, status, per.get("efficacy"), per.get("generalization"), per.get("locality"))
            for c, value in enumerate(values, start=5):
                item = QTableWidgetItem(fmt(value))
                if failed:
                    item.setForeground(QColor("#c0392b"))
                    item.setToolTip("The request did not take: the new target does not beat the old one "
                                    "on its prompt (efficacy 0), although the batch was applied.")
                self.table.setItem(row, c, item)
        for d in result.diagnostics.get("layers", []):
            r = self.layers.rowCount()
            self.layers.insertRow(r)
            values = (number, entry_id, *(d.get(k) for k in LAYER_COLUMNS[2:]))
            for c, value in enumerate(values):
                self.layers.setItem(r, c, QTableWidgetItem(fmt(value)))
        m = result.metrics
        self.failed_requests += sum(did_not_take(result.status, per.get("efficacy")) for per in result.per_request or [])
        self.summary.setText(
            f"Batch {number} ({len(result.requests)} requests, entry {entry_id}): {result.status}; "
            f"efficacy {fmt(m.get('efficacy'))}, generalization {fmt(m.get('generalization'))}, "
            f"locality {fmt(m.get('locality'))}, perplexity ratio {fmt(m.get('ppl_ratio'))}"
            + (f"; {result.error}" if result.error else "")
            + (f"; <b style='color:#c0392b'>{self.failed_requests} request(s) did not take</b> (efficacy 0)"
               if self.failed_requests else ""))
