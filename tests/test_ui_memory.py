"""The window's memory settings (issue 20): the Memory budget and Offload folder fields, and the
memory plan checked before a model is opened (offscreen, a tiny random checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QSettings  # noqa: E402

from ui.app import process_until as spin  # noqa: E402


@pytest.fixture
def ui_settings(tmp_path: Path):
    from ui import settings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    settings.settings().clear()
    settings.put(settings.WORKSPACES_DIR, str(tmp_path / "workspaces"))
    settings.put(settings.DEVICE, "cpu")
    return settings


def test_the_settings_dialog_keeps_the_memory_budget_and_refuses_one_that_does_not_parse(qtbot, ui_settings,
                                                                                        tmp_path: Path) -> None:
    from ui.dialogs import SettingsDialog

    dialog = SettingsDialog()
    qtbot.addWidget(dialog)
    dialog.max_memory.setText("cpu=lots")
    dialog.accept()
    assert dialog.result() == 0 and "Memory budget" in dialog.memory_error.text()
    dialog.max_memory.setText("cpu=2MiB")
    dialog.offload.setText(str(tmp_path / "off"))
    dialog.accept()
    assert dialog.result() == 1 and dialog.memory_error.text() == ""
    dialog.save()
    assert ui_settings.memory() == {"max_memory": {"cpu": 2 << 20}, "offload_folder": tmp_path / "off"}
    again = SettingsDialog()
    qtbot.addWidget(again)
    assert again.max_memory.text() == "cpu=2MiB" and again.offload.text() == str(tmp_path / "off")


def test_a_model_that_will_not_fit_is_refused_with_the_plan_and_opens_with_an_offload_folder(
        qtbot, ui_settings, tiny_checkpoint, isolated_cache: Path, tmp_path: Path) -> None:
    from auditor.model.offload import is_offloaded
    from ui.main_window import MainWindow

    folder = tiny_checkpoint("llama")
    ui_settings.put(ui_settings.MAX_MEMORY, "cpu=1MiB")
    w = MainWindow(restore_last=False)
    qtbot.addWidget(w)
    assert w.open_path(folder) is False
    assert "will not fit" in w.last_error and "The memory plan" in w.last_error
    assert "--offload-folder DIR" in w.last_error and not (tmp_path / "workspaces").exists()
    ui_settings.put(ui_settings.OFFLOAD_FOLDER, str(folder))  # inside the checkpoint: refused
    assert w.open_path(folder) is False and "Offload folder" in w.last_error
    ui_settings.put(ui_settings.OFFLOAD_FOLDER, str(tmp_path / "off"))
    assert w.open_path(folder) is True
    assert spin(lambda: w.workspace is not None and not w.runner.busy, 300), w.last_error
    lm = w.workspace.lm
    assert is_offloaded(lm.model, lm.spec.weight_name(1))  # (its store: the checkpoint itself, read in place)
    w.close()
