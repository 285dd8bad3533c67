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


class CollateralView(QWidget):
    """The audit's rows in a sortable table with a one-line summary above it."""

    prompt_clicked = Signal(str)  # the prompt of a clicked row (to ask the model about it)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.summary = QLabel("Who else changed: no edit audited yet.")
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

    def show_report(self, report: dict[str, Any] | None) -> None:
        """Fill the table from a collateral audit record (None: the edit was not audited)."""
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if not report:
            self.summary.setText("Who else changed: this edit was not audited.")
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
        spill, cost = report.get("spill_rate"), report.get("preservation_cost")
        moved = report.get("moved") or []
        self.summary.setText(
            f"Who else changed: spill rate {spill:.2f} over {report.get('n_swaps')} same-type swaps, "
            f"preservation cost {cost:.2g}; moved: {', '.join(moved[:8]) or 'none'}"
            f"{' …' if len(moved) > 8 else ''}")

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
