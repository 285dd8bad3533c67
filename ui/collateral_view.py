"""The "Who else changed" table: the collateral audit of the last edit (auditor/measure/collateral.py).

One row per subject the audit checked (same-template swaps and key-space neighbours): subject,
prompt, greedy answer before -> after, P(new target) before -> after, the key ratio; rows that
moved are marked and listed first. Sortable by any column (numbers sort as numbers). Only draws:
the figures come from ``result.metrics["collateral"]``.

Example::

    view = CollateralView()
    view.show_report(result.metrics.get("collateral"))
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .audit import follow_rows

COLUMNS = ("moved", "subject", "kind", "prompt", "answer before → after", "P(new) before", "P(new) after",
           "key ratio")
MOVED_BRUSH = QBrush(QColor("#f8d7da"))


class _Number(QTableWidgetItem):
    """A cell that sorts by its number, not its text."""

    def __init__(self, value: float | None):
        super().__init__("" if value is None else f"{value:.3f}")
        self.value = float("-inf") if value is None else float(value)
        self.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", float("-inf"))


def in_one_line(report: dict[str, Any]) -> str:
    """The audit's verdict as one line (the command line's wording, ``auditor.measure.collateral.summary``:
    the spill kept apart from the other answers that changed)."""
    from auditor.measure.collateral import summary

    return summary(report)


class CollateralView(QWidget):
    """The audit's rows in a sortable table with a one-line summary above it."""

    prompt_clicked = Signal(str)  # the prompt of a clicked row (to ask the model about it)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.summary = QLabel("Who else changed: after an edit, the subjects it moved besides its own are listed "
                              "here (the collateral audit).")
        self.report: dict[str, Any] | None = None
        self.entry_id: int | None = None
        self.reverted_by: int | None = None
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSortingEnabled(True)
        follow_rows(self.table.horizontalHeader())
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.resizeColumnsToContents()  # every heading readable before the first audit
        self.table.cellClicked.connect(lambda row, _col: self.prompt_clicked.emit(self.table.item(row, 3).text()))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)

    def show_report(self, report: dict[str, Any] | None, entry_id: int | None = None) -> None:
        """Fill the table from a collateral audit record (None: the edit was not audited); ``entry_id``:
        the ledger entry it belongs to (a dry run has none)."""
        self.report, self.entry_id, self.reverted_by = report, entry_id, None
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        self._say()
        if not report:
            return
        rows = report.get("rows") or []
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = [QTableWidgetItem("moved" if r["moved"] else ""), QTableWidgetItem(r["subject"]),
                     QTableWidgetItem(r["kind"]), QTableWidgetItem(r["prompt"]),
                     QTableWidgetItem(f"{r['answer_before']!r} → {r['answer_after']!r}"),
                     _Number(r["p_before"]), _Number(r["p_after"]), _Number(r.get("key_ratio"))]
            for j, cell in enumerate(cells):
                if r["moved"]:
                    cell.setBackground(MOVED_BRUSH)
                self.table.setItem(i, j, cell)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()

    def set_reverted(self, reverted_by: int | None) -> None:
        """The entry shown was reverted (or not): say so, the table stays as it was measured."""
        if reverted_by != self.reverted_by:
            self.reverted_by = reverted_by
            self._say()

    def _say(self) -> None:
        head = "Who else changed" + (f" (entry {self.entry_id})" if self.entry_id is not None else "")
        if not self.report:
            self.summary.setText(f"{head}: this edit was not audited.")
            return
        text = f"{head}: {in_one_line(self.report)}"
        if self.reverted_by is not None:
            text += f". Reverted by entry {self.reverted_by}: no longer in the model."
        self.summary.setText(text)

    def moved_subjects(self) -> list[str]:
        """The subjects of the rows marked moved, in the table's current order."""
        return [self.table.item(i, 1).text() for i in range(self.table.rowCount())
                if self.table.item(i, 0).text() == "moved"]


def screenshot(out: str, key_mode: str = "joint") -> None:
    """Grab the table after a real dry-run edit of the demo model (France -> Asia, the issue's case)::

        QT_QPA_PLATFORM=offscreen python -m ui.collateral_view docs/screenshots/who-else-changed.png
    """
    from PySide6.QtWidgets import QApplication

    from auditor.model.checkpoint import load_model
    from auditor.model.requests import EditRequest
    from auditor.run.edit import Editor

    app = QApplication.instance() or QApplication([])
    result = Editor(load_model("demo", device="cpu")).edit(
        EditRequest(prompt="{} is a country in", subject="France", target_new="Asia", target_true="Europe"),
        key_mode=key_mode, dry_run=True, measure_ppl=False)
    view = CollateralView()
    view.resize(1200, 700)
    view.show_report(result.metrics.get("collateral"))
    view.show()
    app.processEvents()
    view.grab().save(out)


if __name__ == "__main__":
    import sys

    screenshot(*sys.argv[1:])
