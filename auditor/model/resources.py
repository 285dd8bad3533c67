"""The files the product ships: hyper-parameters, reference texts, demo requests, icons.

The source of truth is the repository's top-level ``resources/`` folder. A wheel carries a copy
inside the package, as ``auditor/_resources/`` (``setup.py`` copies it at build time), found with
:mod:`importlib.resources`; a source checkout, an editable install or the PyInstaller bundle reads
``resources/`` beside the package. A missing file raises :class:`ResourceMissing` naming the file
and the fix: never a silent default (a wheel without its hyper-parameters once edited layer 4 of
every model).

Example::

    resource_path("hparams/llama.json")   # Path to the file, or ResourceMissing
"""

from __future__ import annotations

from importlib import resources as _importlib_resources
from pathlib import Path

from auditor.base import AuditorError

PACKAGED = "_resources"  # the folder inside the installed package
MARKER = "hparams"  # a folder every complete copy has


class ResourceMissing(AuditorError, RuntimeError):
    """A shipped file is not where the installation should have put it; one-line message."""


def candidates() -> list[Path]:
    """Where the resources may be, in order: inside the installed package, then beside it."""
    package = Path(str(_importlib_resources.files("auditor")))
    return [package / PACKAGED, package.resolve().parent / "resources"]


def resources_dir(*, strict: bool = True) -> Path:
    """The first complete copy of the resources (with ``strict=False``, the best guess even when
    none is complete, for module constants that must not fail at import)."""
    found = [c for c in candidates() if (c / MARKER).is_dir()]
    if found:
        return found[0]
    if strict:
        raise ResourceMissing(
            f"the shipped resources are missing (looked in {', '.join(map(str, candidates()))}); "
            "reinstall edit-auditor from a wheel built with `pip wheel .` or run from a source checkout"
        )
    return candidates()[-1]


def resource_path(relative: str) -> Path:
    """The shipped file ``relative`` (e.g. ``"text/enwiki_2016.txt"``); ResourceMissing if absent."""
    path = resources_dir() / relative
    if not path.is_file():
        raise ResourceMissing(
            f"{relative} is missing from the installed resources ({path.parent}); reinstall edit-auditor"
        )
    return path
