"""``auditor`` is the whole product without a window: it never imports Qt or ``ui``.

Two checks, in the spirit of napari's import-linter contracts: a static one over every import
statement in ``auditor/`` (including imports inside functions), and a dynamic one that imports
every ``auditor`` module in a fresh interpreter and inspects ``sys.modules``. The product must
also never read the shared data folder of the development machine at run time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import auditor

PACKAGE = Path(auditor.__file__).resolve().parent
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "ui", "pytestqt")


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_no_auditor_module_has_a_qt_or_ui_import_statement() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 6
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in imported_names(p) if is_forbidden(n))
                 for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_static_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from PySide6 import QtCore\n    import ui.app\n")
    assert sorted(n for n in imported_names(bad) if is_forbidden(n)) == ["PySide6", "ui.app"]


IMPORT_ALL = """
import importlib, json, pkgutil, sys
import auditor
names = sorted(m.name for m in pkgutil.walk_packages(auditor.__path__, "auditor.")
               if not m.name.endswith(".__main__"))  # runs the command line
for name in names:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(json.dumps({"imported": names, "forbidden": bad}))
"""


def test_importing_every_auditor_module_loads_no_qt_and_no_ui() -> None:
    code = f"FORBIDDEN = {FORBIDDEN!r}\n" + IMPORT_ALL
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "auditor.cli" in result["imported"] and "auditor.model.checkpoint" in result["imported"]
    assert result["forbidden"] == []


def test_the_product_never_reads_the_shared_data_folder() -> None:
    repo = PACKAGE.parent
    for path in [*PACKAGE.rglob("*.py"), *(repo / "ui").rglob("*.py")]:
        assert "/work/shared" not in path.read_text(encoding="utf-8"), path
