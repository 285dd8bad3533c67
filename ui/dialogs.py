"""Dialogs of the main window: export and settings."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import settings

def output_refusal(path: str, *, what: str, folder: bool = False, overwrite: bool = True) -> str | None:
    """Why the core's output-path policy refuses ``path`` (one line), or None: every save dialog
    asks before a job starts, so a refused path is said at once, not after the work."""
    from auditor.files import OutputError, check_output

    try:
        check_output(path, what=what, folder=folder, overwrite=overwrite)
    except OutputError as e:
        return str(e)
    return None


SHARD_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
KEEP_DTYPE = "as loaded"


def _path_row(edit: QLineEdit, pick) -> QWidget:
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(edit, 1)
    browse = QPushButton("Browse…")
    browse.clicked.connect(pick)
    box.addWidget(browse)
    return row


class ExportDialog(QDialog):
    """Full model (sharded safetensors with provenance) or patch (deltas and their entries)."""

    export_requested = Signal(str, bool, object, str, bool)  # out, patch, dtype | None, shard size, overwrite

    def __init__(self, parent=None, default_out: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Export")
        self.setMinimumWidth(520)
        self.full = QRadioButton("Full model (Hugging Face folder, sharded safetensors)")
        self.patch = QRadioButton("Patch (the deltas and their ledger entries only)")
        self.full.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.full)
        group.addButton(self.patch)
        self.dtype = QComboBox()
        self.dtype.addItems([KEEP_DTYPE, "float32", "bfloat16", "float16"])
        self.shard = QLineEdit("2GB")
        self.out = QLineEdit(default_out)
        self.overwrite = QCheckBox("Replace the folder if it exists")
        self.error = QLabel()
        self.error.setStyleSheet("color: #c0392b;")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.result = QLabel()
        self.result.setWordWrap(True)
        form = QFormLayout()
        form.addRow(self.full)
        form.addRow(self.patch)
        form.addRow("dtype", self.dtype)
        form.addRow("Shard size", self.shard)
        form.addRow("Output folder", _path_row(self.out, self._pick))
        form.addRow("", self.overwrite)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.export_button.clicked.connect(self._export)
        self.close_button.clicked.connect(self.reject)
        self.patch.toggled.connect(lambda on: (self.dtype.setEnabled(not on), self.shard.setEnabled(not on)))
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.progress)
        layout.addWidget(self.result)
        layout.addWidget(self.buttons)

    def _pick(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into", self.out.text() or str(Path.home()))
        if folder:
            self.out.setText(folder)

    def _export(self) -> None:
        out = self.out.text().strip()
        if not out:
            self.error.setText("Choose an output folder.")
            return
        refused = output_refusal(out, what="export", folder=True, overwrite=self.overwrite.isChecked())
        if refused:
            self.error.setText(refused)
            return
        if self.full.isChecked() and not SHARD_RE.match(self.shard.text()):
            self.error.setText("Shard size: a number with a unit, such as 500MB or 2GB.")
            return
        self.error.clear()
        dtype = None if self.dtype.currentText() == KEEP_DTYPE else self.dtype.currentText()
        self.export_button.setEnabled(False)
        self.progress.setValue(0)
        self.result.clear()
        self.export_requested.emit(out, self.patch.isChecked(), dtype, self.shard.text().strip().replace(" ", ""),
                                   self.overwrite.isChecked())

    def set_progress(self, fraction: float) -> None:
        self.progress.setValue(int(round(100 * max(0.0, min(1.0, fraction)))))

    def finished_ok(self, path: str) -> None:
        self.progress.setValue(100)
        self.result.setText(f"Written: {path}")
        self.result.setStyleSheet("color: #1e7b34;")
        self.export_button.setEnabled(True)

    def finished_error(self, message: str) -> None:
        self.result.setText(message)
        self.result.setStyleSheet("color: #c0392b;")
        self.export_button.setEnabled(True)


class SettingsDialog(QDialog):
    """Device, dtype for new workspaces, the memory budget and offload folder, collapse thresholds,
    the workspaces folder."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from auditor.run.edit import CollapseGuard

        default = CollapseGuard()
        self.setWindowTitle("Settings")
        self.device = QComboBox()
        self.device.setEditable(True)
        self.device.addItems(["auto", "cpu", "cuda", "cuda:0", "cuda:1"])
        self.device.setCurrentText(settings.get(settings.DEVICE))
        self.dtype = QComboBox()
        self.dtype.addItems(["float32", "bfloat16", "float16"])
        self.dtype.setCurrentText(settings.get(settings.DTYPE))
        self.min_den = QDoubleSpinBox()
        self.min_den.setDecimals(4)
        self.min_den.setRange(0.0, 1000.0)
        self.min_den.setSpecialValueText(f"engine default ({default.min_denominator:g})")
        self.min_den.setValue(settings.get(settings.MIN_DENOMINATOR))
        self.max_ppl = QDoubleSpinBox()
        self.max_ppl.setDecimals(3)
        self.max_ppl.setRange(0.0, 1000.0)
        self.max_ppl.setSpecialValueText(f"engine default ({default.max_ppl_ratio:g})")
        self.max_ppl.setValue(settings.get(settings.MAX_PPL_RATIO))
        self.tokens = QSpinBox()
        self.tokens.setRange(1, 64)
        self.tokens.setValue(settings.get(settings.ANSWER_TOKENS))
        self.folder = QLineEdit(str(settings.workspaces_dir()))
        self.max_memory = QLineEdit(str(settings.get(settings.MAX_MEMORY) or ""))
        self.max_memory.setPlaceholderText("none (e.g. 0=20GiB,cpu=8GiB)")
        self.max_memory.setToolTip("The most weights each device may hold (accelerate's max_memory, as "
                                   "--max-memory); what does not fit goes to the offload folder")
        self.offload = QLineEdit(str(settings.get(settings.OFFLOAD_FOLDER) or ""))
        self.offload.setPlaceholderText("none (weights beyond the budget are refused)")
        self.memory_error = QLabel("")
        self.memory_error.setStyleSheet("color: #c0392b;")
        form = QFormLayout(self)
        form.addRow("Device (new loads)", self.device)
        form.addRow("dtype (new workspaces)", self.dtype)
        form.addRow("Memory budget (new loads)", self.max_memory)
        form.addRow("Offload folder", _path_row(self.offload, self._pick_offload))
        form.addRow("", self.memory_error)
        form.addRow("Collapse: minimum |denominator|", self.min_den)
        form.addRow("Collapse: maximum perplexity ratio", self.max_ppl)
        form.addRow("Answer length (tokens)", self.tokens)
        form.addRow("Workspaces folder", _path_row(self.folder, self._pick))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _pick(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Workspaces folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def _pick_offload(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Offload folder", self.offload.text())
        if folder:
            self.offload.setText(folder)

    def accept(self) -> None:
        """Refuse a memory budget that does not parse (the reason under the field)."""
        from auditor.model.memory_plan import parse_max_memory

        text = self.max_memory.text().strip()
        try:
            if text:
                parse_max_memory(text)
        except ValueError as e:
            self.memory_error.setText(f"Memory budget: {e}")
            return
        self.memory_error.setText("")
        super().accept()

    def save(self) -> None:
        settings.put(settings.DEVICE, self.device.currentText().strip() or "auto")
        settings.put(settings.DTYPE, self.dtype.currentText())
        settings.put(settings.MIN_DENOMINATOR, self.min_den.value())
        settings.put(settings.MAX_PPL_RATIO, self.max_ppl.value())
        settings.put(settings.ANSWER_TOKENS, self.tokens.value())
        settings.put(settings.WORKSPACES_DIR, self.folder.text().strip())
        settings.put(settings.MAX_MEMORY, self.max_memory.text().strip())
        settings.put(settings.OFFLOAD_FOLDER, self.offload.text().strip())
