"""The command line, ``edit-auditor``: the parser and its error boundary (``parser``), the helpers
every command module shares (``common``), and one module per command family: ``model`` (info, ppl,
demo), ``edit`` (with ``batch``), ``ledger`` (workspace, ledger, revert, replay, export),
``reviewed`` (apply-reviewed), ``watch``, ``sequence`` (sequence, report) and ``trace``.

The names below are the interface for command plugins (entry-point group
``edit_auditor.commands``, such as the window's ``ui.cli_gui``) and for scripts.
"""

from auditor.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    PROG,
    CliError,
    add_json_arg,
    add_model_args,
    emit,
    fail,
    load_from_args,
    print_json,
    print_table,
    user_errors,
)
from auditor.cli.parser import COMMAND_MODULES, ENTRY_POINT_GROUP, build_parser, command_modules, main, plugin_modules

__all__ = [
    "COMMAND_MODULES", "ENTRY_POINT_GROUP", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "PROG", "CliError",
    "add_json_arg", "add_model_args", "build_parser", "command_modules", "emit", "fail", "load_from_args",
    "main", "plugin_modules", "print_json", "print_table", "user_errors",
]


def __getattr__(name: str):
    """The other names of the 0.1 module ``auditor.cli`` (now split into ``parser``, ``common`` and
    ``model``), for one more release, with a DeprecationWarning."""
    from auditor import _moved

    if name.startswith("__"):
        raise AttributeError(name)
    home, value = _moved.find(_moved.CLI_MODULES, name, __name__)
    _moved.warn_moved(f"auditor.cli.{name}", f"auditor.{home}.{name}", skip=(__file__,))
    return value
