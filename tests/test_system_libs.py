"""Issue 11, item 9: ``edit-auditor gui`` (so ``./run app``) names the missing xcb libraries and
prints the exact apt-get line instead of Qt's "Could not load the Qt platform plugin xcb"."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from auditor.cli import main
from ui import system_libs
from ui.system_libs import XCB_LIBRARIES, check_window_libraries, missing_packages, uses_xcb

LINE = "apt-get install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"


@pytest.mark.parametrize("env, expected", [
    ({}, True),
    ({"QT_QPA_PLATFORM": "xcb"}, True),
    ({"QT_QPA_PLATFORM": "offscreen"}, False),
    ({"QT_QPA_PLATFORM": "wayland;xcb"}, False),
    ({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, False),
    ({"XDG_SESSION_TYPE": "x11", "DISPLAY": ":0"}, True),
])
def test_which_sessions_use_xcb(env: dict, expected: bool) -> None:
    assert uses_xcb(env, platform="linux") is expected
    assert uses_xcb(env, platform="darwin") is False


def test_the_message_names_the_missing_packages_and_the_exact_line() -> None:
    absent = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    message = check_window_libraries({"QT_QPA_PLATFORM": "xcb"}, loads=lambda so: so not in absent)
    assert "missing (libxcb-icccm4, libxcb-keysyms1)" in message and LINE in message
    assert check_window_libraries({"QT_QPA_PLATFORM": "xcb"}, loads=lambda so: True) is None
    assert check_window_libraries({"QT_QPA_PLATFORM": "offscreen"}, loads=lambda so: False) is None


@pytest.mark.skipif(shutil.which("ldconfig") is None and not shutil.os.path.exists("/sbin/ldconfig"),
                    reason="no ldconfig to compare with")
def test_the_real_check_agrees_with_the_dynamic_linker_cache() -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    cache = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=60).stdout
    expected = [pkg for pkg, soname in XCB_LIBRARIES.items() if f"{soname} " not in cache]
    assert missing_packages() == expected


def test_gui_refuses_with_one_line_when_a_library_is_missing(monkeypatch, capsys) -> None:
    """A library that really cannot be loaded (its soname does not exist anywhere)."""
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setitem(system_libs.XCB_LIBRARIES, "libxcb-cursor0", "libedit-auditor-absent.so.0")
    assert main(["gui", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edit-auditor: error: the window needs system libraries that are missing (libxcb-cursor0")
    assert LINE in err and err.count("\n") == 1
