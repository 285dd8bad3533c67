"""Issue 11, item 9: before a model is open the hyper-parameter fields show nothing (they used to
show 0, 1 and 0.0001, values no family uses), and the first model fills in its family's defaults."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from auditor.engine.hparams import load_hparams  # noqa: E402


def test_hparam_fields_are_empty_until_a_model_gives_defaults(qtbot) -> None:
    from ui.edit_panel import EditPanel

    panel = EditPanel()
    qtbot.addWidget(panel)
    fields = [panel.layer, *panel.hp.values()]
    assert all(w.text().strip() == "" and not w.isEnabled() for w in fields)
    assert not panel.mom2.isEnabled() and not panel.reset_button.isEnabled()
    assert not panel.apply_button.isEnabled()

    defaults = load_hparams("llama").to_dict()
    panel.set_model(30, defaults)
    assert panel.layer.value() == defaults["layer"] and panel.layer.text() == str(defaults["layer"])
    for name, w in panel.hp.items():
        assert w.isEnabled() and w.value() == defaults[name] and w.text().strip() != ""
    panel.hp["kl_factor"].setValue(0.0)  # a real value at the minimum is shown, not blanked
    assert panel.hp["kl_factor"].text() == "0.0000"


def test_opening_a_model_shows_its_stages_in_the_window(qtbot, tmp_path, demo_dir) -> None:
    """The panel's bar names what the open job is doing (a first-run conversion reports its four
    steps the same way: checkpoint.IMPORT_STEPS), then returns to idle with the defaults filled in."""
    from PySide6.QtCore import QSettings

    from ui import settings
    from ui.main_window import MainWindow

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    settings.settings().clear()
    settings.put(settings.WORKSPACES_DIR, str(tmp_path / "workspaces"))
    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    seen: list = []
    w.runner.progress.connect(lambda p: seen.append((p, w.panel.progress.text(), w.welcome_status.text())))
    assert w.panel.layer.text().strip() == ""
    w.open_path(str(demo_dir))
    qtbot.waitUntil(lambda: w.workspace is not None and not w.runner.busy, timeout=600_000)
    loads = [(p, bar, page) for p, bar, page in seen if isinstance(p, tuple) and p[0] == "load"]
    assert loads, seen
    (_, step, total, message), bar, page = loads[-1]  # (this slot runs after the window's)
    assert (step, total) == (1, 1) and message == f"loading {demo_dir.name}"
    assert bar == page == f"loading {demo_dir.name} (1/1)"  # what the bar and the welcome page showed
    assert w.welcome_status.text() == ""
    assert w.panel.progress.text() == "idle"
    assert w.panel.layer.text() == str(load_hparams("llama").layer)
    w.workspace.close()
