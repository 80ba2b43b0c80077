"""Executing a notebook of notebooks/ as a user would (nbclient, a fresh python3 kernel started in notebooks/), with
environment variables set for its kernel only; the dev extra installs nbclient, nbformat and ipykernel."""

import os
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def execute(name: str, env: dict[str, str], extra_cell: str | None = None, timeout: int = 120):
    """The executed notebook ``notebooks/<name>``, ``extra_cell`` appended to it when given; its outputs are on its
    cells. ``env`` is set while the kernel starts (it inherits this process's environment) and restored after."""
    import nbclient  # a missing one fails here rather than skipping
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    if extra_cell is not None:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


def outputs(nb) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
