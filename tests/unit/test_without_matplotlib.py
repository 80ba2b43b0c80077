"""matplotlib is the optional ``plots`` extra: the package imports without it, and a run's accuracy curves are then
skipped with one log line. Checked in a fresh interpreter where importing matplotlib fails, as it does when it is
not installed."""

import subprocess
import sys
from pathlib import Path

# Prepended to the code a test runs: a meta-path finder that answers every import of matplotlib as not installed.
WITHOUT_MATPLOTLIB = """
import sys


class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoMatplotlib())
"""
PACKAGE = Path(__file__).resolve().parents[2] / "srel_ray"


def run_without_matplotlib(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_MATPLOTLIB + code], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=300)


def test_the_blocker_blocks():
    done = run_without_matplotlib("import matplotlib")
    assert done.returncode == 1 and "No module named 'matplotlib'" in done.stderr


def test_the_package_imports_and_skips_the_curves_with_one_log_line(tmp_path):
    modules = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                     for p in PACKAGE.rglob("*.py"))
    assert "srel_ray.inspection" in modules and "srel_ray.cli" in modules
    history = [{"epoch": 0, "test_top1": 0.5}, {"epoch": 1, "test_top1": 0.6}]
    png = tmp_path / "accuracy_curves.png"
    done = run_without_matplotlib(
        f"import importlib, logging\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
        "logging.basicConfig(level=logging.INFO)\nfrom srel_ray.inspection import save_curves\n"
        f"print(save_curves({history!r}, {{'condensed': {history!r}}}, {str(png)!r}))")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(png) and not png.exists()
    lines = [line for line in done.stderr.splitlines() if "matplotlib" in line]
    assert len(lines) == 1 and "not drawn" in lines[0] and "pip install 'srel_ray[plots]'" in lines[0]


def test_with_matplotlib_the_same_call_draws_the_curves(tmp_path):
    from srel_ray.inspection import save_curves

    png = tmp_path / "accuracy_curves.png"
    assert save_curves([{"epoch": 0, "test_top1": 0.5}], {}, str(png)) == str(png)
    assert png.read_bytes().startswith(b"\x89PNG")
