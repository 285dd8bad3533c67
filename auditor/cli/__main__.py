"""``python -m auditor.cli``: the same as the ``edit-auditor`` command."""

import sys

from auditor.cli.parser import main

sys.exit(main())
