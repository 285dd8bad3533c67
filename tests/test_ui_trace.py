"""The Trace view through its real widgets on the demo model (pytest-qt, offscreen).

One window on the demo model is shared by the module: a trace computed in the worker thread
(progress reported, three heatmaps of the right shape, the edit's layer marked), a click on the MLP
map that sets the edit panel's layer, the PNG written from the window, a cancelled trace and a
refused one. Waits are on GUI-thread state, never on signals emitted from the worker thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from ui.app import process_until as spin  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 900


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    from ui import settings
    from ui.main_window import MainWindow

    root = tmp_path_factory.mktemp("trace-ui")
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(root / "settings"))
    settings.settings().clear()
    settings.put(settings.WORKSPACES_DIR, str(root / "workspaces"))
    w = MainWindow(restore_last=False)
    w.resize(1400, 900)
    w.show()
    w.open_path("demo")
    assert spin(lambda: w.workspace is not None and not w.runner.busy, TIMEOUT), w.last_error
    w.tabs.setCurrentWidget(w.trace_view)
    yield w
    if w.runner.busy:
        w.runner.cancel()
        w.runner.wait()
    w.close()
    w.workspace.close()
    w.deleteLater()


@pytest.fixture(scope="module")
def traced(window):
    """One trace run through the widgets; the progress events seen on the way."""
    view = window.trace_view
    for field, text in ((view.prompt, "The capital of {} is"), (view.subject, "France")):
        field.clear()
        QTest.keyClicks(field, text)
    view.samples.setValue(2)
    seen: list = []
    window.runner.progress.connect(seen.append)  # re-emitted on the GUI thread
    QTest.mouseClick(view.trace_button, Qt.MouseButton.LeftButton)
    started = window.runner.busy and window.runner.name == "trace" and view.cancel_button.isEnabled()
    assert spin(lambda: not window.runner.busy, TIMEOUT)
    window.runner.progress.disconnect(seen.append)
    assert not window.last_error, window.last_error
    return {"started": started, "progress": seen, "thread": window.runner.last_thread}


def test_trace_runs_in_the_worker_and_draws_three_heatmaps(window, traced):
    import threading

    view = window.trace_view
    assert traced["started"] and traced["thread"] is not None
    assert traced["thread"] != threading.main_thread().ident
    steps = [p for p in traced["progress"] if getattr(p, "phase", None) == "trace"]
    assert steps and steps[-1].step == steps[-1].total
    assert set(view.traces) == {"hidden", "mlp", "attn"}
    for kind, image in view.images.items():
        assert image.image.shape == (30, 5)  # layers x tokens of "The capital of France is"
    assert "Paris" in view.summary.text()
    assert view.markers["mlp"].isVisible() and view.markers["mlp"].value() == window.panel.layer.value() + 0.5


def test_clicking_the_mlp_map_sets_the_edit_layer(window, traced, qtbot):
    view = window.trace_view
    image = view.images["mlp"]
    target = 12 if window.panel.layer.value() != 12 else 13
    scene = image.mapToScene(QPointF(target + 0.5, 3.5))  # (layer, token) cell centre
    QTest.mouseClick(view.plots.viewport(), Qt.MouseButton.LeftButton, pos=view.plots.mapFromScene(scene))
    qtbot.waitUntil(lambda: window.panel.layer.value() == target, timeout=3000)
    assert view.markers["hidden"].value() == target + 0.5


def test_window_writes_the_heatmaps_png(window, traced, tmp_path):
    out = Path(window.trace_view.save_png(str(tmp_path / "trace.png")))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_cancel_and_bad_input(window, traced):
    view = window.trace_view
    before = view.traces
    view.prompt.setText("The capital of France is")
    view.subject.setText("Germany")  # not in the prompt
    QTest.mouseClick(view.trace_button, Qt.MouseButton.LeftButton)
    assert spin(lambda: not window.runner.busy, TIMEOUT)
    assert "does not occur" in view.summary.text() and view.traces is before
    window.last_error = None
    view.subject.setText("France")
    view.samples.setValue(20)
    QTest.mouseClick(view.trace_button, Qt.MouseButton.LeftButton)
    assert window.runner.busy and view.cancel_button.isEnabled()
    QTest.mouseClick(view.cancel_button, Qt.MouseButton.LeftButton)
    assert spin(lambda: not window.runner.busy, TIMEOUT)
    assert "cancelled" in view.summary.text() and view.traces is before
    assert view.trace_button.isEnabled()


def test_a_family_without_a_file_takes_the_suggested_layer(window, tmp_path) -> None:
    """No hyper-parameter file for the model's family: the form shows no family layer, the window
    traces the known facts in the worker and the suggestion becomes the layer (and its Reset value)."""
    from auditor.measure.layer_suggestion import form_defaults

    ws = window.workspace
    ws.editor.hparams_file = tmp_path / "llama.json"  # the llama family, as if it had no file
    try:
        defaults, has_file = form_defaults(ws.lm, hparams_file=ws.editor.hparams_file)
        assert not has_file and "layer" not in defaults
        window.panel.layer.setValue(0)
        window.set_workspace(ws, window.current_fingerprint)
        assert window.layer_needs_suggestion
        assert spin(lambda: window.runner.name == "suggest", 60)  # started by opening the model
        assert spin(lambda: not window.runner.busy, TIMEOUT)
        assert not window.last_error, window.last_error
        from auditor.measure.layer_suggestion import suggest_layer

        suggestion = suggest_layer(ws.lm, fingerprint=ws.editor.fingerprint())
        assert suggestion.cached  # the one the window computed (or found in the cache)
        assert not window.layer_needs_suggestion
        layer = window.panel.layer.value()
        assert layer == suggestion.layer and f"layer {layer}" in window.trace_view.suggestion_label.text()
        window.panel.layer.setValue(0)
        window.panel.reset_hparams()
        assert window.panel.layer.value() == layer
    finally:
        ws.editor.hparams_file = None


def test_bfloat16_checkbox_traces_in_bfloat16(window, traced) -> None:
    view = window.trace_view
    float32 = view.traces
    view.prompt.setText("The capital of {} is")
    view.subject.setText("France")
    view.samples.setValue(2)
    view.bf16.setChecked(True)
    try:
        QTest.mouseClick(view.trace_button, Qt.MouseButton.LeftButton)
        assert spin(lambda: not window.runner.busy, TIMEOUT)
        assert not window.last_error, window.last_error
        assert view.traces is not float32 and {t.precision for t in view.traces.values()} == {"bfloat16"}
        assert "bfloat16 products" in view.summary.text()
        assert all(t.precision == "float32" for t in float32.values())
    finally:
        view.bf16.setChecked(False)
