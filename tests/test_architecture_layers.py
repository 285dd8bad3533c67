"""The shape of the code base: ``auditor``'s layers, no import circles, the module table, the old paths.

- import-linter runs the contracts of ``pyproject.toml`` (each layer of ``auditor`` imports only
  those below it; ``auditor`` never imports ``ui`` or Qt), and the same contracts are shown to break
  on a small package that breaks them, so the check cannot pass by checking nothing;
- grimp's import graph of ``auditor`` and ``ui`` has no circle (strongly connected component);
- docs/ARCHITECTURE.md has one line per module, and names no module that does not exist;
- every name the flat modules of release 0.1 defined still imports from its old path, warns with
  the new home, and is the same object; the product itself never uses an old path.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
import warnings
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

import auditor
from auditor import _moved

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
OLD_NAMES = json.loads((Path(__file__).parent / "data" / "moved_modules_0.1.json").read_text(encoding="utf-8"))


def contracts_on(root: Path, source: str, rename: dict[str, str]) -> Path:
    """pyproject.toml's import-linter section, with its packages renamed, written under ``root``."""
    section = source[source.index("[tool.importlinter]"):]
    for old, new in rename.items():
        section = re.sub(rf'"{old}([".])', rf'"{new}\1', section)
    path = root / "importlinter.toml"
    path.write_text(section, encoding="utf-8")
    return path


def test_the_layer_contracts_hold() -> None:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    root = Path(auditor.__file__).parent
    subpackages = sorted(p.name for p in root.iterdir() if (p / "__init__.py").exists())
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem not in ("__init__", "_moved"))
    # every sub-package and top-level module of auditor is a layer, so a new one cannot escape the rule
    assert sorted(name.split(".")[1] for name in layers) == sorted(subpackages + modules)
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("breach", ["upward", "ui"])
def test_the_same_contracts_break_on_a_package_that_breaks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breach: str
) -> None:
    layers = ["cli", "run", "record", "measure", "engine", "model"]
    files = {"fakeaud/__init__.py": "", "fakeaud/base.py": "", "fakeui/__init__.py": "", "fakeui/app.py": ""}
    for layer in layers:
        files[f"fakeaud/{layer}/__init__.py"] = ""
        files[f"fakeaud/{layer}/mod.py"] = "import fakeaud.base\n"
    # a function-level import counts like any other
    files["fakeaud/model/mod.py"] = ("def f():\n    import fakeaud.engine.mod\n" if breach == "upward"
                                     else "def f():\n    import fakeui.app\n")
    _write_package(tmp_path, files)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = contracts_on(tmp_path, PYPROJECT.read_text(encoding="utf-8"), {"auditor": "fakeaud", "ui": "fakeui"})
    assert lint_imports(config_filename=str(config), no_cache=True, no_logo=True) == 1


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles_in_auditor_or_ui() -> None:
    graph = grimp.build_graph("auditor", "ui", exclude_type_checking_imports=True, cache_dir=None)
    assert len(graph.modules) > 60
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_package(tmp_path, {
        "circ/__init__.py": "", "circ/a.py": "from circ import b\n", "circ/b.py": "def f():\n    import circ.c\n",
        "circ/c.py": "import circ.a\n", "circ/d.py": "import circ.a\n",
        "circ/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import circ.d\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circ", exclude_type_checking_imports=True, cache_dir=None)
    assert circles(graph) == [["circ.a", "circ.b", "circ.c"]]


def test_the_module_table_has_one_line_per_module() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `((?:auditor|ui)/[\w/]+\.py)` \|", text, flags=re.M)
    modules = {str(p.relative_to(ROOT)) for top in ("auditor", "ui") for p in (ROOT / top).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "cli"}
    assert len(rows) == len(set(rows)), "a module has two lines"
    assert set(rows) == modules - {"ui/__init__.py"}


def _import_fresh(name: str):
    for key in [k for k in sys.modules if k == name]:
        del sys.modules[key]
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_every_old_path_still_imports_and_warns(old: str) -> None:
    assert old in _moved.MOVED or old == "cli"
    if old == "cli":  # now the package: its re-exports, and the rest with a warning
        module = importlib.import_module("auditor.cli")
        for name in OLD_NAMES[old]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                assert getattr(module, name) is not None
        return
    with pytest.warns(DeprecationWarning, match=re.escape(f"auditor.{old} moved to {_moved.new_home(old)}")) as caught:
        module = _import_fresh(f"auditor.{old}")
    assert {w.filename for w in caught} == {__file__}  # attributed to the importer, not to importlib
    homes = [importlib.import_module(f"auditor.{h}") for h in _moved.MOVED[old]]
    for name in OLD_NAMES[old]:
        if name == "__all__":
            assert set(module.__all__) >= set(vars(homes[0])["__all__"])
            continue
        if name == "__getattr__":  # the old module's names made on demand (``ERRORS``)
            assert "__getattr__" in vars(homes[0])
            continue
        value = getattr(module, name)
        if (old, name) in _moved.RENAMED:
            assert value is _moved.renamed(old, name) is not None
            continue
        assert any(getattr(home, name, None) is value for home in homes), f"auditor.{old}.{name}"


def test_the_old_paths_give_the_same_objects_as_the_new() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from auditor.batch import edit_batch
        from auditor.cli import _import_command_module
        from auditor.edit import CollapseGuard, Editor, EditFailed, Progress
        from auditor.methods import get_method
        from auditor.rome import compute_rome
        from auditor.watch import Watchlist
    from auditor.base import Progress as progress
    from auditor.cli.parser import _import_command_module as import_command_module
    from auditor.engine.registry import get_method as registry_get_method
    from auditor.engine.rome import compute_rome as rome_compute
    from auditor.measure.guard import CollapseGuard as guard
    from auditor.record.watchlist import Watchlist as watchlist
    from auditor.run.batch import edit_batch as run_edit_batch
    from auditor.run.edit import Editor as editor
    from auditor.run.outcome import EditFailed as edit_failed

    assert (Editor, Progress, CollapseGuard, EditFailed) == (editor, progress, guard, edit_failed)
    assert (edit_batch, get_method, compute_rome, Watchlist) == (run_edit_batch, registry_get_method,
                                                                  rome_compute, watchlist)
    assert _import_command_module is import_command_module


def test_a_name_the_old_module_never_had_is_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module("auditor.rome")
    with pytest.raises(AttributeError, match="auditor.rome.*no_such_name"):
        module.no_such_name  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("auditor.no_such_module")


def _old_path_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + ([f"auditor.{a.name}" for a in node.names] if node.module == "auditor" else [])
        found += [n for n in names if n.startswith("auditor.") and n.split(".")[1] in _moved.MOVED]
    return found


def test_the_product_and_its_tests_never_use_an_old_path() -> None:
    files = [p for top in ("auditor", "ui", "bench", "tests", "scripts", "packaging") for p in (ROOT / top).rglob("*.py")
             if p != Path(__file__)]
    assert len(files) > 100
    offenders = {str(p.relative_to(ROOT)): _old_path_imports(p) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}
    # and the check sees one
    sample = ROOT / "tests" / "test_architecture_layers.py"
    assert "auditor.rome" in _old_path_imports(sample)
