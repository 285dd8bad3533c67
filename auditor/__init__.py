"""Edit Auditor's core: everything the product does, without a window (it never imports Qt).

The sub-packages follow the data's way, each importing only those below it (checked by
import-linter, ``tests/test_architecture_layers.py``): ``cli`` > ``run`` > ``record`` > ``measure``
> ``engine`` > ``model`` > ``base``. docs/ARCHITECTURE.md has one line per module.

The flat paths of release 0.1 (``auditor.rome``, ``auditor.edit``, ...) still import, with a
DeprecationWarning naming the new home, until release 0.3 (``auditor._moved``).
"""

from auditor import _moved

_moved.install()
