"""jobs/*.py are thin entry points for `ray job submit`: each runs its own srel-ray subcommand."""

import subprocess
import sys
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parents[1] / "jobs"


@pytest.mark.parametrize("command", ["squeeze", "recover", "relabel", "evaluate", "run"])
def test_each_job_script_runs_its_stage(command):
    done = subprocess.run([sys.executable, str(JOBS / f"{command}.py"), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: srel-ray {command} [-h] --config CONFIG --out OUT")
