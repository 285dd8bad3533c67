"""Build step that pyproject.toml cannot express: ship the top-level ``resources/`` folder inside the
wheel as ``auditor/_resources/`` (read through importlib.resources, see auditor/model/resources.py).

``resources/`` stays the source of truth in the repository; everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads resources/ from the checkout
        target = Path(self.build_lib) / "auditor" / "_resources"
        shutil.copytree(ROOT / "resources", target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithResources})
