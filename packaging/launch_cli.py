"""Entry point of the frozen command line (PyInstaller): ``edit-auditor``."""

import sys

from auditor.cli import main

if __name__ == "__main__":
    sys.exit(main())
