"""docs/tutorial.ipynb runs as a reader would run it: executed by nbclient in a fresh kernel
(this interpreter) in a temporary folder, with the tracking store and the cache there, and
it shows what its text promises: the runs' comparison plot, the confusion matrix, Grad-CAM
and the probabilities of the JPEGs it classified. In the repository it is stored without
outputs. It trains on the GZ2 sample where ../shared/data holds it (as the notebook looks for
it), else on the synthetic set, and says which."""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
import pytest
from conftest import REPO, RUN_CHOICE

nbformat = pytest.importorskip("nbformat")
NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
GZ2 = REPO.parent / "shared" / "data" / "gz2_zhu5_sample.h5"


def test_the_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def _kernel(tmp_path, monkeypatch) -> str:
    """A kernelspec for this interpreter, so that the notebook runs where the tests do (a venv,
    a conda env or the system interpreter alike)."""
    spec = tmp_path / "jupyter" / "kernels" / "galmorph-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "galmorph tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "galmorph-test"


def _pngs(cell) -> list:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"])))
            for o in cell.outputs if "image/png" in o.get("data", {})]


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
@pytest.mark.torch
def test_the_tutorial_runs_and_draws_its_figures(tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("PIL")
    import mlflow
    from nbclient import NotebookClient

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("GALMORPH_CACHE", str(tmp_path / "cache"))
    for var in (*RUN_CHOICE, "MLFLOW_TRACKING_URI", "GZ2_SAMPLE", "MPLBACKEND"):
        monkeypatch.delenv(var, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name=_kernel(tmp_path, monkeypatch),
                   resources={"metadata": {"path": str(work)}}).execute()  # a failing cell raises

    def by_text(needle):
        return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)

    said = _text(by_text('sample = Path(os.environ.get("GZ2_SAMPLE"'))
    assert ("training on the GZ2 sample" in said) == GZ2.is_file(), said
    assert ("absent: training on the offline synthetic dataset" in said) == (not GZ2.is_file()), said

    figures = {"comparison": by_text("get_metric_history"), "confusion matrix": by_text("confusion_matrix.png"),
               "Grad-CAM": by_text("explain_run("), "probabilities": by_text('predictions = pd.read_csv')}
    for name, cell in figures.items():
        images = _pngs(cell)
        assert len(images) == 1, f"{name}: {len(images)} figures"
        assert min(images[0].size) > 150 and len(np.unique(np.asarray(images[0].convert("L")))) > 20, name  # not blank

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tutorial").experiment_id])
    assert sorted(r.data.params["learning_rate"] for r in runs) == ["0.0002", "0.001"]
    assert all(r.info.status == "FINISHED" for r in runs)
    explained = [r for r in runs
                 if "explain/grad_cam.png" in {a.path for a in client.list_artifacts(r.info.run_id, "explain")}]
    assert len(explained) == 1

    import pandas as pd

    table = pd.read_csv(work / "predictions.csv")
    p = table[[c for c in table.columns if c.startswith("p_")]]
    assert len(table) == 8 and p.shape[1] >= 4 and ((p.sum(axis=1) - 1).abs() < 1e-4).all()
    assert not (REPO / "docs" / "mlflow.db").exists() and not (REPO / "docs" / "cutouts").exists()
