"""The window's Sequence view, through its real widgets (offscreen): live curves, thresholds, a stop.

The run uses a tiny random Llama checkpoint (five layers) (real ROME edits in about a second each) so that
the view can be driven end to end without minutes of demo-model edits; the monitor stops it
on a norm threshold set low in the "Stop on" field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from ui.app import process_until as spin  # noqa: E402

TINY_HP = {"mom2_n_tokens": 4096, "mom2_seq_len": 64, "v_num_grad_steps": 6, "context_n": 2,
           "context_len": 4}
CAPITALS = [("France", "Rome"), ("Germany", "Oslo"), ("Italy", "Lima"), ("Spain", "Cairo"), ("Peru", "Bern")]


def five_layer_llama(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny random Llama with 5 layers, so the family's default layer (4) exists."""
    import torch
    from conftest import tiny_config_kwargs
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model("llama", **{**tiny_config_kwargs("llama", len(tokenizer)), "num_hidden_layers": 5})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def window(qtbot, tokenizer_dir, isolated_cache, tmp_path):
    from auditor.run.workspace import Workspace
    from ui import settings
    from ui.main_window import MainWindow

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    settings.settings().clear()
    Workspace.init(five_layer_llama(tmp_path / "tiny", tokenizer_dir), tmp_path / "ws", device="cpu").close()
    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    w.show()
    w.open_path(tmp_path / "ws")
    assert spin(lambda: w.workspace is not None and not w.runner.busy, 300), w.last_error
    yield w
    if w.runner.busy:
        w.runner.cancel()
        w.runner.wait()
    w.workspace.close()


def test_sequence_view_draws_live_and_shows_the_stop(window, tmp_path: Path) -> None:
    path = tmp_path / "requests.json"
    path.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": s, "target_new": t,
                                 "target_true": "Paris"} for s, t in CAPITALS]))
    view = window.sequence_view
    window.tabs.setCurrentWidget(view)
    view.hparams = TINY_HP
    QTest.keyClicks(view.requests_path, str(path))
    view.stop_on.clear()
    QTest.keyClicks(view.stop_on, "norm=1.3,ppl")
    QTest.mouseClick(view.allow_collapse, Qt.MouseButton.LeftButton)  # random weights: tiny denominators
    # before the run the empty chart says its threshold; the dashed line comes with the first point
    assert "stops above 1.3" in view.empty_notes["norm_ratio"].item.textItem.toPlainText()
    assert view.threshold_lines["norm_ratio"].value() == 1.3 and not view.threshold_lines["norm_ratio"].isVisible()
    n_entries = len(window.workspace.ledger)
    assert view.run_button.isEnabled() and not view.stop_button.isEnabled()
    assert (view.progress.minimum(), view.progress.maximum(), view.progress.text()) == (0, 1, "idle")  # looks idle
    window.ask_view.prompt.setText("The capital of France is")  # answered again after every step
    seen: list = []  # the bar, the left panel and the Ask box as each progress message left them

    def look(_message) -> None:
        seen.append((view.progress.value(), view.progress.maximum(), view.progress.text(),
                     window.info["entries"].text(), window.ask_view.last))

    window.runner.progress.connect(look)  # connected after the window's own slot: sees its result
    QTest.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    assert window.runner.busy and window.runner.name == "sequence", (window.last_error, view.status.text())
    assert view.stop_button.isEnabled() and not view.run_button.isEnabled()
    assert spin(lambda: len(view.steps) >= 1, 300)  # a step is drawn while the run goes on
    assert spin(lambda: not window.runner.busy, 600), window.last_error
    assert not window.last_error, window.last_error
    final = view.final
    assert final["stopped"] and "norm_ratio" in final["reason"], [(s["norm_ratio"], s["status"], s["errors"]) for s in view.steps]
    assert "Stopped at step" in view.status.text() and "norm_ratio" in view.status.text()
    assert spin(lambda: not view.refresh.stale and view.refresh.pieces is None, 10)  # drawn, a plot a turn
    x, y = view.curves["norm_ratio"].getData()
    assert list(x) == [s["edits"] for s in view.steps] and len(x) == final["stopped_at_step"]
    assert y[-1] > 1.3 and all(v <= 1.3 for v in y[:-1])
    assert view.threshold_lines["norm_ratio"].isVisible()
    assert not view.threshold_lines["cond_ratio"].isVisible()  # not a figure this run stops on
    # the offending step is on record and rolled back; the window shows the new entries
    assert len(window.workspace.ledger) == n_entries + final["stopped_at_step"] + 1
    assert window.audit.model.rowCount() == len(window.workspace.ledger)
    assert window.workspace.fingerprint == final["fingerprint_before_step"]
    # (the answer boxes' refresh may be running after the plots' wait above: the buttons follow the idle window)
    assert spin(lambda: not window.runner.busy, 120)
    assert view.run_button.isEnabled() and not view.stop_button.isEnabled()
    # the Sequence tab's bar counted over the whole run (5 steps of 1), never backwards, and is idle again
    running = [s for s in seen if s[1] > 1]
    assert running and all(s[1] == len(CAPITALS) * 100 for s in running)
    values = [s[0] for s in running]
    assert values == sorted(values) and any("step 2 of 5" in s[2] for s in running), [s[2] for s in running]
    assert (view.progress.maximum(), view.progress.value(), view.progress.text()) == (1, 0, "stopped")
    # the left panel and the Ask box followed the run step by step, not only at its end
    ledger_texts = [s[3] for s in seen]
    assert len(set(ledger_texts)) >= 3, ledger_texts
    asked = [s[4] for s in seen if s[4] is not None]
    assert asked and asked[0].prompt == "The capital of France is" and asked[0].edits_in_effect >= 1


