"""Issue 11, item 7: the core command line never imports Qt or ``ui``.

``gui`` is an optional command registered through the ``edit_auditor.commands`` entry-point group;
the window is imported only when ``gui`` runs. The decisive test runs the real ``edit-auditor``
in a fresh interpreter where every import of PySide6 fails the way it fails on a headless server
without libEGL (an ``ImportError`` raised by a meta-path finder installed from ``sitecustomize``),
and where every attempt to import Qt is written to a file.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import auditor
from auditor.cli import COMMAND_MODULES, ENTRY_POINT_GROUP, build_parser

PACKAGE = Path(auditor.__file__).resolve().parent
BLOCKED = ("PySide6", "shiboken6", "pyqtgraph")

SITECUSTOMIZE = '''
import os, sys

class _NoQt:
    """Every import of Qt fails as on a machine without libEGL; each attempt is logged."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            with open(os.environ["QT_ATTEMPTS"], "a") as f:
                f.write(name + "\\n")
            raise ImportError("libEGL.so.1: cannot open shared object file: No such file or directory")
        return None

sys.meta_path.insert(0, _NoQt())
'''


@pytest.fixture(scope="module")
def no_qt_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no_qt")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["QT_ATTEMPTS"] = str(site / "attempts.txt")
    env["QT_QPA_PLATFORM"] = "offscreen"  # past the xcb library check (tests/test_system_libs.py)
    return env


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    Path(env["QT_ATTEMPTS"]).write_text("")
    script = Path(sys.executable).with_name("edit-auditor")  # the installed console script
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "auditor.cli"]
    return subprocess.run([*command, *argv], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace folder whose ledger has two entries (no model needed to verify it)."""
    from auditor.record.ledger import Ledger

    ws = tmp_path_factory.mktemp("ws")
    with Ledger.create(ws / "ledger.db", {"base_fingerprint": "sha256:" + "0" * 64, "dtype": "float32"}) as led:
        led.append({"kind": "edit", "status": "dry-run", "subject": "Paris", "target_new": "Rome"})
        led.append({"kind": "edit", "status": "rejected", "subject": "Berlin", "target_new": "Madrid"})
    return ws


def test_the_blocker_really_blocks_qt(no_qt_env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-c", "import PySide6.QtCore"], env=no_qt_env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "libEGL" in proc.stderr
    assert Path(no_qt_env["QT_ATTEMPTS"]).read_text().split() == ["PySide6"]


def test_ledger_verify_runs_without_qt_and_never_tries_to_import_it(no_qt_env: dict[str, str],
                                                                    small_ledger: Path) -> None:
    proc = run_cli(no_qt_env, "ledger", "verify", "--workspace", str(small_ledger))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: 2 entries")
    assert "Traceback" not in proc.stderr
    assert Path(no_qt_env["QT_ATTEMPTS"]).read_text() == ""


def test_help_still_lists_gui_without_qt(no_qt_env: dict[str, str]) -> None:
    proc = run_cli(no_qt_env, "--help")
    assert proc.returncode == 0 and " gui " in proc.stdout and "ledger" in proc.stdout
    assert Path(no_qt_env["QT_ATTEMPTS"]).read_text() == ""


def test_gui_without_qt_is_a_one_line_error(no_qt_env: dict[str, str]) -> None:
    proc = run_cli(no_qt_env, "gui", "demo")
    assert proc.returncode == 2
    assert proc.stderr.startswith("edit-auditor: error: the window cannot start: Qt (PySide6)")
    assert proc.stderr.count("\n") == 1 and "libEGL" in proc.stderr and "Traceback" not in proc.stderr
    assert "PySide6" in Path(no_qt_env["QT_ATTEMPTS"]).read_text()  # only `gui` itself tried


def test_gui_is_registered_through_the_entry_point_group_not_by_the_core() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert eps.get("gui") == "ui.cli_gui"
    assert not any(name.split(".")[0] == "ui" for name in COMMAND_MODULES)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"gui", "ledger", "edit", "export", "info"} <= set(sub.choices)


def string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def names_a_forbidden_module(text: str) -> bool:
    """A string that is a dotted module name in ``ui`` or Qt (what importlib.import_module would take)."""
    head = text.split(".")[0]
    return text.replace(".", "").replace("_", "").isalnum() and head in ("ui", *BLOCKED)


def test_no_auditor_module_names_a_ui_or_qt_module_in_a_string() -> None:
    """Closes the hole the old ``COMMAND_MODULES = (..., "ui.cli_gui")`` went through: the AST import
    check of test_foundation_imports.py cannot see ``importlib.import_module("ui.x")``."""
    offenders = {str(p.relative_to(PACKAGE)): sorted(s for s in string_constants(p) if names_a_forbidden_module(s))
                 for p in sorted(PACKAGE.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert names_a_forbidden_module("ui.cli_gui") and names_a_forbidden_module("PySide6")
    assert not names_a_forbidden_module("ui is the window") and not names_a_forbidden_module("auditor.cli.edit")
