"""The settings of a report run, in a module of their own so every part of the package can
read them without importing the package's entry point."""

from __future__ import annotations

from dataclasses import dataclass

from galmorph.config import option


@dataclass
class ReportConfig:
    """Settings of `galmorph report` (CLI flags and MLproject `report` parameters)."""

    experiments: str = option("galmorph", "comma-separated MLflow experiment names")
    filter: str = option("", "MLflow filter on the runs, e.g. \"tags.dataset = 'synthetic'\"")
    output: str = option("outputs/report", "folder for report.md, report.html and figures")
    log_experiment: str = option("galmorph-reports", "experiment of the report's own run outside `mlflow run`",
                                 mlproject=False)
    title: str = option("Reproducing Cavanagh, Bekki & Groves 2021", "report title", mlproject=False)
    include_nodes: bool = option(False, "also list the binary node networks of hierarchical classifiers as rows")

    def experiment_names(self) -> list[str]:
        """The names in `experiments`, stripped, empty entries dropped."""
        return [e.strip() for e in self.experiments.split(",") if e.strip()]
