"""Entry point of the frozen window (PyInstaller): ``edit-auditor-gui``."""

import sys

from ui.app import main

if __name__ == "__main__":
    sys.exit(main())
