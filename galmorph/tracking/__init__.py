"""MLflow glue: runs that end FAILED/KILLED on errors, tag keys and run names, artifacts, figures."""

from galmorph.tracking.runs import (
                                    artifact_dir,
                                    configure,
                                    log_params,
                                    redact,
                                    require_finite,
                                    run,
)

__all__ = ["artifact_dir", "configure", "log_params", "redact", "require_finite", "run"]
