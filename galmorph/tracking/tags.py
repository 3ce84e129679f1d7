"""The MLflow tag keys and run names galmorph writes, in one place.

Filters in the MLflow UI and in `galmorph report` read these keys, so every workflow writes
them through the constants below rather than spelling them out.
"""

from __future__ import annotations

from pathlib import Path

KIND = "galmorph.kind"  # what a parent or bookkeeping run is: multiseed, sweep, hierarchy, report, prepare
ROLE = "galmorph.role"  # what a run is to its parent or study: study, trial, retrain, hierarchy_node
PARENT = "galmorph.parent"  # the run id of the galmorph parent (multiseed group, hierarchy)
FAILURE_REASON = "failure_reason"
WORKER_HOST = "galmorph.worker_host"  # where a study run's worker runs (a study's workers may be many)
WORKER_PID = "galmorph.worker_pid"
MODEL_URI = "model_uri"
RESUMED_AT = "galmorph.resumed_at_epoch"  # the (0-based) epoch the latest `--resume` continued at
RESUMED_AFTER = "galmorph.resumed_after"  # the failure_reason a resumed run had before
RESUMED_RUN = "galmorph.resumed_run"  # on an `mlflow run -P resume=...` launcher run: the run it resumed
RUN_NAME = "mlflow.runName"

# the tags every training run carries, so runs of both backends group side by side
GROUP = ("dataset", "scheme", "model", "backend")


def run_name(model: str, backend: str, dataset: str, *suffix: str) -> str:
    """`<model>-<backend>-<dataset stem>[-<suffix>...]`: the name of a training run or group."""
    return "-".join([model, backend, Path(dataset).stem, *[s for s in suffix if s]])
