"""What the window remembers between runs (QSettings): paths, device, thresholds, layout.

Keys are named once here so the window, the dialogs and the tests agree on them. The
organisation and application names are set by :func:`ui.app.make_app`; tests point
QSettings at a temporary folder with ``QSettings.setPath`` so they never touch the
user's own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings

ORG = "edit-auditor"
APP = "Edit Auditor"

LAST_WORKSPACE = "paths/last_workspace"
LAST_OPEN_DIR = "paths/last_open_dir"
WORKSPACES_DIR = "paths/workspaces_dir"
EXPORT_DIR = "paths/export_dir"
DEVICE = "model/device"
DTYPE = "model/dtype"
MAX_MEMORY = "model/max_memory"  # accelerate's budget of weights per device, as --max-memory ("" = none)
OFFLOAD_FOLDER = "model/offload_folder"  # where weights beyond the budget go, as --offload-folder ("" = none)
MIN_DENOMINATOR = "guard/min_denominator"  # |u.k| below this flags an edit (0 = engine default)
MAX_PPL_RATIO = "guard/max_ppl_ratio"  # ppl_after / ppl_before above this flags an edit (0 = default)
ANSWER_TOKENS = "edit/answer_tokens"
GEOMETRY = "window/geometry"
STATE = "window/state"
SPLITTER = "window/splitter"
LAYER = "edit/layer"  # the edit panel's layer, kept for the workspace named in LAYER_WORKSPACE
LAYER_WORKSPACE = "edit/layer_workspace"

DEFAULTS: dict[str, Any] = {
    DEVICE: "auto",
    DTYPE: "float32",
    MIN_DENOMINATOR: 0.0,
    MAX_PPL_RATIO: 0.0,
    ANSWER_TOKENS: 6,
}


def settings() -> QSettings:
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


def get(key: str, default: Any = None) -> Any:
    default = DEFAULTS.get(key, default)
    value = settings().value(key, default)
    if value is None:
        return default
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes")
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            return default
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            return default
    return value


def put(key: str, value: Any) -> None:
    s = settings()
    s.setValue(key, value)
    s.sync()


def memory() -> dict[str, Any]:
    """``max_memory`` / ``offload_folder`` for loads, from the Memory budget and Offload folder
    settings (as ``--max-memory`` and ``--offload-folder``); ValueError for a budget that does
    not parse (the settings dialog refuses one, but the file may have been edited)."""
    from auditor.model.memory_plan import parse_max_memory

    budget = str(get(MAX_MEMORY) or "").strip()
    folder = str(get(OFFLOAD_FOLDER) or "").strip()
    return {"max_memory": parse_max_memory(budget) if budget else None,
            "offload_folder": Path(folder).expanduser() if folder else None}


def workspaces_dir() -> Path:
    """Where workspaces opened from a bare model (or the demo) are created."""
    stored = get(WORKSPACES_DIR)
    if stored:
        return Path(stored)
    import platformdirs

    return Path(platformdirs.user_data_dir("edit-auditor")) / "workspaces"


def guard(base=None):
    """The collapse guard with the user's thresholds on top of ``base`` (default: the engine's
    defaults; the window passes the model's calibrated guard); 0 = keep ``base``'s value."""
    import dataclasses

    from auditor.run.edit import CollapseGuard

    return dataclasses.replace(base or CollapseGuard(), **guard_overrides())


def guard_overrides() -> dict[str, float]:
    """The guard thresholds the user set in Settings (those left at 0 are not overridden)."""
    out = {}
    if get(MIN_DENOMINATOR) > 0:
        out["min_denominator"] = get(MIN_DENOMINATOR)
    if get(MAX_PPL_RATIO) > 0:
        out["max_ppl_ratio"] = get(MAX_PPL_RATIO)
    return out
