"""From what a user writes to a logged model: a run id, `runs:/<id>/model`,
`models:/NAME/VERSION`, `models:/NAME@ALIAS`, a logged model's `models:/m-<id>`, or a
multiseed parent run id (its ensemble model). One implementation for every command that
takes a model (`predict`, `--init-from`, serving's registry look-ups).
"""

from __future__ import annotations

from dataclasses import dataclass

from galmorph import tracking
from galmorph.core.errors import GalmorphError
from galmorph.tracking import tags

BUSY = "TEMPORARILY_UNAVAILABLE"  # a store that failed to answer: not "no such model"


@dataclass(frozen=True)
class Resolved:
    """A logged model: `model_uri` fixed (an alias may later move), and the run that logged it."""

    ref: str  # as the user wrote it
    run_id: str
    model_uri: str
    run: object  # the mlflow.entities.Run of run_id


def resolve(ref: str, flag: str = "model") -> Resolved:
    """The logged model `ref` names; a one-line GalmorphError starting with `flag` if there is
    none (no such run, registered version or alias; a run that logged no model). Store
    failures that are not "no such thing" are raised as they are."""
    import mlflow

    ref = str(ref).strip()
    client = mlflow.MlflowClient()
    uri = ref if ref.startswith("runs:/") else None
    if ref.startswith("models:/"):
        run_id, uri = _registered(client, ref, flag)
    elif ref.startswith("runs:/"):
        run_id = ref[len("runs:/"):].split("/")[0]
    else:
        run_id = ref
    if not run_id:
        raise GalmorphError(f"{flag} {ref!r}: not a run id or model URI; pass a run id, runs:/<run id>/model, "
                            "models:/NAME/VERSION or models:/NAME@ALIAS")
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == BUSY:
            raise
        raise GalmorphError(f"{flag} {ref}: no MLflow run {run_id!r} in the tracking store "
                            f"{tracking.redact(mlflow.get_tracking_uri())}; pass a run id or model URI from it") from None
    uri = uri or run.data.tags.get(tags.MODEL_URI)
    if not uri:
        raise GalmorphError(f"{flag} {ref}: run {run_id} logged no model; train it again with --log-model true")
    return Resolved(ref, run_id, uri, run)


def _registered(client, ref: str, flag: str) -> tuple[str, str]:
    """(run id, model URI) of a registered version or of a logged model (`models:/m-<id>`)."""
    import mlflow

    body = ref[len("models:/"):]
    name, at, alias = body.partition("@")
    try:
        if "/" not in body and not at:  # models:/m-<id>: a logged model (a run's model_uri tag), not the registry
            return client.get_logged_model(body).source_run_id, ref
        if at:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = body.rpartition("/")
            version = client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code == BUSY:
            raise
        raise GalmorphError(f"{flag} {ref}: no such registered model version in the tracking store "
                            f"{tracking.redact(mlflow.get_tracking_uri())}; check the name and version or alias") from None
    if not version.run_id:
        raise GalmorphError(f"{flag} {ref}: the registered model was not logged by a galmorph run")
    return version.run_id, version.source
