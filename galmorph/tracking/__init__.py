"""MLflow glue: runs that end FAILED/KILLED on errors, tag keys and run names, artifacts, figures."""

from galmorph.tracking.runs import (
                                    artifact_dir,
                                    check_experiment,
                                    configure,
                                    install_sigterm_handler,
                                    log_params,
                                    redact,
                                    require_finite,
                                    run,
)

__all__ = ["artifact_dir", "check_experiment", "configure", "install_sigterm_handler", "log_params", "redact", "require_finite", "run"]
