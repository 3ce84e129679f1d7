"""The Nair & Abraham 2010 sample prepared as an MLflow run of its own: the settings and
counts as parameters, the manifest and the failures CSV as artifacts
(`galmorph data prepare nair2010`, MLproject `prepare_nair2010`)."""

from __future__ import annotations

from pathlib import Path

from galmorph import tracking
from galmorph.core.metrics import metric_safe
from galmorph.data import nair2010
from galmorph.data.nair2010 import PrepareConfig
from galmorph.tracking.tags import KIND


def run(config: PrepareConfig, *, progress: bool = True) -> dict:
    """Fetch the catalogue and the cutouts (resumable), write the HDF5 file, log the run;
    return the manifest."""
    import mlflow

    out = Path(config.out).expanduser() if config.out else nair2010.default_output_path()
    tracking.configure(config.experiment)
    with tracking.run("prepare-nair2010", tags={KIND: "prepare", "dataset": "nair2010"}):
        tracking.log_params({**{k: v for k, v in vars(config).items() if k != "experiment"}, "out": str(out)})
        try:
            manifest = nair2010.prepare(out, config.cache_dir or None, cutout_url=config.cutout_url,
                                        vizier_server=config.vizier_server or None, workers=config.workers,
                                        max_rate=config.max_rate, retries=config.retries, timeout=config.timeout,
                                        limit=config.limit or None, progress=progress)
        finally:
            if nair2010.failures_path(out).is_file():
                mlflow.log_artifact(str(nair2010.failures_path(out)))
        counts = {"n_galaxies": manifest["n_galaxies"], "n_failed": manifest["n_failed"],
                  "n_catalogue": manifest["n_catalogue"],
                  **{f"n_{metric_safe(k)}": v for k, v in manifest["class_counts"].items()}}
        tracking.log_params({**counts, "sha256": manifest["sha256"], "catalogue_server": manifest["catalogue_server"]})
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        mlflow.log_artifact(str(nair2010.manifest_path(out)))
    return manifest
