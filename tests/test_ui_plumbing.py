"""The window's plumbing without a model: the worker runner, the edit panel's checks, the
audit trail over a real SQLite ledger, settings, the ``gui`` subcommand, packaging files.

Fast (no ROME edit); the tests that edit the demo model are in ``test_ui.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DESKTOP = ROOT / "packaging" / "io.github.edit_auditor.EditAuditor.desktop"
METAINFO = ROOT / "packaging" / "io.github.edit_auditor.EditAuditor.metainfo.xml"


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path):
    from ui import settings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    settings.settings().clear()


@pytest.fixture
def runner(qtbot):
    from PySide6.QtWidgets import QWidget

    from ui.worker import Runner

    owner = QWidget()
    qtbot.addWidget(owner)
    r = Runner(owner)
    yield r
    r.cancel()
    r.wait()


# ---------------------------------------------------------------- worker


def test_runner_runs_off_the_gui_thread_and_reports_on_it(runner, qtbot):
    seen: list = []
    runner.progress.connect(lambda p: seen.append((p, threading.get_ident())))

    def job(report, cancel):
        report("halfway")
        return threading.get_ident()

    with qtbot.waitSignal(runner.finished, timeout=10_000) as blocker:  # emitted on the GUI thread
        assert runner.start("job", job)
    name, worker_ident = blocker.args
    assert name == "job" and worker_ident != threading.get_ident()
    assert runner.last_thread == worker_ident
    assert seen == [("halfway", threading.get_ident())]
    assert not runner.busy


def test_runner_turns_exceptions_into_messages(runner, qtbot):
    def job(report, cancel):
        raise ValueError("the subject is missing\nsecond line")

    with qtbot.waitSignal(runner.failed, timeout=10_000) as blocker:
        runner.start("job", job)
    assert blocker.args == ["job", "ValueError: the subject is missing"]
    assert "Traceback" in runner.last_traceback
    assert not runner.busy


def test_runner_cancel_sets_the_event_and_reports_cancelled(runner, qtbot):
    from auditor.run.edit import EditCancelled

    started = threading.Event()

    def job(report, cancel):
        started.set()
        if not cancel.wait(30):
            return "not cancelled"
        raise EditCancelled("stopped")

    runner.start("edit", job)
    assert started.wait(10)
    assert not runner.start("other", lambda report, cancel: None)  # one job at a time
    with qtbot.waitSignal(runner.cancelled, timeout=10_000) as blocker:
        runner.cancel()
    assert blocker.args == ["edit"]


def test_runner_no_grad_is_set_inside_the_worker(runner, qtbot):
    import torch

    with qtbot.waitSignal(runner.finished, timeout=10_000) as blocker:
        runner.start("job", lambda report, cancel: torch.is_grad_enabled(), no_grad=True)
    assert blocker.args[1] is False
    assert torch.is_grad_enabled()  # the GUI thread is untouched


def test_a_job_leaves_the_gui_a_core_unless_omp_num_threads_is_set(runner, qtbot, monkeypatch):
    import torch

    from ui.worker import spare_a_core

    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert spare_a_core() is None  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert spare_a_core() == max(1, cores - 1)
        torch.set_num_threads(cores)
        with qtbot.waitSignal(runner.finished, timeout=10_000) as blocker:
            runner.start("job", lambda report, cancel: torch.get_num_threads())
        assert blocker.args[1] == max(1, cores - 1)  # what torch used inside the job
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- edit panel


@pytest.fixture
def panel(qtbot):
    from auditor.engine.hparams import load_hparams
    from ui.edit_panel import EditPanel

    p = EditPanel()
    qtbot.addWidget(p)
    p.set_model(30, load_hparams("llama").to_dict())
    p.show()
    return p


def _type(panel, **fields):
    for name, text in fields.items():
        widget = getattr(panel, name)
        widget.clear()
        QTest.keyClicks(widget, text)


def test_panel_defaults_come_from_the_engine_hparams(panel):
    from auditor.engine.hparams import load_hparams

    hp = load_hparams("llama")
    assert panel.layer.value() == hp.layer and panel.layer.maximum() == 29
    assert panel.hp["v_num_grad_steps"].value() == hp.v_num_grad_steps
    assert panel.hp["v_lr"].value() == pytest.approx(hp.v_lr)
    panel.hp["v_lr"].setValue(0.1)
    panel.reset_button.click()
    assert panel.hp["v_lr"].value() == pytest.approx(hp.v_lr)


@pytest.mark.parametrize("fields, where", [
    (dict(prompt="", subject="Paris", target_new="x"), "prompt"),
    (dict(prompt="{} is in", subject="", target_new="x"), "subject"),
    (dict(prompt="{} is in", subject="Paris", target_new=""), "target_new"),
    (dict(prompt="The city is in", subject="Paris", target_new="x"), "prompt"),
    (dict(prompt="{} is {} in", subject="Paris", target_new="x"), "prompt"),
    (dict(prompt="{} is in", subject="Paris", target_new="France", target_true="France"), "target_new"),
])
def test_invalid_input_is_marked_at_its_field_and_nothing_is_sent(panel, qtbot, fields, where):
    sent: list = []
    panel.run_requested.connect(lambda *a: sent.append(a))
    _type(panel, **fields)
    QTest.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)
    assert sent == []
    assert list(panel.errors()) == [where]
    assert panel.fields[where].error.isVisible()
    assert "border" in panel.fields[where].editor.styleSheet()
    # typing into the field clears its mark
    QTest.keyClicks(panel.fields[where].editor, "a")
    assert panel.errors() == {}


def test_a_valid_request_is_sent_with_the_options(panel, qtbot):
    _type(panel, prompt="{} is located in the city of", subject="The Eiffel Tower", target_new="Rome",
          target_true="Paris")
    panel.paraphrases.setPlainText("Where is {}? In the city of\n\n")
    panel.neighborhood.setPlainText("The Louvre is in the city of | Paris\nThe Colosseum is in the city of")
    panel.key_mode.setCurrentText("original")
    panel.layer.setValue(6)
    with qtbot.waitSignal(panel.run_requested, timeout=1000) as blocker:
        QTest.mouseClick(panel.dry_button, Qt.MouseButton.LeftButton)
    request, options = blocker.args
    assert request.text == "The Eiffel Tower is located in the city of"
    assert request.target_new == "Rome" and request.target_true == "Paris"
    assert request.paraphrases == ["Where is The Eiffel Tower? In the city of"]
    assert [(p.prompt, p.target) for p in request.neighborhood] == [
        ("The Louvre is in the city of", "Paris"), ("The Colosseum is in the city of", "Paris")]
    assert options["dry_run"] is True and options["key_mode"] == "original"
    assert options["hparams"]["layer"] == 6 and options["method"] == "rome"


# ---------------------------------------------------------------- audit trail on a real ledger


@pytest.fixture
def ledger(tmp_path):
    from auditor.record.ledger import Ledger

    lg = Ledger.create(tmp_path / "ledger.db", {"base_fingerprint": "sha256:0", "dtype": "float32"})
    for subject, target, status, method, risk in (
        ("The Eiffel Tower", "Rome", "dry-run", "rome", 0),
        ("Danielle Darrieux", "English", "rejected", "rome", 1),
        ("Canada", "Sydney", "failed", "rome", 0),
    ):
        lg.append({"subject": subject, "prompt": f"{subject} is", "target_new": target, "status": status,
                   "method": method, "collapse_risk": risk, "denominator": 0.01 if risk else 5.0})
    yield lg
    lg.close()


def test_ledger_rows_are_read_incrementally_and_match_a_full_read(ledger):
    """The window reads only the entries added since its last read; the rows (revert marks included)
    are those of a full read."""
    from ui.entries import LedgerRows, rows_of

    rows = LedgerRows(ledger)
    assert rows.read() == rows_of(ledger.entries())
    read = []
    ledger_entries = ledger.entries
    ledger.entries = lambda **kw: read.append(kw) or ledger_entries(**kw)  # what each read asks for
    try:
        ledger.append({"subject": "Canada", "prompt": "Canada is", "target_new": "Oslo", "status": "applied",
                       "method": "rome"})
        ledger.append({"kind": "revert", "reverts": 4, "status": "applied"})
        assert rows.read() == rows_of(ledger_entries())
        assert read == [{"after": 3}]
        assert [r.get("reverted_by") for r in rows.read()] == [None, None, None, 5, None]
        assert read[-1] == {"after": 5}
    finally:
        ledger.entries = ledger_entries


def test_audit_trail_lists_sorts_filters_and_searches(qtbot, ledger):
    from ui.audit import AuditTrail
    from ui.entries import rows_of

    audit = AuditTrail()
    qtbot.addWidget(audit)
    audit.search_fn = lambda text: {e.id for e in ledger.search(text)}
    audit.set_rows(rows_of(ledger.entries()))
    assert audit.visible_ids() == [3, 2, 1]  # newest first
    audit.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert audit.visible_ids() == [1, 2, 3]
    audit.status_filter.setCurrentText("rejected")
    assert audit.visible_ids() == [2]
    audit.status_filter.setCurrentText("any")
    audit.flag_filter.setCurrentText("not flagged")
    assert audit.visible_ids() == [1, 3]
    audit.flag_filter.setCurrentText("any")
    QTest.keyClicks(audit.search, "Sydney")
    assert audit.visible_ids() == [3]
    # selecting a filtered-out entry clears the filters and shows it in detail
    assert audit.select_entry(1)
    assert audit.current["id"] == 1 and audit.search.text() == ""
    top = [audit.detail.topLevelItem(i).text(0) for i in range(audit.detail.topLevelItemCount())]
    assert top[0] == "Chain" and "Content hash" in top and "Subject" in top and "True target" in top
    keys = [audit.detail.topLevelItem(i).toolTip(0) for i in range(audit.detail.topLevelItemCount())]
    assert "content_hash" in keys and "target_true" in keys  # the ledger's own key, on hover
    assert not [t for t in top if "_" in t]  # no snake_case shown
    chain = audit.detail.topLevelItem(0)
    assert chain.text(1) == "entry 1 of 3"
    assert chain.child(0).text(1) == ledger.get(1).content_hash
    assert not audit.revert_button.isEnabled()  # a dry run has nothing to revert
    # a long subject (a batch's) is capped so the figures stay on screen; its whole text is on hover
    from ui.audit import COLUMNS, MAX_COLUMN_WIDTH

    long = "batch of 2: The Eiffel Tower → Rome, Canada → Sydney, and a few more words to make it long"
    audit.set_rows([{**r, "subject": long} if r["id"] == 2 else r for r in rows_of(ledger.entries())])
    audit.widths.flush()  # the columns are measured when the table is seen (ui.refresh); it is not shown here
    col = [k for k, _ in COLUMNS].index("subject")
    assert audit.table.columnWidth(col) <= MAX_COLUMN_WIDTH
    cell = audit.proxy.index([audit.proxy.index(i, 0).data() for i in range(3)].index("2"), col)
    assert cell.data(Qt.ItemDataRole.ToolTipRole) == long


def shown_arrow(header, section: int) -> str:
    """Which way the sort arrow drawn in ``section`` points, read from the header's pixels.

    The arrow is the rightmost dark shape of the section: a ▲ is widest at its bottom row, a ▼ at
    its top row.
    """
    img = header.grab().toImage()
    left = header.sectionViewportPosition(section)
    xs = range(left, left + header.sectionSize(section))
    dark = {(x, y) for x in xs for y in range(img.height()) if img.pixelColor(x, y).lightness() < 150}
    assert dark, "nothing drawn in the section"
    right = max(x for x, _ in dark)
    shape = [(x, y) for x, y in dark if x > right - 12]
    rows = sorted({y for _, y in shape})
    width = {y: sum(1 for _, yy in shape if yy == y) for y in rows}
    assert len(rows) >= 2 and width[rows[0]] != width[rows[-1]], "no arrow in the section"
    return "up" if width[rows[-1]] > width[rows[0]] else "down"


def test_the_sort_arrow_follows_the_rows(qtbot, ledger):
    """Newest first (the default) shows ▼, oldest first ▲, in Fusion (the app's style), which drew
    them the other way round."""
    from PySide6.QtWidgets import QApplication

    from ui.audit import AuditTrail
    from ui.entries import rows_of

    app = QApplication.instance()
    before = app.style().name()
    app.setStyle("Fusion")
    try:
        audit = AuditTrail()
        qtbot.addWidget(audit)
        audit.set_rows(rows_of(ledger.entries()))
        audit.resize(900, 400)
        audit.show()
        header = audit.table.horizontalHeader()
        assert audit.visible_ids() == [3, 2, 1]
        assert shown_arrow(header, 0) == "down"
        audit.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        assert audit.visible_ids() == [1, 2, 3]
        assert shown_arrow(header, 0) == "up"
    finally:
        app.setStyle(before)


def test_batch_and_collateral_tables_read_as_words_before_any_run(qtbot):
    """Headings in words (the record's key on hover), each wide enough for its text, and an idle bar
    that says so (it was blank)."""
    from ui.batch_panel import LAYER_COLUMNS, REQUEST_COLUMNS, BatchPanel
    from ui.collateral_view import CollateralView
    from ui.watch_panel import WatchPanel

    batch, collateral, watch = BatchPanel(), CollateralView(), WatchPanel()
    for w in (batch, collateral, watch):
        qtbot.addWidget(w)
        w.resize(900, 600)
        w.show()
    assert batch.progress.text() == "idle"
    for table, keys in ((batch.table, REQUEST_COLUMNS), (batch.layers, LAYER_COLUMNS), (collateral.table, None),
                        (watch.table, None)):
        header = table.horizontalHeader()
        heads = [table.horizontalHeaderItem(c) for c in range(table.columnCount())]
        assert not [h.text() for h in heads if "_" in h.text()]
        if keys is not None:
            assert [h.toolTip() for h in heads] == list(keys)
            assert heads[3].text() == "New target" if keys is REQUEST_COLUMNS else True
        fm = header.fontMetrics()
        clipped = [h.text() for c, h in enumerate(heads) if header.sectionSize(c) < fm.horizontalAdvance(h.text())]
        assert not clipped
    assert [watch.table.horizontalHeaderItem(c).text() for c in range(4)] == [
        "ID", "Prompt", "Watched answer", "The model now"]


def test_a_burst_of_progress_is_a_few_redraws_and_a_hidden_chart_none(qtbot):
    """The live chart redraws once per burst of v* steps, not once per step (a fast optimiser used to
    cost a repaint per tick), and hidden once for a whole burst: drawn when its state is quiet (so that
showing it costs nothing), or in its Show event if it is shown before."""
    from auditor.base import Progress
    from ui.charts import LiveEditChart

    chart = LiveEditChart()
    qtbot.addWidget(chart)
    chart.show()
    qtbot.waitUntil(lambda: not chart.refresh.stale)
    start = chart.redraws
    for step in range(50):  # one burst: 50 steps within one event-loop turn
        chart.add(Progress("v", step=step, total=100, loss=5.0 - step / 20, target_prob=step / 100))
    qtbot.waitUntil(lambda: chart.drawn_points() == 50)
    assert chart.redraws - start == 1
    for step in range(50, 100):  # 50 more, the event loop turning between them
        chart.add(Progress("v", step=step, total=100, loss=5.0 - step / 20, target_prob=step / 100))
        qtbot.wait(2)
    qtbot.waitUntil(lambda: chart.drawn_points() == 100)
    assert 1 <= chart.redraws - start < 50 // 2, chart.redraws - start  # far fewer redraws than steps
    chart.hide()
    drawn = chart.redraws
    chart.reset()
    for step in range(30):
        chart.add(Progress("v", step=step, total=30, loss=1.0, target_prob=0.5))
        qtbot.wait(2)
    assert chart.redraws == drawn and chart.drawn_points() == 100  # hidden: stale while its state changes
    qtbot.waitUntil(lambda: not chart.refresh.stale)  # quiet: drawn once, in a turn of its own
    assert chart.redraws == drawn + 1 and chart.drawn_points() == 30
    chart.show()  # nothing left to draw when it is shown
    assert chart.redraws == drawn + 1
    chart.hide()
    for step in range(5):
        chart.add(Progress("v", step=step, total=30, loss=1.0, target_prob=0.5))
    chart.show()  # shown before its state was quiet: drawn in its Show event, before its first paint
    assert chart.redraws == drawn + 2 and chart.drawn_points() == 35


def test_health_charts_keep_their_edge_points_and_title_inside_at_1280x800(qtbot):
    """The last entry's point was cut by the frame and the threshold subtitle ran past the chart at
    1280x800 (where each health chart is about 390 px wide)."""
    from ui.charts import DenominatorChart, EditPoint, PerplexityChart

    points = [EditPoint(i, 72.05, 72.1 + i / 100, 6.5 - i, False) for i in range(1, 5)]
    for chart, limit in ((PerplexityChart(), 1.5), (DenominatorChart(), 0.5)):
        qtbot.addWidget(chart)
        chart.resize(360, 200)  # a little under the ~390 px it gets at 1280x800
        chart.show()
        chart.set_points(points, limit)
        qtbot.waitUntil(lambda: chart.refresh.redraws == 1)  # drawn by its ui.refresh.Refresh, soon after
        qtbot.wait(20)
        (x0, x1), _ = chart.plot_item.viewRange()
        assert x0 <= 0.5 and x1 >= 4.5  # room for the first and the last point
        title = chart.plot_item.titleLabel.item
        # centred over the plot area: wider than it, the title runs past the widget's right edge
        assert title.boundingRect().width() <= chart.plot_item.vb.boundingRect().width(), title.toPlainText()


def test_verify_result_is_shown(qtbot, ledger):
    from ui.audit import AuditTrail

    audit = AuditTrail()
    qtbot.addWidget(audit)
    audit.show_verify(ledger.verify())
    assert "verified: 3 entries" in audit.verify_result.text()
    audit.show_verify({"ok": False, "first_bad": 2, "reason": "entry 2: changed"})
    assert "FAILED" in audit.verify_result.text() and "entry 2" in audit.verify_result.text()


def test_audit_trail_shows_spill_rate_and_preservation_cost(qtbot, ledger):
    """Issue 18: each entry's recorded collateral audit in two columns, a dash where it has none."""
    from ui.audit import COLUMNS, AuditTrail
    from ui.entries import rows_of

    for subject, spill, cost in (("France", 0.95, 0.0056), ("Angola", 0.0, 0.0133)):
        ledger.append({"subject": subject, "prompt": "{} is a country in", "target_new": "Asia", "status": "applied",
                       "method": "rome", "metrics": {"collateral": {"spill_rate": spill, "preservation_cost": cost,
                                                                    "moved": ["Spain"] if spill else []}}})
    audit = AuditTrail()
    qtbot.addWidget(audit)
    audit.set_rows(rows_of(ledger.entries()))
    keys = [key for key, _ in COLUMNS]
    spill_col, cost_col = keys.index("spill_rate"), keys.index("preservation_cost")
    headers = [audit.proxy.headerData(c, Qt.Orientation.Horizontal) for c in (spill_col, cost_col)]
    assert headers == ["Spill rate", "Preservation cost"]

    def shown(column: int) -> dict[int, str]:
        return dict(zip(audit.visible_ids(), (audit.proxy.index(r, column).data() for r in range(audit.proxy.rowCount()))))

    assert shown(spill_col) == {4: "0.95", 5: "0", 3: "—", 2: "—", 1: "—"}  # France 4, Angola 5
    assert shown(cost_col) == {4: "0.0056", 5: "0.0133", 3: "—", 2: "—", 1: "—"}
    assert "not audited" in audit.proxy.index(audit.visible_ids().index(1), spill_col).data(Qt.ItemDataRole.ToolTipRole)
    audit.table.sortByColumn(cost_col, Qt.SortOrder.AscendingOrder)  # numbers sort as numbers, before dashes
    assert audit.visible_ids()[:2] == [4, 5]
    audit.table.sortByColumn(spill_col, Qt.SortOrder.AscendingOrder)
    assert audit.visible_ids()[:2] == [5, 4]


# ---------------------------------------------------------------- settings, command line, packaging


def test_settings_persist_and_feed_the_guard():
    from auditor.run.edit import CollapseGuard
    from ui import settings

    default = CollapseGuard()
    assert settings.guard().min_denominator == default.min_denominator
    settings.put(settings.MIN_DENOMINATOR, 0.5)
    settings.put(settings.MAX_PPL_RATIO, 1.2)
    settings.put(settings.DEVICE, "cpu")
    assert settings.get(settings.DEVICE) == "cpu"
    g = settings.guard()
    assert (g.min_denominator, g.max_ppl_ratio) == (0.5, 1.2)


def test_welcome_page_on_first_run_offers_the_demo(qtbot):
    from ui.main_window import MainWindow

    w = MainWindow(restore_last=True)
    qtbot.addWidget(w)
    w.show()
    qtbot.wait(50)
    assert w.stack.currentIndex() == 0 and w.welcome_demo.isVisible()
    assert not w.export_action.isEnabled()


def test_who_else_changed_says_its_entry_and_follows_a_revert(qtbot):
    """The tab names the entry its audit belongs to and, after that entry's revert (the window's
    "model changed" notice), says that it is no longer in the model."""
    from ui.main_window import MainWindow

    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    view = w.collateral_view
    assert "after an edit" in view.summary.text()  # says what will appear
    report = {"spill_rate": 0.25, "n_swaps": 4, "preservation_cost": 0.01, "moved": ["Canada"],
              "rows": [{"moved": True, "subject": "Canada", "kind": "swap", "prompt": "The capital of Canada is",
                        "answer_before": "Ottawa", "answer_after": "Rome", "p_before": 0.01, "p_after": 0.4,
                        "key_ratio": 0.3}]}
    view.show_report(report, 2)
    assert view.summary.text().startswith("Who else changed (entry 2): spill rate 0.25 over 4")
    w.rows = [{"id": 2, "status": "applied", "reverted_by": None}]
    w.model_changed.emit()
    assert "no longer in the model" not in view.summary.text()
    w.rows = [{"id": 2, "status": "applied", "reverted_by": 3}, {"id": 3, "status": "revert"}]
    w.model_changed.emit()
    assert "Reverted by entry 3: no longer in the model" in view.summary.text()
    assert view.table.rowCount() == 1  # what was measured stays listed


def test_gui_subcommand_is_registered():
    from auditor.cli import build_parser
    from ui.cli_gui import cmd_gui

    args = build_parser().parse_args(["gui", "demo", "--device", "cpu"])
    assert args.func is cmd_gui and args.path == "demo" and args.device == "cpu"


def test_auditor_never_imports_qt():
    code = ("import sys, auditor.cli, auditor.run.workspace, auditor.run.edit, auditor.record.export; "
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'ui', 'pyqtgraph'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([os.sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None, reason="desktop-file-utils not installed")
def test_desktop_file_validates():
    done = subprocess.run(["desktop-file-validate", str(DESKTOP)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("appstreamcli") is None, reason="appstream not installed")
def test_metainfo_validates():
    done = subprocess.run(["appstreamcli", "validate", "--no-net", str(METAINFO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_icon_files_exist():
    from PySide6.QtGui import QImage

    icons = ROOT / "resources" / "icons"
    assert (icons / "edit-auditor.svg").read_text().lstrip().startswith("<?xml")
    img = QImage(str(icons / "edit-auditor.png"))
    assert (img.width(), img.height()) == (256, 256)


def test_dropping_a_folder_or_gguf_opens_it_and_errors_arrive_as_messages(qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QPoint, QPointF, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from ui import settings
    from ui.main_window import MainWindow

    settings.put(settings.WORKSPACES_DIR, str(tmp_path / "workspaces"))
    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)

    def drag(path: Path):
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(w, enter)
        drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                          Qt.KeyboardModifier.NoModifier)
        return enter, drop, mime

    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    enter, _, _ = drag(text)
    assert not enter.isAccepted()  # only folders and .gguf files are taken

    folder = tmp_path / "not-a-model"
    folder.mkdir()
    enter, drop, _mime = drag(folder)
    assert enter.isAccepted()
    with qtbot.waitSignal(w.runner.failed, timeout=120_000) as blocker:
        QApplication.sendEvent(w, drop)
    name, message = blocker.args
    assert name == "open" and "config.json" in message
    assert w.workspace is None and not (tmp_path / "workspaces" / "not-a-model").exists()
    assert "config.json" in w.last_error
