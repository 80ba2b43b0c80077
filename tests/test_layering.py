"""The algorithm core is plain PyTorch: importable, and imported, without Ray."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "srel_ray"
RAY_FREE = ["core", "models", "data", "config.py", "errors.py", "teacher.py", "search_space.py", "trial.py",
            "reporting.py", "methods.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("srel_ray.distributed"):
                names.add("srel_ray.distributed")
    return names


def test_core_modules_never_import_ray():
    files = [f for entry in RAY_FREE for f in ((PACKAGE / entry).rglob("*.py") if (PACKAGE / entry).is_dir()
                                                else [PACKAGE / entry])]
    assert len(files) > 10
    offenders = {str(f.relative_to(PACKAGE)): sorted(_imports(f) & {"ray", "srel_ray.distributed"})
                 for f in files if _imports(f) & {"ray", "srel_ray.distributed"}}
    assert offenders == {}


def test_importing_the_core_loads_no_ray():
    code = ("import sys, srel_ray.core.recover, srel_ray.core.student, srel_ray.core.relabel, srel_ray.models, "
            "srel_ray.storage.sets, srel_ray.data.real, srel_ray.teacher, srel_ray.config, srel_ray.search_space, "
            "srel_ray.trial; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
