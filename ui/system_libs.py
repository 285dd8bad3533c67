"""The system libraries Qt's xcb platform plugin needs, checked before the window starts.

A fresh Debian or Ubuntu has PySide6's wheels but not three X11 helper libraries its ``xcb``
plugin loads; without them Qt aborts with "Could not load the Qt platform plugin xcb" and a
paragraph of advice that does not name them. :func:`missing_packages` tries to load each library
by its soname (exactly what Qt will do) and returns the Debian packages that provide the missing
ones; ``edit-auditor gui`` (and so ``./run app``) then prints the one install line. Nothing from
Qt is imported here.

Example::

    missing_packages()   # [] or e.g. ["libxcb-icccm4", "libxcb-keysyms1"]
    install_line()       # "sudo apt-get install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping

# Debian package -> the soname Qt's xcb plugin loads from it
XCB_LIBRARIES = {
    "libxcb-cursor0": "libxcb-cursor.so.0",
    "libxcb-icccm4": "libxcb-icccm.so.4",
    "libxcb-keysyms1": "libxcb-keysyms.so.1",
}


def uses_xcb(env: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Whether Qt will start with its xcb plugin: Linux, and no other platform asked for
    (``QT_QPA_PLATFORM``) or chosen by a Wayland session."""
    env = os.environ if env is None else env
    if not (platform or sys.platform).startswith("linux"):
        return False
    asked = env.get("QT_QPA_PLATFORM", "").split(":")[0].split(";")[0]
    if asked:
        return asked == "xcb"
    return not (env.get("XDG_SESSION_TYPE") == "wayland" and env.get("WAYLAND_DISPLAY"))


def _loads(soname: str) -> bool:
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_packages(loads: Callable[[str], bool] = _loads) -> list[str]:
    """The Debian packages whose library cannot be loaded (``loads(soname)``: can it be dlopen'ed)."""
    return [package for package, soname in XCB_LIBRARIES.items() if not loads(soname)]


def install_line() -> str:
    """The exact command that installs all three (apt-get skips those already there)."""
    sudo = "" if hasattr(os, "geteuid") and os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install {' '.join(XCB_LIBRARIES)}"


def check_window_libraries(env: Mapping[str, str] | None = None,
                           loads: Callable[[str], bool] = _loads) -> str | None:
    """None when the window can start; else the one-line message naming the install line."""
    if not uses_xcb(env):
        return None
    missing = missing_packages(loads)
    if not missing:
        return None
    return (f"the window needs system libraries that are missing ({', '.join(missing)}); install them with: "
            f"{install_line()}   (or run headless with QT_QPA_PLATFORM=offscreen)")
