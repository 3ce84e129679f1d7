"""The MLflow model registry: `--register-as NAME [--alias ALIAS]` on train, retrain and multiseed.

`check_names` applies MLflow's own rules for registered model names and aliases (plus one of
galmorph's: no `@` in a name, so that `models:/NAME@ALIAS` reads one way) before any data is
loaded; `check_store` asks the registry once, inside the run and before training, so that a
store without a registry fails then rather than after the training. `register` makes the
logged model a new version of NAME, with the run's test metrics as version tags and a
one-paragraph description, points ALIAS at it, and records name and version as run tags.

Any store MLflow 3 can track to holds a registry: SQLite, PostgreSQL/MySQL, a tracking server,
and also the file store (./mlruns, allowed only with MLFLOW_ALLOW_FILE_STORE=true), which
MLflow 3.17 still serves through its file-based registry (checked by hand: register_model,
set_registered_model_alias and loading `models:/NAME@ALIAS` all work there).
"""

from __future__ import annotations

from galmorph.core.errors import GalmorphError
from galmorph.tracking.secrets import redact

REGISTERED_NAME = "registered_model_name"  # run tag: the registered model this run's model became a version of
REGISTERED_VERSION = "registered_model_version"  # run tag: that version's number
REGISTERED_ALIAS = "registered_model_alias"  # run tag: the alias pointed at it, where one was given
SOURCE_RUN = "galmorph.source_run"  # version tag: the run whose model the version is (a member, for multiseed)


def check_names(name: str, alias: str) -> None:
    """A one-line GalmorphError for a name or alias MLflow would refuse, or an alias without a name."""
    if alias and not name:
        raise GalmorphError(f"alias {alias!r} needs a registered model to point into; pass --register-as NAME too")
    if not name:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    if "@" in name:
        raise GalmorphError(f"register_as {name!r}: a registered model name cannot contain '@' "
                            "(models:/NAME@ALIAS would read it as an alias); choose another name")
    try:
        validation._validate_model_name(name)
    except MlflowException as exc:
        raise GalmorphError(f"register_as {name!r} is not a valid MLflow registered model name: "
                            f"{exc.message.splitlines()[0]}") from None
    if not alias:
        return
    try:
        validation._validate_model_alias_name(alias)
        validation._validate_model_alias_name_reserved(alias)
    except MlflowException as exc:
        raise GalmorphError(f"alias {alias!r} is not a valid MLflow model alias: {exc.message.splitlines()[0]} "
                            "(e.g. champion, staging, best-4way)") from None


def check_store() -> None:
    """A one-line GalmorphError where the tracking store has no usable model registry."""
    import mlflow

    try:
        mlflow.MlflowClient().search_registered_models(max_results=1)
    except Exception as exc:  # an unsupported registry URI, a store without the registry's tables, ...
        raise GalmorphError(f"cannot register models in {redact(mlflow.get_registry_uri())}: "
                            f"{redact(str(exc).splitlines()[0].rstrip('.') if str(exc) else type(exc).__name__)}; "
                            "use a database-backed store (sqlite:///mlflow.db, PostgreSQL or an MLflow "
                            "server) or drop --register-as") from None


def description(config, scheme: str, metrics: dict, origin: str = "") -> str:
    """One paragraph for a version: network, backend, dataset/scheme, where the model comes from
    (`origin`, default: the run's seed) and its test accuracy."""
    width = f", width {config.width:g}" if config.width != 1 else ""
    acc = metrics.get("test_accuracy")
    scores = f"test accuracy {acc:.4f}" if acc is not None else "no test accuracy"
    if metrics.get("test_balanced_accuracy") is not None:
        scores += f", balanced accuracy {metrics['test_balanced_accuracy']:.4f}"
    if metrics.get("test_ece") is not None:
        scores += f", expected calibration error {metrics['test_ece']:.4f}"
    return (f"galmorph {config.model}{width} trained with {config.backend} on {config.dataset} "
            f"(scheme {scheme}, band {config.band}, {origin or f'seed {config.seed}'}): {scores}. "
            "Input: raw uint8 RGB images (N, side, side, 3), as galmorph's datasets store them.")


def register(model_uri: str, name: str, alias: str, metrics: dict, text: str, run_id: str,
             source_run: str = "") -> str:
    """Register `model_uri` (a logged model's models:/m-... URI) as a new version of `name`,
    tag it with `metrics` (the test_* scores; no timings) and describe it with `text`, point `alias` at it,
    and tag run `run_id` with the name and version; return the version number."""
    import mlflow

    client = mlflow.MlflowClient()
    version_tags = {k: f"{v:.6g}" for k, v in metrics.items()
                    if k.startswith("test_") and not k.endswith("_per_s") and isinstance(v, (int, float))}
    version_tags[SOURCE_RUN] = source_run or run_id
    version = mlflow.register_model(model_uri, name, tags=version_tags)
    client.update_model_version(name, version.version, description=text)
    run_tags = {REGISTERED_NAME: name, REGISTERED_VERSION: str(version.version)}
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
        run_tags[REGISTERED_ALIAS] = alias
    for key, value in run_tags.items():
        client.set_tag(run_id, key, value)
    return str(version.version)


def summary_line(run_tags: dict) -> str | None:
    """`registered models:/NAME/N = models:/NAME@ALIAS` for a run that registered its model, else None."""
    name, version = run_tags.get(REGISTERED_NAME), run_tags.get(REGISTERED_VERSION)
    if not name or not version:
        return None
    alias = run_tags.get(REGISTERED_ALIAS)
    return f"registered models:/{name}/{version}" + (f" = models:/{name}@{alias}" if alias else "")
