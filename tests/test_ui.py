"""The window, driven through its real widgets on the demo model (pytest-qt, offscreen).

Real ROME edits of the demo model are slow on a CPU, so they are few: one applied edit
through the widgets (module fixture ``edited``: its workspace is copied for the tests
that need an edit on record), one cancelled edit, one collapse-flagged dry run, and the
screenshot script's edit. Waits are on GUI-thread state (``qtbot.waitUntil``), never on
signals emitted from the worker thread.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from ui.app import process_until as spin  # noqa: E402  (module fixtures have no qtbot)
from ui.entries import fmt  # noqa: E402

pytestmark = pytest.mark.slow

EDIT_TIMEOUT = 1800  # s; the first edit on a fresh machine also computes the key statistics
OPEN_TIMEOUT = 600
PROMPT, SUBJECT, NEW, TRUE = "{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"


# ---------------------------------------------------------------- helpers


def isolate_settings(folder: Path) -> None:
    from ui import settings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder / "settings"))
    settings.settings().clear()
    settings.put(settings.WORKSPACES_DIR, str(folder / "workspaces"))


def new_window(path: str | Path):
    """A main window that opens ``path`` (a workspace folder, or ``demo``) and waits until it has."""
    from ui.main_window import MainWindow

    w = MainWindow(restore_last=False)
    w.resize(1400, 900)
    w.show()
    w.open_path(path)
    assert spin(lambda: w.workspace is not None and not w.runner.busy, OPEN_TIMEOUT), w.last_error
    return w


def type_request(panel, prompt=PROMPT, subject=SUBJECT, new=NEW, true=TRUE) -> None:
    for field, text in ((panel.prompt, prompt), (panel.subject, subject), (panel.target_new, new),
                        (panel.target_true, true)):
        field.clear()
        if text:
            QTest.keyClicks(field, text)


def click(button) -> None:
    assert spin(button.isEnabled, 120), f"{button.text()} stays disabled"
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def wait_answer(w) -> None:
    """Let the debounced answer preview start and finish."""
    spin(lambda: w.panel._answer_timer.isActive() or w.runner.busy, 2)
    assert spin(lambda: not w.panel._answer_timer.isActive() and not w.runner.busy, 120)


def close_window(w) -> None:
    """Close ``w`` and let a running (quick) job end: closing never blocks, it waits for the worker."""
    w.close()
    assert spin(lambda: not w.runner.busy and not w.isVisible(), 120), w.statusBar().currentMessage()


def copy_workspace(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*-wal", "*-shm", "workspace.lock"))
    return dst


def same_file(a: Path, b: Path) -> bool:
    """Equal content: safetensors by tensors and metadata (the header's key order is not fixed),
    JSON by value, anything else by bytes."""
    if a.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
            if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
                return False
            return all(fa.get_tensor(k).equal(fb.get_tensor(k)) and fa.get_tensor(k).dtype == fb.get_tensor(k).dtype
                       for k in fa.keys())
    if a.suffix == ".json":
        return json.loads(a.read_text()) == json.loads(b.read_text())
    return a.read_bytes() == b.read_bytes()


def ledger_rows(ws_dir: Path) -> list[dict]:
    con = sqlite3.connect(ws_dir / "ledger.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM entries ORDER BY id")]
    finally:
        con.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _settings(tmp_path: Path):
    isolate_settings(tmp_path)


@pytest.fixture(scope="module")
def edited(qapp, tmp_path_factory):
    """One edit applied to the demo model through the real widgets; what was seen on the way."""
    from auditor.model.checkpoint import fingerprint_model

    root = tmp_path_factory.mktemp("edited")
    isolate_settings(root)
    w = new_window("demo")
    seen: dict = {"ws_dir": Path(str(w.workspace.directory)), "rows_before": w.audit.model.rowCount(),
                  "fingerprint_before": fingerprint_model(w.workspace.lm.model)}
    type_request(w.panel, true="")  # as a new user: the optional fields left empty (default probes)
    w.ask_view.prompt.setText(PROMPT.replace("{}", SUBJECT))  # the Ask box, answered again after the edit
    wait_answer(w)
    seen["answer_before"] = w.panel.answer_text
    progress: list = []
    w.runner.progress.connect(progress.append)  # re-emitted on the GUI thread
    click(w.panel.apply_button)
    seen["started"] = w.runner.busy and w.runner.name == "edit"
    assert spin(lambda: not w.runner.busy, EDIT_TIMEOUT), "the edit did not finish"
    assert not w.last_error, w.last_error
    w.live_chart.flush()
    seen.update(
        outcome=w.last_outcome, progress=progress, chart_steps=w.live_chart.steps,
        chart_points=w.live_chart.drawn_points(), rows_after=w.audit.model.rowCount(),
        table_rows=list(w.audit.model.rows), answer_after=w.panel.answer_text,
        answer_label=w.panel.answer_label.text(), worker_thread=w.runner.last_thread,
        fingerprint_after=fingerprint_model(w.workspace.lm.model), shown_fp=w.info["current"].toolTip(),
        ppl_points=w.ppl_chart.point_count(), den_points=w.den_chart.point_count(),
        result_text=w.result_label.text(),
    )
    assert spin(lambda: not w.runner.busy and w.ask_view.last is not None, 120)  # the refresh after the edit
    seen["asked"] = w.ask_view.last
    close_window(w)
    w.workspace.close()
    w.deleteLater()
    return seen


@pytest.fixture
def window(qtbot, edited, tmp_path):
    """A fresh window on a copy of the edited workspace (one applied edit on record)."""
    ws_dir = copy_workspace(edited["ws_dir"], tmp_path / "ws")
    w = new_window(ws_dir)
    qtbot.addWidget(w)
    yield w
    if w.runner.busy:
        w.runner.cancel()
        w.runner.wait()
    if w.workspace is not None:
        w.workspace.close()


# ---------------------------------------------------------------- tests


def test_apply_an_edit_through_the_widgets(edited):
    out = edited["outcome"]
    assert edited["started"]
    assert edited["worker_thread"] not in (None, threading.main_thread().ident)  # ran off the GUI thread
    assert out.result.status == "applied", out.result.error
    # the chart received every optimisation step the engine reported
    v_steps = [p for p in edited["progress"] if getattr(p, "phase", None) == "v"]
    assert len(v_steps) >= 1
    assert edited["chart_steps"] == len(v_steps) == edited["chart_points"]
    # the ledger table gained the entry
    assert edited["rows_before"] == 0 and edited["rows_after"] == 1
    row = edited["table_rows"][0]
    assert row["id"] == out.entry.id and row["status"] == "applied" and row["subject"] == SUBJECT
    assert edited["ppl_points"] == 1 and edited["den_points"] == 1
    # the panel's answer changed to the new target
    assert TRUE in edited["answer_before"] and NEW not in edited["answer_before"]
    assert edited["answer_after"].strip().startswith(NEW), edited["answer_after"]
    assert NEW in edited["answer_label"]
    # the model changed, and the window shows its new fingerprint
    assert edited["fingerprint_after"] != edited["fingerprint_before"]
    assert edited["shown_fp"] == edited["fingerprint_after"] == out.result.fingerprint_after


def test_default_probes_say_what_broke_without_the_optional_fields(edited):
    """No true target, paraphrases or neighbourhood typed: the measurements are numbers, not dashes."""
    out = edited["outcome"]
    assert out.filled["target_true"] == TRUE  # the model's own answer before the edit
    assert out.filled["paraphrases"] >= 1 and out.filled["neighborhood"] >= 1
    m = out.result.metrics
    assert m["efficacy"] == 1.0 and m["generalization"] is not None and m["locality"] is not None
    row = edited["table_rows"][0]
    assert row["efficacy"] == 1.0 and row["generalization"] is not None and row["locality"] is not None
    text = edited["result_text"]
    assert "default probes" in text and "did not take" not in text
    assert f"generalization {fmt(m['generalization'])}" in text and f"locality {fmt(m['locality'])}" in text
    # who else changed (the collateral audit runs by default), in the summary without opening its tab
    assert m["collateral"] is not None
    from auditor.measure.collateral import summary

    assert f"Who else changed: {html.escape(summary(m['collateral']))}" in text


def test_a_request_that_did_not_take_is_marked(qtbot):
    """An applied edit with efficacy 0 is marked in the Edit view's summary and the Batch table."""
    from types import SimpleNamespace

    from auditor.model.requests import EditRequest
    from ui.batch_panel import BatchPanel
    from ui.entries import did_not_take

    assert did_not_take("applied", 0.0) and not did_not_take("applied", 1.0) and not did_not_take("dry-run", 0.0)
    assert not did_not_take("applied", None)
    panel = BatchPanel()
    qtbot.addWidget(panel)
    requests = [EditRequest(PROMPT, SUBJECT, NEW, TRUE), EditRequest(PROMPT, "The Colosseum", "Paris", "Rome")]
    panel.set_requests(requests)
    result = SimpleNamespace(requests=requests, status="applied", error=None, diagnostics={}, metrics={},
                             per_request=[{"efficacy": 1.0}, {"efficacy": 0.0}])
    panel.show_batch(1, 0, result, 7)
    assert panel.table.item(0, 6).text() == "applied" and panel.table.item(1, 6).text() == "applied, did not take"
    assert "1 request(s) did not take" in panel.summary.text()


def test_invalid_request_is_marked_at_the_field_and_starts_no_worker(window, qtbot):
    from auditor.model.checkpoint import fingerprint_model

    wait_answer(window)
    started: list = []
    window.runner.started.connect(started.append)
    fp = fingerprint_model(window.workspace.lm.model)
    panel = window.panel
    cases = [
        (dict(prompt="The tower is located in the city of"), "prompt"),  # subject not in it, no {}
        (dict(subject=""), "subject"),
        (dict(new=""), "target_new"),
        (dict(prompt="{} and {} are in"), "prompt"),
        (dict(new=TRUE), "target_new"),
    ]
    for change, field in cases:
        args = dict(prompt=PROMPT, subject=SUBJECT, new=NEW, true=TRUE)
        args.update(change)
        type_request(panel, **args)
        click(panel.apply_button)
        assert panel.fields[field].error.text(), field
        assert panel.fields[field].editor.styleSheet(), field  # the red frame
        assert not window.runner.busy
    panel.neighborhood.setPlainText("A prompt without an answer")
    type_request(panel, true="")
    click(panel.dry_button)
    assert "neighborhood" in panel.errors()
    qtbot.wait(50)
    assert started == [] and not window.runner.busy
    assert window.audit.model.rowCount() == 1
    assert fingerprint_model(window.workspace.lm.model) == fp


def test_cancel_leaves_fingerprint_and_ledger_unchanged(window, qtbot):
    from auditor.model.checkpoint import fingerprint_model

    ws = window.workspace
    wait_answer(window)
    fp, rows = fingerprint_model(ws.lm.model), ledger_rows(Path(str(ws.directory)))
    type_request(window.panel, subject="The Colosseum", prompt="{} is located in the city of",
                 new="London", true="Rome")
    wait_answer(window)
    cancelled: list = []
    window.runner.cancelled.connect(cancelled.append)
    click(window.panel.apply_button)
    qtbot.waitUntil(lambda: window.live_chart.steps >= 2 or not window.runner.busy, timeout=EDIT_TIMEOUT * 1000)
    assert window.runner.busy, "the edit ended before it could be cancelled"
    click(window.panel.cancel_button)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=120_000)
    assert cancelled == ["edit"]
    assert fingerprint_model(ws.lm.model) == fp == ws.fingerprint
    assert ledger_rows(Path(str(ws.directory))) == rows
    assert window.audit.model.rowCount() == len(rows)
    assert "Cancelled" in window.result_label.text()


