"""The audit trail: ledger entries in a sortable, filterable table, one entry in detail.

The widget shows what the ledger holds and emits what the user asks for
(``revert_requested``, ``verify_requested``, ``export_requested``); the window runs those
through the workspace. Text search goes through the ledger's own full-text search (the
same as ``edit-auditor ledger search``), set by the window as :attr:`AuditTrail.search_fn`.
"""

from __future__ import annotations

from typing import Any, Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProxyStyle,
    QPushButton,
    QSplitter,
    QStyle,
    QStyleFactory,
    QStyleOptionHeader,
    QTableView,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .entries import fmt, number, revertible
from .refresh import Refresh

COLUMNS: list[tuple[str, str]] = [
    ("id", "ID"),
    ("time", "Time (UTC)"),
    ("kind", "Kind"),
    ("status", "Status"),
    ("method", "Method"),
    ("key_mode", "Key mode"),
    ("layer", "Layer"),
    ("subject", "Subject"),
    ("target_new", "New target"),
    ("denominator", "Denominator"),
    ("ppl_ratio", "PPL ratio"),
    ("efficacy", "Efficacy"),
    ("spill_rate", "Spill rate"),  # issue 18: from the entry's recorded collateral audit
    ("preservation_cost", "Preservation cost"),
    ("collapse_risk", "Collapse risk"),
]
AUDIT_KEYS = ("spill_rate", "preservation_cost")  # a dash where the entry was not audited
NUMERIC = ("id", "layer", "denominator", "ppl_ratio", "efficacy", *AUDIT_KEYS)  # right-aligned
ANY = "any"
MAX_COLUMN_WIDTH = 240  # pixels; a cell's full text is in its tooltip
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_COLORS = {"applied": "#1e7b34", "dry-run": "#1f5fae", "rejected": "#b9770e", "failed": "#c0392b",
                 "reverted": "#7f8c8d", "revert": "#7f8c8d"}


LABELS = {key: label for key, label in COLUMNS} | {
    "prev_hash": "Previous hash", "delta_hash": "Delta hash", "reverted_by": "Reverted by", "ppl_before": "PPL before",
    "ppl_after": "PPL after", "target_true": "True target", "fingerprint_before": "Fingerprint before",
    "fingerprint_after": "Fingerprint after", "n_requests": "Requests", "hparams": "Hyper-parameters",
    "watch": "Watchlist check", "per_request": "Per request", "update_norm": "Update norm",
    "weight_norm": "Weight norm", "key_cosine": "Key cosine", "delta_file_sha256": "Delta file SHA-256",
    "held_out_change": "Held-out change", "null_space_energy": "Null-space energy", "#": "#",
}


def label(key: str) -> str:
    """A ledger key as a person reads it (``target_true`` -> "True target"); the key stays in the tooltip."""
    return LABELS.get(key) or (key.replace("_", " ").strip().capitalize() if isinstance(key, str) else str(key))


def _item(key: Any, value: Any) -> QTreeWidgetItem:
    """A detail row: nested objects (and JSON text holding one) become child rows, not raw JSON."""
    import json

    if isinstance(value, str) and value[:1] in "{[":
        try:
            value = json.loads(value)
        except ValueError:
            pass
    nested = isinstance(value, (dict, list)) and bool(value) and not all(isinstance(v, (int, float)) for v in value)
    item = QTreeWidgetItem([label(str(key)), "" if nested else fmt(value)])
    item.setToolTip(0, str(key))
    if nested:
        pairs = value.items() if isinstance(value, dict) else enumerate(value, start=1)
        for k, v in pairs:
            item.addChild(_item(k, v))
    return item


def recheck_item(recheck: Any) -> QTreeWidgetItem | None:
    """A revert's re-check (run/recheck.py): the later entries re-measured, and those whose edit
    no longer holds as recorded (None: the entry is not a revert with a re-check)."""
    if not isinstance(recheck, dict):
        return None
    checked, changed = recheck.get("checked") or [], recheck.get("changed") or []
    item = QTreeWidgetItem(["Re-checked after the revert",
                            f"{len(checked)} later {'entry' if len(checked) == 1 else 'entries'} re-measured, "
                            f"{len(changed)} changed"])
    item.addChild(QTreeWidgetItem(["Re-measured", ", ".join(f"entry {i}" for i in checked) or "none"]))
    for c in changed:
        child = QTreeWidgetItem([f"Changed: entry {c.get('entry')}",
                                 f"{c.get('prompt')} → {c.get('target_new')}: efficacy {fmt(c.get('recorded'))} "
                                 f"recorded, {fmt(c.get('now'))} now"])
        child.setForeground(1, QColor("#c0392b"))
        item.addChild(child)
    return item


