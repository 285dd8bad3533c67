"""The editing methods by name: ``rome``, ``memit``, ``alphaedit``.

The interface (``methods.EditMethod``) knows no implementation; this module is the one place that
lists them, so adding a method means one line here and one hyper-parameter file per family.
"""

from __future__ import annotations

from auditor.engine.alphaedit import AlphaEditHParams, AlphaEditMethod
from auditor.engine.hparams import HParamsError, RomeHParams
from auditor.engine.memit import MemitHParams, MemitMethod
from auditor.engine.methods import EditMethod, RomeMethod

_METHODS: dict[str, tuple[type, type]] = {  # name -> (implementation, hyper-parameter dataclass)
    "rome": (RomeMethod, RomeHParams),
    "memit": (MemitMethod, MemitHParams),
    "alphaedit": (AlphaEditMethod, AlphaEditHParams),
}
METHOD_NAMES = tuple(_METHODS)


def get_method(name: str) -> EditMethod:
    """A new instance of the method ``name``; HParamsError names the available ones."""
    if name not in _METHODS:
        raise HParamsError(f"unknown method {name!r}; available: {', '.join(_METHODS)}")
    return _METHODS[name][0]()


def hparams_class(method: str) -> type:
    """The hyper-parameter dataclass of ``method`` (RomeHParams for rome and unknown names)."""
    return _METHODS.get(method, _METHODS["rome"])[1]