def test_stop_on_field_rejects_bad_input_and_starts_nothing(window) -> None:
    view = window.sequence_view
    QTest.keyClicks(view.requests_path, "whatever.json")
    view.stop_on.clear()
    QTest.keyClicks(view.stop_on, "bogus=2")
    QTest.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    assert not window.runner.busy and "unknown --stop-on figure 'bogus'" in view.status.text()


def test_watch_panel_adds_and_removes_items(window) -> None:
    from auditor.record.watch import Watchlist

    panel = window.sequence_view.watch
    assert panel.isEnabled() and panel.table.rowCount() == 0
    QTest.keyClicks(panel.prompt, "The capital of France is")
    QTest.keyClicks(panel.answer, "Paris")
    QTest.mouseClick(panel.add_button, Qt.MouseButton.LeftButton)
    assert panel.table.rowCount() == 1 and panel.table.item(0, 2).text() == "Paris"
    # the model's current answer to the new item is shown beside it (computed in the worker)
    assert spin(lambda: not window.runner.busy and panel.table.item(0, 3).text() != "…", 120)
    assert panel.current["The capital of France is"] == panel.table.item(0, 3).text()
    QTest.keyClicks(panel.prompt, "The capital of France is")
    QTest.keyClicks(panel.answer, "Paris")
    QTest.mouseClick(panel.add_button, Qt.MouseButton.LeftButton)
    assert "already watched" in panel.error.text() and panel.table.rowCount() == 1
    panel.table.selectRow(0)
    QTest.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    assert panel.table.rowCount() == 0
    wl = Watchlist(window.workspace.ledger)
    assert [e["action"] for e in wl.history()] == ["add", "remove"] and wl.verify()["ok"]


