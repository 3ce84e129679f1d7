"""MLflow glue: runs that end FAILED/KILLED on errors, tag keys and run names, artifacts, figures;
credentials masked wherever text is logged or printed (secrets); the tracking store checked
before the first MLflow call (store)."""

from galmorph.tracking.runs import (
    EndFailed,
    artifact_dir,
    check_experiment,
    configure,
    log_params,
    record_failure,
    require_finite,
    run,
    validated,
)
from galmorph.tracking.secrets import redact
from galmorph.tracking.store import check_artifacts, check_store, store_problem

__all__ = ["EndFailed", "artifact_dir", "check_artifacts", "check_experiment", "check_store", "configure", "log_params",
           "record_failure", "redact", "require_finite", "run", "store_problem", "validated"]
