"""Issue 11, item 8: a wheel carries ``resources/`` and an installation without them fails loudly.

A real ``pip wheel`` of a copy of the repository (so the checkout's own build/ folder plays no
part), its listing compared with ``resources/``, then the wheel installed into a folder of its own
and used from a fresh interpreter that cannot see the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools")  # --no-build-isolation builds with the venv's own setuptools
    src = tmp_path_factory.mktemp("src") / "edit-auditor"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("edit_auditor-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def run_installed(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=site.parent, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_lists_every_resource_file(wheel: Path) -> None:
    shipped = {str(p.relative_to(ROOT / "resources")) for p in (ROOT / "resources").rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        in_wheel = {n[len("auditor/_resources/"):] for n in names if n.startswith("auditor/_resources/")}
        entry_points = next(z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"hparams/llama.json", "text/enwiki_2016.txt", "text/ME-PPL_1k.json", "icons/edit-auditor.svg"} <= shipped
    assert in_wheel == shipped
    assert "[edit_auditor.commands]" in entry_points and "gui = ui.cli_gui" in entry_points


CHECK = """
import json, auditor, auditor.model.resources as r
from auditor.engine.hparams import load_hparams
from auditor.model.corpus import stats_text_path
print(json.dumps({"auditor": auditor.__file__, "dir": str(r.resources_dir()),
                  "gpt2_layer": load_hparams("gpt2").layer, "stats": str(stats_text_path())}))
"""


def test_the_installed_wheel_reads_its_own_resources(installed: Path) -> None:
    proc = run_installed(installed, CHECK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["auditor"].startswith(str(installed))  # not the checkout
    assert got["dir"] == str(installed / "auditor" / "_resources")
    assert got["gpt2_layer"] == json.loads((ROOT / "resources/hparams/gpt2.json").read_text())["layer"]
    assert got["stats"].startswith(got["dir"])


def test_a_missing_resource_fails_loudly(installed: Path) -> None:
    (installed / "auditor/_resources/hparams/gpt2.json").unlink()
    proc = run_installed(installed, "from auditor.engine.hparams import load_hparams; load_hparams('gpt2')")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("auditor.engine.hparams.HParamsError: no default hyper-parameters for the gpt2 family: "
                           "hparams/gpt2.json is missing")
    shutil.rmtree(installed / "auditor/_resources")
    proc = run_installed(installed, "from auditor.model.corpus import ppl_text_path; ppl_text_path()")
    assert proc.returncode == 1 and "ResourceMissing: the shipped resources are missing" in proc.stderr