def test_a_model_with_fewer_layers_than_the_family_default_opens(qtbot, tiny_checkpoint, isolated_cache,
                                                                 tmp_path) -> None:
    """The llama family's default layer is 4; a 2-layer model opens and the form offers its last layer."""
    from auditor.engine.hparams import load_hparams
    from ui import settings
    from ui.main_window import MainWindow

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    settings.settings().clear()
    settings.put(settings.WORKSPACES_DIR, str(tmp_path / "workspaces"))
    folder = tiny_checkpoint("llama")
    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    w.show()
    w.open_path(folder)
    assert spin(lambda: w.workspace is not None and not w.runner.busy, 300), w.last_error
    try:
        assert w.workspace.lm.n_layers == 2 < load_hparams("llama").layer
        assert not w.last_error and w.panel.layer.maximum() == 1 and w.panel.layer.value() == 1
    finally:
        w.workspace.close()


def test_empty_charts_say_their_threshold_and_draw_its_line_with_the_first_point(qtbot) -> None:
    """No dashed line across an empty chart's note (it sat at a meaningless height); the note says
    where the run stops, and the line comes with the data."""
    from ui.sequence_view import SequenceView

    view = SequenceView()
    qtbot.addWidget(view)
    view.stop_on.setText("retention=0.7, norm=1.5")
    lines, notes = view.threshold_lines, view.empty_notes
    assert not [k for k, line in lines.items() if line.isVisible()]  # nothing drawn on empty charts
    assert "stops below 0.7" in notes["retention"].item.textItem.toPlainText()
    assert "stops above 1.5" in notes["norm_ratio"].item.textItem.toPlainText()
    assert "stops" not in notes["ppl_ratio"].item.textItem.toPlainText()  # not a figure the run stops on
    view.add_step({"step": 1, "edits": 1, "changed": True, "retention": 1.0, "norm_ratio": 1.01, "ppl_ratio": 1.0})
    view.flush()
    assert lines["retention"].isVisible() and lines["norm_ratio"].isVisible()
    assert lines["retention"].value() == pytest.approx(0.7)
    assert not lines["ppl_ratio"].isVisible() and not notes["retention"].item.isVisible()


def test_every_chart_labels_its_y_axis_however_small_the_range(qtbot) -> None:
    """pyqtgraph draws no tick label wider than its axis: with fixed-width axes, a perplexity ratio
    between 1.00004 and 1.00012 (a run of healthy edits) and a trend near 0.002 had y axes with no
    numbers at all (the committed screenshots showed it). An axis now widens once to fit its labels."""
    from PySide6.QtGui import QImage, QPainter

    from ui.sequence_view import SequenceView

    view = SequenceView()
    qtbot.addWidget(view)
    view.resize(1000, 800)
    view.show()
    view.stop_on.setText("none")  # no threshold line stretching the ranges
    for step, (ppl, trend, norm) in enumerate(((1.00012, 0.00266, 1.002), (1.00004, 0.00188, 1.009)), start=1):
        view.add_step({"step": step, "edits": step, "changed": True, "retention": 1.0, "ppl_ratio": ppl,
                       "ppl_trend": trend, "norm_ratio": norm, "cond_ratio": 1.0 + step / 100})
    view.flush()

    def labels() -> dict[str, list[str]]:
        image = QImage(64, 64, QImage.Format.Format_ARGB32)
        painter = QPainter(image)
        try:
            return {key: [spec[2] for spec in view.plots[key].getAxis("left").generateDrawSpecs(painter)[2]]
                    for key in ("ppl_ratio", "ppl_trend", "norm_ratio", "cond_ratio", "retention")}
        finally:
            painter.end()

    labels()  # the first paint measures the labels and widens the axes that need it
    spin(lambda: False, 0.2)  # the layout that follows
    drawn = labels()
    assert all(drawn.values()), drawn
    assert any(len(t) >= 7 for t in drawn["ppl_ratio"]), drawn["ppl_ratio"]  # '1.00004': wider than before