def test_collapse_risk_dry_run_asks_and_declining_leaves_the_model(window, qtbot):
    from auditor.model.checkpoint import fingerprint_model
    from ui import settings

    settings.put(settings.MIN_DENOMINATOR, 1e6)  # a strict guard: every edit is flagged
    ws = window.workspace
    wait_answer(window)
    fp = fingerprint_model(ws.lm.model)
    active = [e.id for e in ws.ledger.active()]
    type_request(window.panel, prompt="The mother tongue of {} is", subject="Danielle Darrieux",
                 new="English", true="French")
    wait_answer(window)
    click(window.panel.dry_button)
    qtbot.waitUntil(lambda: window.collapse_dialog is not None, timeout=EDIT_TIMEOUT * 1000)
    box = window.collapse_dialog
    assert box.isVisible()
    assert "denominator" in box.informativeText()
    assert not window.runner.busy
    assert window.last_outcome.result.status == "dry-run" and window.last_outcome.result.collapse_risk
    assert window.pending_collapse[2] == ws.ledger.head().id  # the dialog knows the reviewed entry
    click(window.decline_button)
    qtbot.waitUntil(lambda: window.collapse_dialog is None, timeout=5000)
    qtbot.wait(100)
    assert not window.runner.busy  # no override was started
    assert fingerprint_model(ws.lm.model) == fp
    assert [e.id for e in ws.ledger.active()] == active
    statuses = [r["status"] for r in window.audit.model.rows]
    assert statuses == ["applied", "dry-run"]
    assert window.audit.model.rows[-1]["collapse_risk"]

    # "Apply anyway" on that review: exactly the delta on record, linked to it, nothing recomputed
    dry, out = ws.ledger.head(), window.last_outcome
    window.ask_collapse_override(out.result.request, out.options, out.result.collapse_reasons, "dry-run", dry.id)
    click(window.override_button)
    qtbot.waitUntil(lambda: not window.runner.busy and len(window.audit.model.rows) == 3, timeout=120_000)
    applied = ws.ledger.head()
    assert (applied.status, applied.delta_hash, applied.fingerprint_before) == ("applied", dry.delta_hash, fp)
    assert applied["diagnostics"]["applies_entry"] == dry.id
    assert fingerprint_model(ws.lm.model) == applied.fingerprint_after == window.current_fingerprint != fp
    assert window.last_outcome is out  # no edit ran


