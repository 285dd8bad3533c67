"""The flat module paths of release 0.1 (``auditor.rome``, ``auditor.edit``, ``auditor.cli_edit``, ...),
kept importable for one release after ``auditor/`` became sub-packages.

``import auditor.rome`` (or ``from auditor.edit import Editor``) still works: a meta-path finder
answers the old name with a small module whose attributes are looked up, in order, in the new
modules that now hold what the old one defined. The import warns once with a DeprecationWarning
that names the new home, attributed to the code that wrote the old import, so a user's script
sees it and the test suite (``filterwarnings`` in pyproject.toml) turns it into an error for the
product's own code, which must never use an old path.

To be removed in release 0.3; docs/ARCHITECTURE.md lists where every module went.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

# old module (under ``auditor.``) -> the new modules holding its names, the main one first
MOVED: dict[str, tuple[str, ...]] = {
    "architectures": ("model.architectures",),
    "checkpoint": ("model.checkpoint",),
    "config_check": ("model.config_check",),
    "corpus": ("model.corpus",),
    "requests": ("model.requests",),
    "resources": ("model.resources",),
    "hparams": ("engine.hparams",),
    "deltas": ("engine.deltas",),
    "suffix_forward": ("engine.suffix_forward",),
    "rome": ("engine.rome",),
    "stats": ("engine.stats",),
    "methods": ("engine.methods", "engine.registry"),
    "memit": ("engine.memit",),
    "alphaedit": ("engine.alphaedit",),
    "metrics": ("measure.metrics",),
    "perplexity": ("measure.perplexity", "model.corpus"),
    "trace": ("measure.trace", "base"),
    "trace_plot": ("measure.trace_plot",),
    "layer_suggestion": ("measure.layer_suggestion", "base"),
    "anchor": ("record.anchor",),
    "ledger": ("record.ledger", "record.hashing", "record.watchlist"),
    "watch": ("record.watch", "record.watchlist", "record.hashing"),
    "export": ("record.export", "record.hashing"),
    "edit": ("run.edit", "run.outcome", "measure.guard", "base"),
    "batch": ("run.batch", "run.outcome", "measure.guard", "engine.registry", "base"),
    "workspace": ("run.workspace", "record.ledger", "record.hashing"),
    "reviewed": ("run.reviewed",),
    "monitor": ("run.monitor",),
    "sequence": ("run.sequence",),
    "report": ("run.report",),
    "cli_batch": ("cli.batch",),
    "cli_edit": ("cli.edit", "cli.common"),
    "cli_ledger": ("cli.ledger", "cli.common"),
    "cli_reviewed": ("cli.reviewed", "cli.common"),
    "cli_sequence": ("cli.sequence", "cli.common"),
    "cli_trace": ("cli.trace", "cli.common"),
    "cli_watch": ("cli.watch", "cli.common"),
}
# names an old module had under another name, or took from a module none of its homes imports:
# (old module, name) -> "module" or "module:attribute" under ``auditor.``
RENAMED: dict[tuple[str, str], str] = {
    ("batch", "metrics"): "measure.metrics",
    ("watch", "Ledger"): "record.ledger:Ledger",
    ("watch", "_operator"): "record.hashing:operator",
    ("watch", "_utc_now"): "record.hashing:utc_now",
    ("workspace", "Delta"): "engine.deltas:Delta",
    ("reviewed", "COPIED"): "run.reviewed:COPIED",
    ("export", "_alive"): "files:_alive",
    ("export", "_remove_stale_partials"): "files:remove_stale_partials",
    ("export", "_inside"): "files:_inside",
    ("export", "tempfile"): "files:tempfile",
    ("export", "fsync_dir"): "files:fsync_dir",
}
# ``auditor.cli`` is itself a package now: ``auditor/cli/__init__.py`` answers the old module's
# other names from these (see its ``__getattr__``).
CLI_MODULES: tuple[str, ...] = ("cli.parser", "cli.common", "cli.model")


def new_home(old: str) -> str:
    """``"rome"`` -> ``"auditor.engine.rome"``: where the old ``auditor.<old>`` now lives."""
    return f"auditor.{MOVED[old][0]}"


def find(homes: tuple[str, ...], name: str, where: str) -> tuple[str, object]:
    """``(home, value)``: the first of ``homes`` (paths under ``auditor.``) that defines ``name``."""
    modules = [(home, importlib.import_module(f"auditor.{home}")) for home in homes]
    for home, module in modules:
        if name in vars(module):
            return home, vars(module)[name]
    for home, module in modules:  # a name the module makes on demand (its own ``__getattr__``)
        try:
            return home, getattr(module, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {where!r} has no attribute {name!r}")


def renamed(old: str, name: str):
    """The object :data:`RENAMED` gives for ``auditor.<old>.<name>``."""
    path, _, attribute = RENAMED[old, name].partition(":")
    target = importlib.import_module(f"auditor.{path}")
    return getattr(target, attribute) if attribute else target


def _importer_frame(skip: tuple[str, ...]):
    """The frame of the code that wrote the import (the first one outside importlib, this file and ``skip``)."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if (filename != __file__ and filename not in skip and "importlib" not in filename
                and not filename.startswith("<frozen")):
            return frame
        frame = frame.f_back
    return None


def warn_moved(old_path: str, new_path: str, skip: tuple[str, ...] = ()) -> None:
    """A DeprecationWarning attributed to the code that used ``old_path`` (frames in ``skip`` passed over)."""
    message = f"{old_path} moved to {new_path}; the old path goes in release 0.3"
    frame = _importer_frame(skip)
    if frame is None:
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return
    module_globals = frame.f_globals
    warnings.warn_explicit(
        message,
        DeprecationWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=module_globals.get("__name__", "<unknown>"),
        registry=module_globals.setdefault("__warningregistry__", {}),
    )


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, old: str) -> None:
        self.old = old

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        homes = MOVED[self.old]
        where = module.__name__
        module.__doc__ = f"Moved to {new_home(self.old)} (deprecated alias, removed in release 0.3)."

        def __getattr__(name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            if (self.old, name) in RENAMED:
                return renamed(self.old, name)
            return find(homes, name, where)[1]

        def __dir__():
            return sorted({n for home in homes for n in vars(importlib.import_module(f"auditor.{home}"))})

        primary = importlib.import_module(new_home(self.old))
        if hasattr(primary, "__all__"):
            module.__all__ = list(primary.__all__)
        module.__getattr__ = __getattr__
        module.__dir__ = __dir__
        warn_moved(where, new_home(self.old))


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds ``auditor.<old>`` for the old flat paths in :data:`MOVED`, and nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix != "auditor" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(old))


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
