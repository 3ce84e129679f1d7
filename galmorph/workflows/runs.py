"""`galmorph runs`: RUNNING runs whose process is gone (galmorph.tracking.liveness), listed, and
with `--close-stale` ended KILLED with the reason."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from galmorph import tracking
from galmorph.config import option
from galmorph.core.errors import GalmorphError
from galmorph.tracking import liveness


@dataclass
class RunsConfig:
    experiment: str = option("", "the MLflow experiment to look in (default: every experiment)", mlproject=False)
    stale_after: float = option(60.0, "minutes without a heartbeat (one per epoch) after which a RUNNING run of "
                                      "another host counts as dead; make it longer than the longest epoch",
                                mlproject=False)
    close_stale: bool = option(False, "mark the stale runs KILLED, with the reason in their failure_reason tag",
                               mlproject=False)

    def validate(self) -> "RunsConfig":
        if not self.stale_after > 0:
            raise GalmorphError(f"stale_after must be a positive number of minutes, got {self.stale_after}")
        return self


def find(config: RunsConfig) -> list[tuple[object, str]]:
    """(run, why) of every stale run in the experiment config names (or in all of them)."""
    config.validate()
    tracking.check_store()
    import mlflow

    client = mlflow.MlflowClient()
    if config.experiment:
        found = client.get_experiment_by_name(config.experiment)
        if found is None:
            raise GalmorphError(f"no experiment {config.experiment!r} in the tracking store "
                                f"{tracking.redact(mlflow.get_tracking_uri())}; check the name, or leave --experiment "
                                "out to look in every experiment")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments(max_results=50000)]
    return liveness.stale_runs(client, ids, config.stale_after * 60)


def run(config: RunsConfig) -> list[str]:
    """Print the stale runs (and close them with close_stale); return their ids."""
    import mlflow

    stale = find(config)
    client = mlflow.MlflowClient()
    names: dict[str, str] = {}
    for found, why in stale:
        if config.close_stale:
            liveness.close(client, found, why)
        info = found.info
        if info.experiment_id not in names:
            names[info.experiment_id] = client.get_experiment(info.experiment_id).name
        print(f"{info.run_id}  {info.run_name}  experiment {names[info.experiment_id]!r}  "
              f"{'closed (KILLED)' if config.close_stale else 'stale'}: {why}", flush=True)
    verb = "closed" if config.close_stale else "found"
    hint = "" if config.close_stale or not stale else "; --close-stale marks them KILLED, `galmorph train --resume " \
                                                       "RUN_ID` continues one"
    print(f"{len(stale)} stale run{'s' if len(stale) != 1 else ''} {verb}{hint}", file=sys.stderr)
    return [found.info.run_id for found, _ in stale]
