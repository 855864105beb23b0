"""Packaging: `import gradscope` stays light, and gradscope.kernels ships inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = ("import sys, gradscope; heavy = [m for m in ('triton', 'transformers', 'tensorboard', "
            "'matplotlib', 'rich', 'click') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_kernels_importable_from_an_installed_wheel(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True, timeout=300)
    (wheel,) = wheel_dir.glob("torch_gradscope-*.whl")  # the distribution name
    names = zipfile.ZipFile(wheel).namelist()
    assert "gradscope/kernels/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, timeout=300)
    code = "import gradscope, gradscope.kernels; print(gradscope.kernels.__file__)"
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().startswith(str(target))


def test_analyze_does_not_import_torch(tmp_path):
    """Reading and diagnosing a run needs numpy only: the CLI starts in a fraction of a second."""
    import torch

    import gradscope

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.watch(model, opt, log_dir=tmp_path / "run", tensorboard=False):
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
    code = ("import sys; from click.testing import CliRunner; from gradscope.cli import main; "
            f"r = CliRunner().invoke(main, ['analyze', {str(tmp_path / 'run')!r}, '--format', 'json']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr


def test_python_dash_m_gradscope_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "gradscope", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    import gradscope

    assert out.stdout.strip() == f"gradscope, version {gradscope.__version__}"
    helped = subprocess.run([sys.executable, "-m", "gradscope", "analyze", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "Usage: gradscope analyze" in helped.stdout


def test_distribution_name_is_not_the_unrelated_index_project():
    """'gradscope' on the package index is another project: ours is torch-gradscope (import gradscope)."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "torch-gradscope"
    texts = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.py")), ROOT / "src/gradscope/_optional.py"]
    for path in texts:
        for line in path.read_text().splitlines():
            if "pip install" in line:
                assert "gradscope[" not in line.replace("torch-gradscope[", ""), f"{path.name}: {line}"
                assert "install gradscope" not in line and "install 'gradscope" not in line, f"{path.name}: {line}"
