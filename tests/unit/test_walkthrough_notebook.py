"""notebooks/walkthrough.ipynb executed on a tiny finished run (SREL_RAY_WALKTHROUGH_RUN), so the notebook a new
user runs cannot silently break: every section shows what it says (the tables from summary.json, the image grids,
the accuracy curves, the t-SNE figure that the notebook's own `srel-ray tsne` call draws). No Ray: the run is the
session's labelled tiny run (tests/unit/conftest.py) finished by the stage loop on the in-process executor."""

import base64
import re
import shutil

import pytest

from srel_ray.cli import quickstart_config
from srel_ray.config import load_config
from srel_ray.progress import Console
from srel_ray.stage_loop import run_stage_loop
from srel_ray.stages.base import StageContext
from srel_ray.stages.local import InProcessExecutor
from srel_ray.stages.registry import STAGES
from srel_ray.storage import files, sets
from srel_ray.storage.layout import prepare_out
from srel_ray.tracking import Tracker
from tests.unit.notebooks import execute, outputs
from tests.unit.test_stages_in_process import TINY

SECOND_STUDENT = "evaluate.students=[{arch: convnet, arch_kwargs: {width: 4, depth: 1}}]"


@pytest.fixture
def finished_run(labelled_run, tmp_path):
    """A copy of the labelled tiny run, finished: every stage recorded (squeeze, recover and relabel find their
    outputs and skip), both student architectures trained, summary.json and the accuracy curves; MLflow off."""
    _, data, labelled = labelled_run
    shutil.copytree(labelled.out, tmp_path / "run")
    cfg = load_config(quickstart_config(), TINY + [SECOND_STUDENT, "tracking.enabled=false"])
    run = prepare_out(cfg, tmp_path / "run")
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    assert run_stage_loop(ctx, STAGES, Console("quiet")) is not None
    return run


def test_walkthrough_shows_every_stage_of_a_finished_run(finished_run):
    run = finished_run
    assert not files.exists(run.feature_space("tsne.png"))
    # One OpenMP thread in the kernel (torch, t-SNE), as in every unit test (conftest.py): on a shared 2-core
    # machine two contending threads each made the t-SNE cell over 10x slower.
    nb = execute("walkthrough.ipynb", {"SREL_RAY_WALKTHROUGH_RUN": run.out, "OMP_NUM_THREADS": "1"})
    shown = outputs(nb)
    assert not [o for o in shown if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in shown if o.output_type == "stream")
    summary = files.read_json(run.summary)
    assert f"showing the run in {run.out}, running no stage" in text
    assert "random real, teacher labels" in text and f"{100 * summary['student_top1']:6.2f}" in text
    assert "recover   " in text and "already complete, skipped" in text  # show_run's stage lines
    assert "teacher convnet {'width': 8, 'depth': 2}: 10 classes, 16 px inputs" in text
    assert "teacher says" in text and "2 label epochs of 10 views each, 10 classes" in text
    cross = summary["cross_arch"]
    assert len(cross) == 2 and "student architecture           condensed" in text
    for key, row in cross.items():
        assert f"{key:30s} {100 * row['student_top1']:6.2f}" in text
    assert "t-SNE of the teacher's features: 255 points" in text  # the notebook ran srel-ray tsne

    # The pictures shown are the run's: its grid beside the random-real set's, its curves and the t-SNE figure.
    grids = [o["data"]["text/html"] for o in shown if "text/html" in o.get("data", {})]
    real = sets.read_set(run.set_dir("random_real"))
    assert len(grids) == 1 and re.findall(r'src="data:image/png;base64,([^"]+)"', grids[0]) == [
        base64.b64encode(png).decode() for png in (files.read_bytes(run.grid),
                                                   sets.grid_png(real.path, 10, 1, 1))]
    images = [base64.b64decode(o["data"]["image/png"]) for o in shown if "image/png" in o.get("data", {})]
    assert images == [files.read_bytes(run.curves), files.read_bytes(run.feature_space("tsne.png"))]