def test_export_and_revert_from_the_window_equal_the_command_line(window, qtbot, edited, tmp_path, capsys):
    from auditor.cli import main as cli

    ws_cli = copy_workspace(edited["ws_dir"], tmp_path / "ws-cli")
    entry_id = edited["outcome"].entry.id
    # export: the dialog, full model, float32, small shards so the progress bar moves
    click(window.audit.export_button)
    dialog = window.export_dialog
    assert dialog is not None and dialog.isVisible()
    out_gui, out_cli = tmp_path / "export-gui", tmp_path / "export-cli"
    dialog.out.setText(str(out_gui))
    dialog.dtype.setCurrentText("float32")
    dialog.shard.setText("200MB")
    click(dialog.export_button)
    qtbot.waitUntil(lambda: not window.runner.busy and dialog.export_button.isEnabled(), timeout=600_000)
    assert dialog.progress.value() == 100, dialog.result.text()
    assert cli(["export", "--workspace", str(ws_cli), "--out", str(out_cli), "--dtype", "float32",
                "--max-shard-size", "200MB"]) == 0
    files_gui = sorted(p.name for p in out_gui.iterdir())
    assert files_gui == sorted(p.name for p in out_cli.iterdir())
    assert len([f for f in files_gui if f.endswith(".safetensors")]) > 1
    for name in files_gui:
        assert same_file(out_gui / name, out_cli / name), name

    # revert: select the entry in the table, click Revert
    assert window.audit.select_entry(entry_id)
    click(window.audit.revert_button)
    qtbot.waitUntil(lambda: not window.runner.busy and len(window.audit.model.rows) == 2, timeout=600_000)
    capsys.readouterr()
    assert cli(["revert", "--workspace", str(ws_cli), str(entry_id), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    gui_rows, cli_rows = ledger_rows(Path(str(window.workspace.directory))), ledger_rows(ws_cli)
    same = ("kind", "status", "reverts", "param", "delta_hash", "fingerprint_before", "fingerprint_after")
    assert [{k: r[k] for k in same} for r in gui_rows] == [{k: r[k] for k in same} for r in cli_rows]
    assert window.workspace.fingerprint == printed["fingerprint_after"] == edited["fingerprint_before"]
    assert window.info["current"].toolTip() == printed["fingerprint_after"]
    assert window.audit.model.rows[0]["reverted_by"] == 2
    assert not window.audit.revert_button.isEnabled()


def test_verify_reports_a_tampered_ledger(window, qtbot):
    ws_dir = Path(str(window.workspace.directory))
    click(window.audit.verify_button)
    qtbot.waitUntil(lambda: not window.runner.busy and bool(window.audit.verify_result.text()), timeout=120_000)
    assert "verified" in window.audit.verify_result.text()
    con = sqlite3.connect(ws_dir / "ledger.db")
    con.execute("DROP TRIGGER entries_append_only_update")
    con.execute("UPDATE entries SET efficacy = 0.0 WHERE id = 1")
    con.commit()
    con.close()
    window.audit.verify_result.clear()
    click(window.audit.verify_button)
    qtbot.waitUntil(lambda: not window.runner.busy and bool(window.audit.verify_result.text()), timeout=120_000)
    text = window.audit.verify_result.text()
    assert "FAILED" in text and "entry 1" in text


def test_chart_point_click_selects_its_ledger_entry(window, qtbot):
    entry_id = window.audit.model.rows[0]["id"]
    window.tabs.setCurrentIndex(0)
    chart = window.den_chart
    qtbot.wait(100)
    points = chart.points.scatter.points()
    assert len(points) == 1 and points[0].data() == entry_id
    scene = chart.points.scatter.mapToScene(points[0].pos())
    QTest.mouseClick(chart.viewport(), Qt.MouseButton.LeftButton, pos=chart.mapFromScene(scene))
    qtbot.waitUntil(lambda: window.tabs.currentWidget() is window.audit, timeout=2000)
    assert window.audit.current["id"] == entry_id


def test_audit_filters(window, qtbot):
    audit = window.audit
    assert audit.visible_ids() == [1]
    audit.status_filter.setCurrentText("applied")
    assert audit.visible_ids() == [1]
    audit.flag_filter.setCurrentText("flagged")
    assert audit.visible_ids() == []
    audit.flag_filter.setCurrentText("any")
    QTest.keyClicks(audit.search, "Eiffel")
    assert audit.visible_ids() == [1]
    audit.search.clear()
    QTest.keyClicks(audit.search, "Zanzibar")
    assert audit.visible_ids() == []


def test_screenshot_script_writes_pngs_of_the_window_size(qapp, tmp_path):
    from PySide6.QtGui import QImage

    from ui import screenshots

    paths = screenshots.take(tmp_path / "shots", quick=True, timeout=EDIT_TIMEOUT)
    assert [p.name for p in paths] == [screenshots.MID_EDIT, screenshots.AUDIT]
    for p in paths:
        assert p.stat().st_size > 10_000
        img = QImage(str(p))
        assert (img.width(), img.height()) == screenshots.SIZE


def test_reopens_the_last_workspace(qtbot, edited, tmp_path):
    from ui import settings
    from ui.main_window import MainWindow

    ws_dir = copy_workspace(edited["ws_dir"], tmp_path / "ws")
    first = MainWindow(restore_last=True)
    qtbot.addWidget(first)
    qtbot.wait(100)  # restore_last runs from the event loop
    assert first.stack.currentIndex() == 0 and not first.runner.busy  # the welcome page offers the demo
    first.close()
    settings.put(settings.LAST_WORKSPACE, str(ws_dir))
    w = MainWindow(restore_last=True)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.workspace is not None and not w.runner.busy, timeout=OPEN_TIMEOUT * 1000)
    assert Path(str(w.workspace.directory)) == ws_dir
    assert w.info["architecture"].text().startswith("LlamaForCausalLM")
    assert w.info["fingerprint"].toolTip().startswith("sha256:")
    assert w.audit.model.rowCount() == 1
    w.workspace.close()


def test_close_during_an_edit_asks_cancels_and_never_blocks(window, qtbot):
    """Closing mid-edit asks first, returns at once (the event loop keeps running), cancels the job
    cooperatively and closes when the worker has stopped; the weights and the ledger are as they were."""
    from PySide6.QtCore import QTimer

    from auditor.model.checkpoint import fingerprint_model
    from ui.main_window import CLOSE_QUESTION

    ws = window.workspace
    ws_dir = Path(str(ws.directory))
    wait_answer(window)
    fp, rows = fingerprint_model(ws.lm.model), ledger_rows(ws_dir)
    type_request(window.panel, subject="The Colosseum", new="London", true="Rome")
    wait_answer(window)
    cancelled: list = []
    window.runner.cancelled.connect(cancelled.append)
    click(window.panel.apply_button)
    qtbot.waitUntil(lambda: window.live_chart.steps >= 1 or not window.runner.busy, timeout=EDIT_TIMEOUT * 1000)
    assert window.runner.busy and window.runner.name == "edit", "the edit ended before the window was closed"

    assert window.close() is False  # returns at once: the question is asked, nothing waits
    assert window.isVisible() and window.runner.busy and not window.runner.cancelling
    box = window.close_dialog
    assert box is not None and box.isVisible() and CLOSE_QUESTION in box.text()
    click(window.keep_button)  # "Keep running": nothing happens
    assert window.close_dialog is None and window.runner.busy and not window.runner.cancelling

    window.close()
    beats: list = []
    heart = QTimer()
    heart.timeout.connect(lambda: beats.append(window.runner.busy))
    heart.start(20)
    click(window.quit_button)  # "Cancel job and quit"
    assert window.runner.cancelling and window.isVisible()  # cooperative: the worker stops at its next check
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=120_000)
    heart.stop()
    assert cancelled == ["edit"] and not window.runner.busy
    assert True in beats  # the GUI thread ran its timers while the job was still stopping
    assert fingerprint_model(ws.lm.model) == fp == ws.fingerprint
    assert ledger_rows(ws_dir) == rows
    assert ws.verify()["ok"]


