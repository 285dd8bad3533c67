"""The watchlist panel: the workspace's watched answers, added and removed from the window.

A table of the items (id, prompt, answer) and two fields with Add / Remove selected. Every
change goes through :class:`auditor.record.watch.Watchlist` (append-only events in the ledger's
``watchlist`` table); errors are shown under the fields, nothing else changes. The ledger is
read on the GUI thread: the table is small and SQLite reads are fast.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from auditor.record.watch import WatchError, Watchlist


class WatchPanel(QGroupBox):
    changed = Signal()

    def __init__(self, parent=None):
        super().__init__("Watchlist: answers that must not change", parent)
        self.watchlist: Watchlist | None = None
        box = QVBoxLayout(self)
        self.current: dict[str, str] = {}  # prompt -> the current model's greedy answer (the window's worker)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["ID", "Prompt", "Watched answer", "The model now"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.table.resizeColumnsToContents()
        self.table.setColumnWidth(1, 320)  # the prompt: room for a sentence
        self.table.setMaximumHeight(140)
        box.addWidget(self.table)
        row = QHBoxLayout()
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("prompt, e.g. The capital of France is")
        self.answer = QLineEdit()
        self.answer.setPlaceholderText("answer, e.g. Paris")
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self.add)
        self.remove_button = QPushButton("Remove selected")
        self.remove_button.clicked.connect(self.remove_selected)
        row.addWidget(self.prompt, 3)
        row.addWidget(self.answer, 1)
        row.addWidget(self.add_button)
        row.addWidget(self.remove_button)
        box.addLayout(row)
        self.error = QLabel()
        self.error.setStyleSheet("color: #c0392b;")
        box.addWidget(self.error)
        self.setEnabled(False)

    def set_ledger(self, ledger: Any) -> None:
        self.watchlist = Watchlist(ledger) if ledger is not None else None
        self.setEnabled(self.watchlist is not None)
        self.refresh()

    def refresh(self) -> None:
        items = self.watchlist.items() if self.watchlist is not None else []
        self.table.setRowCount(len(items))
        for r, item in enumerate(items):
            now = self.current.get(item.prompt)
            for c, value in enumerate((str(item.id), item.prompt, item.answer, "…" if now is None else now)):
                cell = QTableWidgetItem(value)
                if c == 3 and now is not None:
                    holds = now.strip().startswith(item.answer.strip())
                    cell.setForeground(QColor("#1e7b34" if holds else "#c0392b"))
                    cell.setToolTip("holds" if holds else "the model no longer gives the watched answer")
                self.table.setItem(r, c, cell)

    def prompts(self) -> list[str]:
        return [item.prompt for item in self.watchlist.items()] if self.watchlist is not None else []

    def show_current(self, answers: dict[str, str]) -> None:
        """The current model's answers to the watched prompts (computed in the window's worker)."""
        self.current = dict(answers)
        self.refresh()

    def add(self) -> None:
        if self.watchlist is None:
            return
        try:
            self.watchlist.add(self.prompt.text(), self.answer.text())
        except WatchError as e:
            self.error.setText(str(e))
            return
        self.error.clear()
        self.prompt.clear()
        self.answer.clear()
        self.refresh()
        self.changed.emit()

    def remove_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        if self.watchlist is None or not rows:
            self.error.setText("select an item to remove")
            return
        for r in rows:
            self.watchlist.remove(int(self.table.item(r, 0).text()), note="removed in the window")
        self.error.clear()
        self.refresh()
        self.changed.emit()
