"""Packaging: the wheel ships the templates; CI runs the README's test command."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_package_and_templates(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                        "--outdir", str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("lincompile-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lincompile/__init__.py" in names and "lincompile/ops/linear.py" in names
    assert "lincompile/templates/README.md" in names
    shipped = {n for n in names if n.startswith("lincompile/templates/")}
    on_disk = {f"lincompile/templates/{p.relative_to(ROOT / 'templates').as_posix()}"
               for p in (ROOT / "templates").rglob("*") if p.is_file()}
    assert on_disk <= shipped
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "lincompile = lincompile.cli:main" in zipfile.ZipFile(wheel).read(
        entry[0]).decode()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(line for b in blocks for line in b.splitlines() if "pytest" in line)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in [line.strip() for line in ci]


def test_readme_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Python in ten lines\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 14
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 0 < float(r.stdout.strip()) < 10  # the loss of the third step
    assert (tmp_path / "mlp_train.onnx").is_file()
