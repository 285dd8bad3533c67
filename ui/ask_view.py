"""The "Ask the model" box: any prompt, answered by the base model and by the current model side by side.

The box only collects the prompt and the state to compare with (the base, or the model right after
a chosen ledger entry) and shows the answers; the window computes them in its worker with
:func:`auditor.run.ask.ask` (the earlier state is built and undone there, bit for bit). It is asked
again after every change of the model's state (the window's ``model_changed``), so the two answers
are never stale. No science here.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
)

from .entries import revertible
from .refresh import SteadyLabel

PLACEHOLDER = "Ask anything, e.g. The capital city of Canada is"
BASE = "the base model"


class AskView(QGroupBox):
    ask_requested = Signal(str, int)  # prompt, upto (0: the base)

    def __init__(self, parent=None):
        super().__init__("Ask the model (greedy continuation)", parent)
        self.prompt = QLineEdit(placeholderText=PLACEHOLDER)
        self.prompt.returnPressed.connect(self.ask)
        self.ask_button = QPushButton("Ask")
        self.ask_button.clicked.connect(self.ask)
        self.against = QComboBox()
        self.against.setToolTip("What the current model is compared with: the base checkpoint (every edit removed) "
                                "or the model right after a ledger entry")
        self.against.addItem(BASE, 0)
        self.base_title = QLabel(f"<b>{BASE}</b>")
        self.current_title = QLabel("<b>current model</b>")
        self.base_answer = SteadyLabel("—")
        self.current_answer = SteadyLabel("—")
        for label in (self.base_answer, self.current_answer):
            label.setWordWrap(True)
            label.setTextFormat(Qt.TextFormat.RichText)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.verdict = QLabel("")
        # heights that do not change with the answers: a taller or shorter box resized every chart
        # below it, and a resized chart lays out and draws all its axes again (bench/profile_gui_slots.py)
        line = self.fontMetrics().lineSpacing()
        for label in (self.base_answer, self.current_answer):
            label.setMinimumHeight(2 * line)
        self.verdict.setMinimumHeight(line)
        grid = QGridLayout(self)
        grid.addWidget(self.prompt, 0, 0, 1, 3)
        grid.addWidget(QLabel("compare with"), 0, 3)
        grid.addWidget(self.against, 0, 4)
        grid.addWidget(self.ask_button, 0, 5)
        grid.addWidget(self.base_title, 1, 0)
        grid.addWidget(self.base_answer, 1, 1, 1, 2)
        grid.addWidget(self.current_title, 1, 3)
        grid.addWidget(self.current_answer, 1, 4, 1, 2)
        grid.addWidget(self.verdict, 2, 0, 1, 6)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(4, 1)
        self.last = None  # the last auditor.run.ask.Answers shown
        self.setEnabled(False)

    # ------------------------------------------------------------ input
    def text(self) -> str:
        return self.prompt.text().strip()

    def upto(self) -> int:
        return int(self.against.currentData() or 0)

    def ask(self) -> None:
        if self.text():
            self.current_answer.setText("<i>asking…</i>")
            self.ask_requested.emit(self.text(), self.upto())

    def set_entries(self, rows: list[dict]) -> None:
        """The states on offer: the base, then the state after each edit entry still applied or reverted."""
        keep = self.upto()
        self.against.blockSignals(True)
        self.against.clear()
        self.against.addItem(BASE, 0)
        for r in rows:
            if r.get("kind", "edit") == "edit" and r.get("status") == "applied":
                mark = "" if revertible(r) else " (reverted since)"
                self.against.addItem(f"after entry {r['id']}: {r.get('subject') or ''}{mark}"[:60], int(r["id"]))
        index = self.against.findData(keep)
        self.against.setCurrentIndex(max(0, index))
        self.against.blockSignals(False)

    # ------------------------------------------------------------ answers
    def show_answers(self, answers) -> None:
        """Show an :class:`auditor.run.ask.Answers`."""
        self.last = answers
        then = BASE if not answers.upto else f"after entry {answers.upto}"
        self.base_title.setText(f"<b>{then}</b> ({answers.edits_then} in effect)")
        self.current_title.setText(f"<b>current model</b> ({answers.edits_in_effect} in effect)")
        self.base_answer.setText(f"<b>{html.escape(answers.base)}</b>")
        self.current_answer.setText(f"<b>{html.escape(answers.current)}</b>")
        self.verdict.setText("<span style='color:#555'>same answer</span>" if answers.same else
                             "<span style='color:#b9770e'><b>the answers differ</b>: the edits changed this one</span>")
