"""The package's layers (pyproject's import-linter contracts): nothing imports upward, no circles,
modality folders do not import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_package_keeps_its_layers():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "multissl", tmp_path / "multissl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    blocks = tmp_path / "multissl" / "core" / "blocks.py"
    blocks.write_text(blocks.read_text() + "\nfrom multissl.train import pretrain  # noqa: E402,F401\n")
    out = lint(tmp_path)
    assert out.returncode != 0
    assert "multissl.core.blocks -> multissl.train" in out.stdout


def test_a_modality_importing_another_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "multissl", tmp_path / "multissl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "multissl" / "modalities" / "audio" / "model.py"
    model.write_text(model.read_text() + "\nfrom multissl.modalities.text.model import TextConfig  # noqa: E402,F401\n")
    out = lint(tmp_path)
    assert out.returncode != 0 and "modalities are independent folders BROKEN" in out.stdout
