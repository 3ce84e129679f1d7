"""The reproduction report: finished MLflow runs, grouped and set next to the published numbers.

`run(ReportConfig(...))` reads the runs of some experiments (optionally an MLflow filter,
e.g. `tags.dataset = 'synthetic'`), keeps the unit runs (single trainings, the children of
multi-seed groups, hierarchical classifiers; not the multi-seed/sweep parents, reports or
data preparations, and hierarchy nodes only on request), groups them by dataset x scheme x
model x backend x training recipe (collect.name_recipes) and writes, under `output/`:

- `report.md` and `report.html` (self-contained: figures embedded), written last and
  atomically, so a report never points at a missing figure;
- `figures/`: mean confusion matrix per group, learning curves of each dataset x scheme
  side by side, timing per backend, and saliency figures copied from runs that have them.

Sections: test accuracy (mean and std over seeds, `galmorph.workflows.multiseed.aggregate`) next to
the paper's and the PHYS449 reproduction's numbers (experiments/paper.yaml); the recipe
ablation (where one network ran with several recipes: gains over the reference recipe,
paired by seed); per-class
recall; confusion matrices; learning curves; time per epoch per backend; feature maps and
Grad-CAM; the reference numbers with their sources; the runs used. Everything is logged as
artifacts (under `report/`) of a run tagged `galmorph.kind=report`.

The parts: `collect` (runs and references from MLflow), `build` (sections and figures),
`render` (Markdown, HTML, the files); `run` below ties them together.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from galmorph import tracking
from galmorph.core.io import check_writable, ensure_writable_dir
from galmorph.tracking.tags import KIND
from galmorph.workflows.report import build, collect, render
from galmorph.workflows.report.config import ReportConfig

__all__ = ["ReportConfig", "run"]

FIX_OUTPUT = "pass a writable --output"


def run(cfg: ReportConfig) -> list[Path]:
    """Build the report from MLflow, save it in cfg.output and log it to a `report` run;
    return the paths of report.md, report.html and the figures folder.

    Raises GalmorphError for an unknown experiment, a bad filter or an unwritable output."""
    import mlflow

    out = check_writable(cfg.output, "report folder", FIX_OUTPUT, folder=True)  # before any run is read
    tracking.check_store()
    client = mlflow.MlflowClient()
    runs = collect.search(client, cfg.experiment_names(), cfg.filter)
    chosen = collect.units(runs, cfg.include_nodes)
    ensure_writable_dir(out, "report folder", FIX_OUTPUT)
    fig_dir = out / "figures"
    tracking.configure(cfg.log_experiment)
    with tracking.run("report", tags={KIND: "report"}, system_metrics=False):
        tracking.log_params({"experiments": ",".join(cfg.experiment_names()), "filter": cfg.filter, "output": str(out),
                             "n_runs": len(chosen), "include_nodes": cfg.include_nodes})
        with tempfile.TemporaryDirectory(prefix="galmorph-report-") as scratch:
            groups = collect.group(chosen, client, Path(scratch))
            if fig_dir.exists():
                shutil.rmtree(fig_dir)  # figures of an earlier report would linger otherwise
            blocks = build.build(groups, client, fig_dir, cfg, len(chosen))
        paths = render.write(blocks, out, cfg.title)
        mlflow.log_metrics({"n_runs": float(len(chosen)), "n_groups": float(len(groups))})
        mlflow.log_artifacts(str(out), "report")
    return paths + [fig_dir]
