"""`--resume RUN_ID`: continue a killed or failed training run from its last checkpoint.

Everything is checked before the run is touched, so that a refusal (an unknown run, a run of
another tracking store, a FINISHED run, a run whose process still lives, a flag that
contradicts the run's settings, a checkpoint missing or damaged, `--init-from` as well) is a
one-line GalmorphError and leaves the run exactly as it was. The settings come from the run's
logged parameters (every TrainConfig setting is logged when a run starts; its config.yaml
artifact exists only once a run finished); the checkpoint from the local cache
(galmorph.core.checkpoints.run_folder) or, failing that, from the run's artifacts.

What a run leaves to resume from is decided here too: a FAILED or interrupted run logs its last
checkpoint (log_checkpoint); a FINISHED one drops its checkpoints, local and logged (finished);
one that MLflow could not mark FINISHED keeps them (not_finished).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from galmorph import tracking
from galmorph.config import TrainConfig, from_param, settings_of
from galmorph.core import checkpoints
from galmorph.core.errors import GalmorphError
from galmorph.tracking import liveness
from galmorph.tracking.artifacts import no_progress_bar

# settings that may differ from the run's: how this process runs, not what it trains
FREE = ("resume", "quiet", "threads", "loader_workers", "prefetch", "pin_memory", "run_name")
RUNNING_ELSEWHERE_S = 3600.0  # a RUNNING run of another host counts as dead after this long without a beat


def given_settings(config: TrainConfig, explicit: set[str] | None) -> set[str]:
    """The settings a user set: the flags given (`explicit`), or, from the Python API (None)
    and under `mlflow run` (whose MLproject passes every parameter), those that differ from
    their defaults."""
    differ = {f.name for f in fields(config) if getattr(config, f.name) != f.default}
    if explicit is None or os.environ.get("MLFLOW_RUN_ID"):
        return differ
    return set(explicit)


def only_in_train(config: TrainConfig, command: str) -> None:
    """`--resume` continues one training run; a command that starts several refuses it."""
    if config.resume:
        raise GalmorphError(f"--resume {config.resume} continues one training run, and {command} starts new ones; "
                            "resume a killed run of it with `galmorph train --resume RUN_ID`")


def resolve(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, checkpoints.Checkpoint, str]:
    """(the run's own settings with the given free ones, its checkpoint, its experiment name)."""
    run_id = config.resume
    if config.init_from:
        raise GalmorphError(f"--resume {run_id} continues a run from its own checkpoint; --init-from "
                            f"{config.init_from} starts a new one: pass one of them")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one of several processes a launcher (torchrun) started
        raise GalmorphError(f"resume runs in one process, not under torchrun: run `galmorph train --resume {run_id}` "
                            "alone (a data-parallel run continues on its global batch)")
    if config.devices > 1:
        raise GalmorphError("resume trains on one device; drop --devices")
    tracking.check_store()
    import mlflow

    client = mlflow.MlflowClient()
    run = _get_run(client, run_id)
    status = run.info.status
    if run.info.lifecycle_stage == "deleted":
        raise GalmorphError(f"run {run_id} is deleted; restore it first (mlflow runs restore --run-id {run_id})")
    if status == "FINISHED":
        raise GalmorphError(f"run {run_id} is FINISHED; only a KILLED, FAILED or dead RUNNING run can be resumed "
                            f"(to train further from it, start a new run with --init-from {run_id})")
    if status in ("RUNNING", "SCHEDULED"):
        alive, why = liveness.judge(run, RUNNING_ELSEWHERE_S)
        if alive:
            raise GalmorphError(f"run {run_id} is still RUNNING: {why}; stop it first, or wait")
    logged = _logged_settings(run)
    if logged.get("stream") == "auto" and run.data.params.get("stream_resolved") in ("true", "false"):
        # the run's own choice: today's free memory could choose otherwise, and another batch order
        logged["stream"] = run.data.params["stream_resolved"]
    if "backend" not in logged or "model" not in logged:
        raise GalmorphError(f"run {run_id} is not a galmorph training run (no model/backend parameters); "
                            "pass the id of a `galmorph train` run")
    for name in sorted(given - set(FREE) - {"experiment"}):
        ours, theirs = getattr(config, name), logged.get(name)
        if name in logged and not _same(ours, theirs):
            raise GalmorphError(f"--{name.replace('_', '-')} {_show(ours)} contradicts run {run_id}'s "
                                f"{name} {_show(theirs)}; drop the flag to continue the run as it was configured")
    experiment = client.get_experiment(run.info.experiment_id).name
    if "experiment" in given and config.experiment != experiment:
        raise GalmorphError(f"--experiment {config.experiment} contradicts run {run_id}'s experiment {experiment}; "
                            "drop the flag")
    values = {**logged, **{k: getattr(config, k) for k in FREE if k in given or k == "resume"}}
    merged = TrainConfig(**{**values, "experiment": experiment}).validate()
    return merged, _checkpoint(client, run_id, merged.backend), experiment


def _get_run(client, run_id: str):
    import mlflow

    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == "TEMPORARILY_UNAVAILABLE":
            raise
    here = tracking.redact(mlflow.get_tracking_uri())
    there = checkpoints.recorded_store(run_id)
    if there and there != here:
        raise GalmorphError(f"run {run_id} was logged to another tracking store ({there}), not {here}; "
                            "set MLFLOW_TRACKING_URI to that store to resume it") from None
    raise GalmorphError(f"no MLflow run {run_id!r} in the tracking store {here}; pass the id of a run in it, "
                        "or set MLFLOW_TRACKING_URI to the store it was logged to") from None


def _logged_settings(run) -> dict:
    """The TrainConfig settings among the run's parameters, typed."""
    params, out = run.data.params, {}
    for s in settings_of(TrainConfig):
        if s.name in params:
            out[s.name] = from_param(s, params[s.name])
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _show(value) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if value == "" else str(value)


def _checkpoint(client, run_id: str, backend: str) -> checkpoints.Checkpoint:
    """The run's last checkpoint, validated: from the local cache, else from its artifacts."""
    local = checkpoints.run_folder(run_id)
    folder = checkpoints.latest(local) or _download(client, run_id, local)
    if folder is None:
        raise GalmorphError(f"run {run_id} has no checkpoint (none in {local}, none among its artifacts): it ended "
                            "before its first epoch, or ran without checkpoints; start a new run")
    found = checkpoints.load(folder)
    if found.backend != backend or found.run_id != run_id:
        raise GalmorphError(f"the checkpoint {folder} is of run {found.run_id} ({found.backend}), not of run "
                            f"{run_id} ({backend}); remove it and resume again")
    return found


def _download(client, run_id: str, local: Path) -> Path | None:
    """Fetch the run's logged checkpoint into the cache; None when it has none."""
    import json

    import mlflow

    try:
        if not any(a.path == checkpoints.ARTIFACT_PATH for a in client.list_artifacts(run_id)):
            return None
    except mlflow.exceptions.MlflowException:
        return None
    local.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=local) as tmp:
        with no_progress_bar():
            got = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=checkpoints.ARTIFACT_PATH,
                                                           dst_path=tmp))
        try:
            epoch = int(json.loads((got / "manifest.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError) as exc:
            raise GalmorphError(f"run {run_id}'s logged checkpoint has no readable manifest ({exc}); "
                                "it cannot be resumed from: start a new run") from None
        final = local / f"epoch-{epoch:04d}"
        shutil.move(str(got), final)
    return final


def log_checkpoint(run_id: str) -> None:
    """A run that fails or is interrupted logs its last checkpoint to its artifacts
    (checkpoint/), so that it can be resumed on another machine (best effort)."""
    from galmorph.core import interrupts

    folder = checkpoints.latest(checkpoints.run_folder(run_id))
    if folder is None:
        return
    with contextlib.suppress(Exception):
        import mlflow

        with interrupts.held():  # no half-copied checkpoint among the artifacts
            mlflow.log_artifacts(str(folder), checkpoints.ARTIFACT_PATH)


def finished(run_id: str, was_resumed: bool) -> None:
    """Called once MLflow marked the run FINISHED: it cannot be resumed any more, so its local
    checkpoints go (about twice the model's size), and so does the checkpoint/ artifact that a
    resumed run had logged when it failed or was interrupted."""
    with contextlib.suppress(OSError):
        checkpoints.discard(checkpoints.run_folder(run_id))
    if not was_resumed:  # a run logs a checkpoint only as it ends FAILED or KILLED
        return
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        client = mlflow.MlflowClient()
        if any(a.path == checkpoints.ARTIFACT_PATH for a in client.list_artifacts(run_id)):
            repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri,
                                                 tracking_uri=mlflow.get_tracking_uri())
            repository.delete_artifacts(checkpoints.ARTIFACT_PATH)
    except Exception as exc:  # the run is FINISHED either way
        reason = tracking.redact(str(exc)).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        print(f"galmorph: run {run_id} keeps its {checkpoints.ARTIFACT_PATH}/ artifact, which it no longer "
              f"needs: {reason}", file=sys.stderr)


def not_finished(exc: tracking.EndFailed) -> GalmorphError:
    """The error of a run whose training ended but which MLflow could not mark FINISHED (it
    stays RUNNING): how to finish it, where its checkpoint allows."""
    if checkpoints.latest(checkpoints.run_folder(exc.run_id)) is None:
        error = GalmorphError(str(exc))
    else:
        error = GalmorphError(f"{exc}; its checkpoint is kept: `galmorph train --resume {exc.run_id}` finishes it "
                              "once the tracking store answers")
    error.recorded = True
    return error
