"""`retrain(RetrainConfig)`: the best trial of a study (or the one named), trained on train+validation for a fixed
number of epochs and evaluated once on the test split, which no trial decision has used."""

from __future__ import annotations

import contextlib

from galmorph import tracking
from galmorph.config import TrainConfig
from galmorph.core.errors import GalmorphError
from galmorph.tracking import model_registry, redact
from galmorph.tracking.tags import ROLE
from galmorph.workflows import prepare, train
from galmorph.workflows.tune.config import BASELINE, DEFAULT_STORAGE, RetrainConfig
from galmorph.workflows.tune.storage import open_storage, quiet_optuna


def retrain(config: RetrainConfig) -> dict:
    """Train the best trial's configuration on train+validation and test it once.

    The split is the study's (same seed, fractions, max_images), so the test images are the
    ones no trial decision used. Early stopping is off: the run trains a fixed number of
    epochs (the trial's best epoch + 1 unless given) and logs `trial_val_accuracy` (and, for
    the best trial, `study_best_val_accuracy`)
    beside its test metrics; its val_* metrics are measured on images it trained on (tag
    val_merged_into_train=true).
    """
    import mlflow

    model_registry.check_names(config.register_as, config.alias)  # before the study is opened
    storage_url = config.storage or DEFAULT_STORAGE
    study, best = _chosen_trial(config.study_name, storage_url, config.trial)
    base_dict = dict(study.user_attrs.get("galmorph_base_config") or {})
    if not base_dict:
        raise GalmorphError(f"study {config.study_name!r} was not made by galmorph tune (no galmorph_base_config)")
    base = TrainConfig(**base_dict)
    epochs = config.epochs or max(1, int(best.user_attrs.get("best_epoch", base.epochs - 1)) + 1)
    cfg = base.replace(**best.user_attrs.get("config_overrides", {}), epochs=epochs, patience=0,
                       log_model=config.log_model, tta=config.tta, threads=config.threads,
                       register_as=config.register_as, alias=config.alias,
                       experiment=config.experiment, dataset=config.dataset or base.dataset,
                       run_name=config.run_name or f"{config.study_name}-retrain-trial-{best.number}")
    cfg.validate()
    tracking.check_store()  # before the data is loaded
    prepared = prepare.prepare(cfg, merge_val_into_train=True)
    want = (study.user_attrs.get("galmorph_identity") or {}).get("dataset_digest")
    if want and prepared.data.digest() != want:
        raise GalmorphError(f"the dataset {cfg.dataset} differs from the study's (digest {prepared.data.digest()} "
                            f"vs {want}); pass --dataset with the study's data")
    tags = {"optuna_study": config.study_name, "optuna_trial_number": str(best.number), ROLE: "retrain",
            "val_merged_into_train": "true", "study_best_run_id": best.user_attrs.get("mlflow_run_id") or "",
            "optuna_storage": redact(storage_url)}
    started = []
    result = train.run(cfg, prepared=prepared, extra_tags=tags, started=started.append)
    run_id = started[0]
    is_best = config.trial < 0 or best.number == study.best_trial.number
    mlflow.MlflowClient().log_metric(run_id, "trial_val_accuracy", float(best.value))
    if is_best:
        mlflow.MlflowClient().log_metric(run_id, "study_best_val_accuracy", float(best.value))
    out = {"study_name": config.study_name, "trial": best.number, "best": is_best,
           "trial_val_accuracy": float(best.value),
           "test_accuracy": float(result["test_accuracy"]), "epochs": epochs, "run_id": run_id,
           "n_train": int(prepared.split.train.size)}
    with contextlib.suppress(Exception):
        study.set_user_attr("retrain" if is_best else f"retrain_trial_{best.number}", out)
    print(f"retrained trial {best.number} of {config.study_name} for {epochs} epochs on train+validation: "
          f"{'best ' if is_best else ''}trial's val accuracy {best.value:.4f}, test accuracy {out['test_accuracy']:.4f} (run {run_id})")
    registered = model_registry.summary_line(mlflow.MlflowClient().get_run(run_id).data.tags)
    if registered:
        print(registered)
    return out


def _chosen_trial(study_name: str, storage_url: str, number: int = -1):
    """(study, its best trial, or trial `number` when >= 0: 0 is the base configuration,
    wherever Optuna reran it); a one-line GalmorphError when there is no such study, or no
    such complete trial."""
    optuna = quiet_optuna()
    if not study_name:
        raise GalmorphError("retrain needs --study-name (and --storage where the study is not in the default)")
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise GalmorphError(f"no study {study_name!r} in {redact(storage_url)}; it has: "
                            f"{', '.join(names) or 'none'}") from None
    if number >= 0:
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        # trial 0 is the base configuration; if its worker died, Optuna reran it under a new number
        chosen = next((t for t in done if t.user_attrs.get(BASELINE)), None) if number == 0 else None
        chosen = chosen or next((t for t in done if t.number == number), None)
        if chosen is None:
            raise GalmorphError(f"study {study_name!r} has no complete trial {number}; its complete trials: "
                                f"{', '.join(str(t.number) for t in done) or 'none'}")
        return study, chosen
    try:
        return study, study.best_trial
    except ValueError:
        raise GalmorphError(f"study {study_name!r} has no complete trial to retrain") from None
