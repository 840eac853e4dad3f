"""The notebooks in analysis/ run top to bottom (smoke size) in a kernel of this environment."""

from __future__ import annotations

from pathlib import Path

import nbclient  # the dev extra (make install): missing, the module fails rather than skips
import nbformat
import numpy as np
import pytest
from PIL import Image
from traitlets.config import Config  # nbclient's own dependency

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"

# notebook -> the figures it must write
NOTEBOOKS = {
    "results_overview.ipynb": ["overview_gflops.png", "overview_speed.png",
                               "overview_tokens.png", "overview_ablation.png"],
    "pareto_search.ipynb": ["pareto_search.png", "pareto_tradeoff.png", "pareto_heatmap.png"],
    "merge_pictures.ipynb": ["merge_photos.png", "merge_digits.png", "merge_clutter.png",
                             "merge_video.png"],
}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in ANALYSIS.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(ANALYSIS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip the outputs"


@pytest.mark.full
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TOME_LAB_SMOKE", "1")
    monkeypatch.setenv("TOME_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TOME_LAB_FIGURES", str(tmp_path / "figures"))
    nb = nbformat.read(ANALYSIS / name, as_version=4)
    # The kernel talks over Unix sockets (IPC): the test suite blocks network sockets.
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = str(tmp_path / "kernel")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", config=config,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    for fig in NOTEBOOKS[name]:
        with Image.open(tmp_path / "figures" / fig) as im:
            px = np.asarray(im.convert("RGB"), dtype=float)
            assert im.text["Description"] == f"analysis/{name} ({fig})"
        assert (np.abs(px - 255).sum(-1) > 30).mean() > 0.02, f"{fig} looks blank"
