"""MLflow glue: runs that end FAILED/KILLED on errors, tag keys and run names, artifacts, figures;
credentials masked wherever text is logged or printed (secrets)."""

from galmorph.tracking.runs import (
                                    artifact_dir,
                                    configure,
                                    install_sigterm_handler,
                                    log_params,
                                    require_finite,
                                    run,
)
from galmorph.tracking.secrets import redact

__all__ = ["artifact_dir", "configure", "install_sigterm_handler", "log_params", "redact", "require_finite", "run"]