def thresholds_item(row: dict[str, Any]) -> QTreeWidgetItem | None:
    """Where the verdict's thresholds came from (a calibration of the model, or the defaults)."""
    source = row.get("thresholds_source")
    if not source:
        return None
    item = QTreeWidgetItem(["Thresholds from", str(source)])
    item.setToolTip(1, str(source))
    return item


FIT_ROWS = 50  # rows measured (beyond those in view) when the audit trail's columns are fitted


class EntryModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list[dict[str, Any]] = []

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802 - Qt API
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section][1]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        key = COLUMNS[index.column()][0]
        value = row.get(key)
        if role == Qt.ItemDataRole.ToolTipRole and key in ("subject", "target_new"):
            return self.data(index, Qt.ItemDataRole.DisplayRole)  # the whole text of a capped column
        if role == Qt.ItemDataRole.DisplayRole:
            if key == "status" and row.get("reverted_by"):
                return f"{value} (reverted by {row['reverted_by']})"
            if key == "collapse_risk":
                return "⚠ flagged" if value else ""
            if key == "time" and isinstance(value, str):
                return value.replace("T", " ")[:19]
            return fmt(value) if value is not None or key in AUDIT_KEYS else ""
        if role == Qt.ItemDataRole.ToolTipRole and key in AUDIT_KEYS:
            return ("share of same-type swaps the edit moved to its new target" if key == "spill_rate" else
                    "tr(ΔCΔᵀ) / tr(WCWᵀ): relative change of the layer's output on ordinary text (worst layer)") \
                + ("" if value is not None else "; not audited")
        if role == SORT_ROLE:
            num = number(value) if not isinstance(value, str) else None
            return num if num is not None else ("" if value is None else str(value).lower())
        if role == Qt.ItemDataRole.ForegroundRole:
            if key == "status" and str(value) in STATUS_COLORS:
                return QBrush(QColor(STATUS_COLORS[str(value)]))
            if key == "collapse_risk" and value:
                return QBrush(QColor("#c0392b"))
        if role == Qt.ItemDataRole.FontRole and key in ("status", "collapse_risk") and value:
            f = QFont()
            f.setBold(True)
            return f
        if role == Qt.ItemDataRole.TextAlignmentRole and key in NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class EntryFilter(QSortFilterProxyModel):
    """Status, method, flag and text filters over :class:`EntryModel`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.status = ANY
        self.method = ANY
        self.flag = ANY  # ANY | "flagged" | "not flagged"
        self.text_ids: set[int] | None = None  # ids matched by the text search; None = no search
        self.setSortRole(SORT_ROLE)

    def filterAcceptsRow(self, source_row, source_parent) -> bool:  # noqa: N802 - Qt API
        row = self.sourceModel().rows[source_row]
        if self.status != ANY and str(row.get("status")) != self.status:
            return False
        if self.method != ANY and str(row.get("method")) != self.method:
            return False
        if self.flag != ANY and bool(row.get("collapse_risk")) != (self.flag == "flagged"):
            return False
        return self.text_ids is None or row.get("id") in self.text_ids

    def lessThan(self, left, right) -> bool:  # noqa: N802 - Qt API
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, float) and isinstance(b, float):
            return a < b
        if isinstance(a, float) != isinstance(b, float):
            return isinstance(a, float)  # numbers before blanks
        return str(a) < str(b)


class SortArrows(QProxyStyle):
    """Header sort arrows that follow the rows: ▲ over ascending rows, ▼ over descending ones.

    ``QHeaderView`` hands the style ``SortUp`` for a descending sort. Qt's common style draws that
    as ▼, but Fusion (the app's style) draws it as ▲, so a table sorted newest first showed an up
    arrow. Over Fusion this flips the indicator for the arrow only; every other element, and
    every other style, is drawn unchanged. Set on a header with :func:`follow_rows`.
    """

    SWAP = {QStyleOptionHeader.SortIndicator.SortUp: QStyleOptionHeader.SortIndicator.SortDown,
            QStyleOptionHeader.SortIndicator.SortDown: QStyleOptionHeader.SortIndicator.SortUp}

    def drawPrimitive(self, element, option, painter, widget=None):  # noqa: N802 - Qt API
        if (element == QStyle.PrimitiveElement.PE_IndicatorHeaderArrow and isinstance(option, QStyleOptionHeader)
                and self.baseStyle().name().lower() == "fusion"):
            option = QStyleOptionHeader(option)
            option.sortIndicator = self.SWAP.get(option.sortIndicator, option.sortIndicator)
        super().drawPrimitive(element, option, painter, widget)


def follow_rows(header: QHeaderView) -> None:
    """Give a sortable table's header :class:`SortArrows` over the application's current style."""
    base = QStyleFactory.create(QApplication.style().name())
    style = SortArrows(base) if base is not None else SortArrows()
    style.setParent(header)  # the header keeps it alive; QWidget.setStyle does not take ownership
    header.setStyle(style)


class AuditTrail(QWidget):
    entry_selected = Signal(int)
    revert_requested = Signal(int)
    verify_requested = Signal()
    export_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.search_fn: Callable[[str], set[int]] | None = None
        self.model = EntryModel(self)
        self.proxy = EntryFilter(self)
        self.proxy.setSourceModel(self.model)

        self.status_filter = QComboBox()
        self.method_filter = QComboBox()
        self.flag_filter = QComboBox()
        self.flag_filter.addItems([ANY, "flagged", "not flagged"])
        self.search = QLineEdit(placeholderText="Search subjects, prompts, targets…")
        self.search.setClearButtonEnabled(True)
        filters = QHBoxLayout()
        for label, w in (("Status", self.status_filter), ("Method", self.method_filter), ("Collapse risk", self.flag_filter)):
            filters.addWidget(QLabel(label))
            filters.addWidget(w)
        filters.addWidget(self.search, 1)
        self.status_filter.currentTextChanged.connect(self._apply_filters)
        self.method_filter.currentTextChanged.connect(self._apply_filters)
        self.flag_filter.currentTextChanged.connect(self._apply_filters)
        self.search.textChanged.connect(self._apply_filters)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        follow_rows(self.table.horizontalHeader())
        self.table.sortByColumn(0, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.selectionModel().currentRowChanged.connect(self._row_changed)
        self.widths = Refresh(self.table, self._fit_columns)
        # fitting the columns measures the rows in view and then up to this many (Qt's default 1000:
        # a long ledger cost seconds of GUI time at every change)
        self.table.horizontalHeader().setResizeContentsPrecision(FIT_ROWS)

        self.detail = QTreeWidget()
        self.detail.setColumnCount(2)
        self.detail.setHeaderLabels(["Field", "Value"])
        self.detail.setAlternatingRowColors(True)
        self.detail.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)

        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Undo the selected applied edit (recorded as a new entry)")
        self.revert_button.setEnabled(False)
        self.verify_button = QPushButton("Verify ledger")
        self.export_button = QPushButton("Export…")
        self.verify_result = QLabel()
        self.verify_result.setObjectName("verifyResult")
        self.verify_result.setWordWrap(True)
        self.revert_button.clicked.connect(self._revert)
        self.verify_button.clicked.connect(self.verify_requested.emit)
        self.export_button.clicked.connect(self.export_requested.emit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.revert_button)
        buttons.addWidget(self.verify_button)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.verify_result, 1)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.detail)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(filters)
        layout.addWidget(split, 1)
        layout.addLayout(buttons)
        self.current: dict[str, Any] | None = None
        self._refill_choices()

    # ------------------------------------------------------------ content
    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        """The ledger's rows. The model and the selection follow at once; the columns' widths (a
        measure of every cell) when the table is seen, once per burst (``ui.refresh``)."""
        if rows == self.model.rows:
            return  # nothing changed: no reset, no re-measure, no repaint
        keep = self.current.get("id") if self.current else None
        self.model.set_rows(rows)
        self._refill_choices()
        self._apply_filters()
        self.widths.mark()
        if keep is not None:
            self.select_entry(keep)

    def _fit_columns(self) -> None:
        self.table.resizeColumnsToContents()
        for c in range(len(COLUMNS)):  # a long subject ("batch of 2: ...") must not push the figures off screen
            self.table.setColumnWidth(c, min(self.table.columnWidth(c), MAX_COLUMN_WIDTH))

    def _refill_choices(self) -> None:
        for combo, key in ((self.status_filter, "status"), (self.method_filter, "method")):
            current = combo.currentText() or ANY
            values = sorted({str(r.get(key)) for r in self.model.rows if r.get(key) is not None})
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([ANY, *values])
            combo.setCurrentText(current if current in values else ANY)
            combo.blockSignals(False)

    def _apply_filters(self, *_args) -> None:
        self.proxy.status = self.status_filter.currentText() or ANY
        self.proxy.method = self.method_filter.currentText() or ANY
        self.proxy.flag = self.flag_filter.currentText() or ANY
        text = self.search.text().strip()
        self.proxy.text_ids = self._search(text) if text else None
        self.proxy.invalidate()

    def _search(self, text: str) -> set[int]:
        found: set[int] = set()
        if self.search_fn is not None:
            try:
                found |= set(self.search_fn(text))
            except Exception:  # noqa: BLE001 - FTS syntax errors: fall back to plain matching
                pass
        low = text.lower()
        for r in self.model.rows:
            hay = " ".join(str(r.get(k) or "") for k in ("subject", "prompt", "target_new", "target_true"))
            if low in hay.lower():
                found.add(r.get("id"))
        return found

    def visible_ids(self) -> list[int]:
        src = self.model.rows
        return [src[self.proxy.mapToSource(self.proxy.index(i, 0)).row()].get("id")
                for i in range(self.proxy.rowCount())]

    # ------------------------------------------------------------ selection and detail
    def select_entry(self, entry_id: int) -> bool:
        for i, r in enumerate(self.model.rows):
            if r.get("id") == entry_id:
                idx = self.proxy.mapFromSource(self.model.index(i, 0))
                if not idx.isValid():  # filtered out: clear the filters so the entry can be shown
                    self.status_filter.setCurrentText(ANY)
                    self.method_filter.setCurrentText(ANY)
                    self.flag_filter.setCurrentText(ANY)
                    self.search.clear()
                    idx = self.proxy.mapFromSource(self.model.index(i, 0))
                self.table.setCurrentIndex(idx)
                self.table.scrollTo(idx)
                return True
        return False

    def _row_changed(self, current, _previous) -> None:
        if not current.isValid():
            self.current = None
            self.detail.clear()
            self.revert_button.setEnabled(False)
            return
        row = self.model.rows[self.proxy.mapToSource(current).row()]
        self.current = row
        self._show_detail(row)
        self.revert_button.setEnabled(revertible(row))
        if row.get("id") is not None:
            self.entry_selected.emit(int(row["id"]))

    def _show_detail(self, row: dict[str, Any]) -> None:
        self.detail.clear()
        ids = [r.get("id") for r in sorted(self.model.rows, key=lambda r: r.get("id") or 0)]
        pos = ids.index(row.get("id")) + 1 if row.get("id") in ids else "?"
        chain = QTreeWidgetItem(["Chain", f"entry {pos} of {len(ids)}"])
        for key in ("hash", "prev_hash", "delta_hash", "reverts", "reverted_by"):
            chain.addChild(_item(key, row.get(key)))
        bold = QFont()
        bold.setBold(True)
        chain.setFont(0, bold)
        self.detail.addTopLevelItem(chain)
        chain.setExpanded(True)
        for item in (recheck_item(row.get("recheck")), thresholds_item(row)):
            if item is not None:
                item.setFont(0, bold)
                self.detail.addTopLevelItem(item)
                item.setExpanded(True)
        raw = row.get("_raw", row)
        for key, value in raw.items():
            if key.startswith("_"):
                continue
            self.detail.addTopLevelItem(_item(key, value))
        self.detail.resizeColumnToContents(0)

    def _revert(self) -> None:
        if self.current and self.current.get("id") is not None:
            self.revert_requested.emit(int(self.current["id"]))

    def show_verify(self, result: dict[str, Any]) -> None:
        if result.get("ok"):
            text = f"✔ Ledger verified: {result.get('entries', '?')} entries, chain and deltas intact."
            color = "#1e7b34"
        else:
            where = result.get("reason") or f"entry {result.get('first_bad')} does not match"
            text = f"✘ Ledger verification FAILED: {where}"
            color = "#c0392b"
        self.verify_result.setText(text)
        self.verify_result.setStyleSheet(f"color: {color}; font-weight: bold;")