def test_every_chart_fits_the_sequence_tab_at_1280x800(qtbot) -> None:
    """Seven charts (issue 18 added the cumulative spill) in three columns: none cut off at the right,
    none squeezed flat (the page scrolls instead)."""
    from ui.main_window import MainWindow

    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    w.tabs.setCurrentWidget(w.sequence_view)
    qtbot.wait(100)
    view = w.sequence_view
    shown = view.charts.mapTo(w, view.charts.rect().topLeft()).x() + view.charts.width()
    assert shown <= w.width(), (shown, w.width())  # the charts end inside the window
    for key, plot in view.plots.items():
        box = plot.sceneBoundingRect()
        assert box.right() <= view.charts.viewport().width() + 1, (key, box.right())
        assert plot.vb.boundingRect().height() >= 60, (key, plot.vb.boundingRect().height())


def test_a_hidden_tab_is_drawn_when_quiet_and_shows_the_new_state_when_made_current(window, tmp_path: Path) -> None:
    """Issue 21 item 3 with ui.refresh: while another tab is current, a state change marks the Edit run
    tab's charts stale, and they are redrawn once the state is quiet, at most once per change (no
    redraw per progress event on a tab nobody sees); made current, the tab shows the new state with
    nothing left to draw in the click that shows it: the new edit's point, the revert in its status
    line, the reverted model in its Ask box."""
    from auditor.model.requests import EditRequest
    from ui.entries import number

    w = window
    w.ask_view.prompt.setText("The capital of France is")
    options = w.panel.options(dry_run=False)
    assert w.start_edit(EditRequest(prompt="The capital of {} is", subject="France", target_new="Rome",
                                    target_true="Paris"),
                        {**options, "hparams": {**options["hparams"], **TINY_HP}, "allow_collapse": True})
    assert spin(lambda: not w.runner.busy and w.ask_view.last is not None and w.ask_view.last.edits_in_effect == 1,
                300), w.last_error
    first = w.last_outcome.entry.id
    assert w.last_outcome.result.status == "applied" and w.ppl_chart.point_count() == 1
    charts = (w.ppl_chart, w.den_chart)
    # the Sequence tab is current: one more edit (a sequence step), then the first edit's revert
    view = w.sequence_view
    w.tabs.setCurrentWidget(view)
    drawn = [c.refresh.redraws for c in charts]
    path = tmp_path / "one.json"
    path.write_text(json.dumps([{"prompt": "The capital of {} is", "subject": "Germany", "target_new": "Oslo"}]))
    view.hparams = TINY_HP
    QTest.keyClicks(view.requests_path, str(path))
    view.stop_on.setText("none")
    QTest.mouseClick(view.allow_collapse, Qt.MouseButton.LeftButton)
    QTest.mouseClick(view.run_button, Qt.MouseButton.LeftButton)
    assert spin(lambda: not w.runner.busy and view.final is not None, 300), w.last_error
    assert view.final["edits_applied"] == 1
    w.revert(first)
    assert spin(lambda: not w.runner.busy and w.ask_view.last.edits_in_effect == 1
                and any(r.get("reverted_by") for r in w.rows), 300), w.last_error
    assert not w.ppl_chart.isVisible()
    assert spin(lambda: not any(c.refresh.stale for c in charts), 10)  # quiet: drawn while hidden
    hidden = [c.refresh.redraws - n for c, n in zip(charts, drawn)]
    assert all(1 <= n <= 2 for n in hidden), hidden  # once per state change at most (the step, the revert)
    w.tabs.setCurrentIndex(0)  # the Edit run tab: nothing left to draw when it is shown
    assert [c.refresh.redraws - n for c, n in zip(charts, drawn)] == hidden
    edits = {r["id"] for r in w.rows if r.get("kind", "edit") == "edit" and r.get("status") == "applied"
             and number(r.get("ppl_after")) is not None}
    x, _ = w.ppl_chart.points.getData()
    assert len(edits) == 2 and set(x) == edits
    assert f"reverted by entry {w.rows[-1]['id']}" in w.result_label.text()
    assert w.ask_view.last.edits_in_effect == 1 and "1 edit in effect" in w.info["entries"].text()