def test_every_view_refreshes_after_a_revert(window, qtbot, edited):
    """One "model state changed" notice: after a revert the panel's answer, the Ask box, the Edit run
    summary, the left panel and the Trace tab all describe the reverted model."""
    entry_id = edited["outcome"].entry.id
    question = PROMPT.replace("{}", SUBJECT)
    type_request(window.panel)
    wait_answer(window)
    assert window.panel.answer_text.strip().startswith(NEW)
    window.ask_view.prompt.setText(question)
    click(window.ask_view.ask_button)
    qtbot.waitUntil(lambda: not window.runner.busy and window.ask_view.last is not None, timeout=120_000)
    asked = window.ask_view.last
    assert asked.base.strip().startswith(TRUE) and asked.current.strip().startswith(NEW) and not asked.same
    assert "differ" in window.ask_view.verdict.text()
    assert "1 edit in effect" in window.trace_view.state_label.text()
    # the summary of that edit, as the window showed it when the edit ran (the same entry, this copy)
    window.last_outcome = edited["outcome"]
    window.result_label.setText(window._summary(edited["outcome"].result, entry_id))
    assert "reverted" not in window.result_label.text()

    changed: list = []
    window.model_changed.connect(lambda: changed.append(window.current_fingerprint))
    assert window.audit.select_entry(entry_id)
    click(window.audit.revert_button)
    qtbot.waitUntil(lambda: not window.runner.busy and window.ask_view.last is not asked
                    and window.panel.answer_text.strip().startswith(TRUE), timeout=120_000)
    base = window.workspace.base_fingerprint
    assert changed == [base]  # one notice, after the window's own record was up to date
    assert window.ask_view.last.same and window.ask_view.last.current.strip().startswith(TRUE)
    assert TRUE in window.panel.answer_label.text() and "after the edit" not in window.panel.answer_label.text()
    assert "reverted by entry 2" in window.result_label.text()
    assert window.info["current"].toolTip() == base and "0 edits in effect" in window.info["entries"].text()
    assert "base model" in window.trace_view.state_label.text()
    assert any("reverted since" in window.ask_view.against.itemText(i) for i in range(window.ask_view.against.count()))
