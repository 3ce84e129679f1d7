"""`run(config) -> metrics`: one tracked training run, whatever the backend.

The CLI (`galmorph train`), the MLproject entry points and Optuna trials all call this.
Everything here is backend-neutral: the backend only builds, fits and predicts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from galmorph import backends, presets, tracking
from galmorph.config import TrainConfig
from galmorph.core import calibration, checkpoints, decision, metrics, progress, specs, system, training
from galmorph.data import augment, registry
from galmorph.tracking import artifacts, liveness, model_registry, tags
from galmorph.tracking import figures as plots
from galmorph.workflows import explain, finetune, parallel, resume
from galmorph.workflows.prepare import Prepared, check_data_settings, hyper_from, prepare, train_stream


def run(config: TrainConfig, *, prepared: Prepared | None = None, trial=None, nested: bool = False,
        extra_tags: dict | None = None, after_fit=None, started=None, given: set[str] | None = None) -> dict:
    """Train, evaluate and log one run; return its final metrics (test_* and timings).

    `started(run_id)`, if given, is called as soon as the MLflow run exists (before any
    validation), so that callers know which run was theirs even when it fails.

    `after_fit(backend, model, prepared)`, if given, is called with the trained model (best
    weights restored) inside the run, e.g. to predict other images (galmorph.workflows.hierarchy).

    Under `mlflow run` the run that MLflow created is continued. Settings are checked before
    any MLflow call; bad ones end the run FAILED with the reason in the `failure_reason` tag,
    before any training (or, where the tracking store cannot be used, are raised alone).

    With `config.resume` the run of that id is continued from its checkpoint, with its own
    settings (galmorph.workflows.resume; `given`: the settings the user set, which must agree
    with them); every refusal comes before the run is touched.
    """
    resumed = None
    if config.resume:
        config, resumed, _ = resume.resolve(config, resume.given_settings(config, given))
        # a data-parallel run (one node or several) continues in one process, on the same global batch
        config = config.replace(devices=1)
        _hand_over_launcher_run(resumed.run_id)  # before configure, which reads MLFLOW_RUN_ID
    launched, config = parallel.data_parallel(config)
    if launched is not None:
        return launched
    problem = tracking.validated(lambda: (presets.check_name(config.preset), check_data_settings(config.validate())))
    tracking.configure(config.experiment)
    import mlflow  # after the settings are checked: importing it takes seconds
    run_tags = {"model": config.model, "backend": config.backend, "dataset": config.dataset,
                "scheme": config.scheme, "preset": config.preset, **liveness.process_tags(), **(extra_tags or {})}
    if resumed is not None:
        run_tags[tags.RESUMED_AT] = str(resumed.next_epoch(config.epochs))
        run_tags.update(_clear_failure(mlflow, resumed.run_id))
    name = config.run_name or tags.run_name(config.model, config.backend, config.dataset)
    # no system-metrics thread for a run that only records a settings error
    try:
        with tracking.run(name, nested=nested, tags=run_tags, system_metrics=not nested and problem is None,
                          run_id=resumed.run_id if resumed else None) as active:
            if started is not None:
                started(active.info.run_id)
            if problem is not None:
                raise problem
            # nested runs (multiseed children, trials, hierarchy nodes) say which run a line is from
            progress_prefix = name if nested else ""
            try:
                final = _run(config, active, prepared, trial, mlflow, after_fit, progress_prefix, resumed)
            except (Exception, KeyboardInterrupt):  # FAILED, or KILLED by Ctrl-C or SIGTERM
                resume.log_checkpoint(active.info.run_id)
                raise
    except tracking.EndFailed as exc:
        if exc.run_id != active.info.run_id:  # a nested run's (after_fit)
            raise
        raise resume.not_finished(exc) from None
    resume.finished(active.info.run_id, was_resumed=resumed is not None)
    return final


def _clear_failure(mlflow, run_id: str) -> dict:
    """A resumed run is no longer failed: its failure_reason moves to the resumed_after tag."""
    client = mlflow.MlflowClient()
    reason = client.get_run(run_id).data.tags.get(tags.FAILURE_REASON)
    if reason is None:
        return {}
    client.delete_tag(run_id, tags.FAILURE_REASON)
    return {tags.RESUMED_AFTER: reason}


def _hand_over_launcher_run(run_id: str) -> None:
    """Under `mlflow run -P resume=RUN_ID`, MLflow started a new run for this process: tag it
    with the run it resumed and continue that one instead (MLflow ends its own run itself)."""
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher and launcher != run_id:
        import mlflow

        mlflow.MlflowClient().set_tag(launcher, tags.RESUMED_RUN, run_id)
        del os.environ["MLFLOW_RUN_ID"]


def _epoch_log(mlflow):
    """The reporter's `log`: the epoch's metrics at step = epoch, and the run's heartbeat."""

    def log(metrics: dict, step: int) -> None:
        mlflow.log_metrics(metrics, step=step)
        mlflow.set_tag(liveness.HEARTBEAT, liveness.now_iso())

    return log


def _run(config, active, prepared, trial, mlflow, after_fit=None, progress_prefix="", resumed=None) -> dict:
    # the resolved values (preset and flags merged), the preset's name, and where they leave it
    tracking.log_params({**config.to_dict(), "preset_overrides": ",".join(presets.overrides(config)) or "-",
                         **{f"version_{k}": v for k, v in system.library_versions().items()}})
    if config.register_as:  # a store without a registry: before the training, not after
        model_registry.check_store()
    source = finetune.resolve(config.init_from) if config.init_from else None  # an unknown model: before the data
    t_data = time.perf_counter()
    prepared = prepared or prepare(config)
    data, split = prepared.data, prepared.split
    spec = specs.resolve(config.model, prepared.maker.input_shape, len(data.class_names), **config.arch_kwargs())
    new_output = finetune.check(source, config, spec) if source else False
    digest = _log_data(mlflow, data, split, spec, config.backend, log_input=resumed is None)  # a resumed run logged its input
    data_time = time.perf_counter() - t_data

    backend = backends.get(config.backend)
    info = backend.setup(config.seed, config.threads, config.devices)
    tracking.log_params({"device": info["device"], "device_name": info["device_name"], "framework": info["framework"],
                         "cpu_threads": config.threads or system.cpu_count(), **parallel.replica_params(info)})
    hyper = hyper_from(config, data.labels[split.train], len(data.class_names))
    tracking.log_params(backend.resolved(hyper))
    model = backend.build(spec, hyper)
    trainable, total = backend.count_params(model)
    built = trainable  # a zoo network's count is the zoo's own (tests pin both backends to timm's)
    if not spec.is_zoo and trainable != spec.trainable_params:
        raise RuntimeError(f"{config.backend} built {trainable} trainable parameters, the spec has {spec.trainable_params}")
    if source:
        finetune.start(backend, model, source, config, spec, new_output)
        trainable, total = backend.count_params(model)  # frozen layers no longer count as trainable
    if resumed is None:
        mlflow.log_metrics({"trainable_params": trainable, "total_params": total, "data_prep_time_s": data_time})
    else:  # the counts are logged already; this process's data time goes at the epoch it resumes at
        mlflow.log_metric("data_prep_time_s", data_time, step=resumed.next_epoch(config.epochs))

    model, reporter, fit_time = _fit(config, active, mlflow, backend, model, prepared, hyper, info, trial,
                                     progress_prefix, resumed)
    final, report, proba, temperature, rule = _evaluate(config, backend, model, prepared, reporter)
    final["fit_time_s"] = fit_time
    mlflow.log_metrics(final)
    backend.finish(final)

    labels = data.labels
    with tracking.artifact_dir() as out:
        _write_artifacts(out, config, data, split, spec, built, report, proba, reporter, digest)
        plots.reliability_diagram(labels[split.test], proba, calibration.apply_temperature(proba, temperature),
                                  out / "reliability_diagram.png", title=f"{config.model} {config.backend}: test split, "
                                  f"T = {temperature:.3f}")
    if config.explain:
        explain.log_explanations(backend, model, prepared, config)
    if after_fit is not None:
        after_fit(backend, model, prepared)
    if config.log_model:
        from galmorph.inference import (
            pyfunc,  # imports mlflow.pyfunc: only where a model is logged
        )

        uri = pyfunc.log_run_model(backend, model, config, prepared, temperature, active.info.run_id, rule.weights)
        mlflow.set_tag(tags.MODEL_URI, uri)
        if config.register_as:
            model_registry.register(uri, config.register_as, config.alias, final,
                                    model_registry.description(config, data.scheme, final), active.info.run_id)
    return final


def _log_data(mlflow, data, split, spec, backend: str, log_input: bool) -> str:
    """Tag and log what the run trains on (and, unless resumed, its MLflow dataset input); the digest."""
    digest = data.digest()
    mlflow.set_tags({"scheme": data.scheme, "dataset_digest": digest})
    tracking.log_params({
        "dataset_name": data.name, "dataset_digest": digest, "dataset_path": str(data.path),
        "scheme_resolved": data.scheme, "class_names": ",".join(data.class_names), "n_classes": len(data.class_names),
        "image_size_loaded": data.image_size, "input_shape": "x".join(map(str, spec.input_shape)),
        "stream_resolved": str(bool(data.meta.get("stream"))).lower(), "stream_reason": data.meta.get("stream_reason", "-"),
        "n_train": split.train.size, "n_val": split.val.size, "n_test": split.test.size,
        **({"zoo_builder": _builder_text(spec.builder(backend))} if spec.is_zoo else {
            "spec_trainable_params": spec.trainable_params, "spec_total_params": spec.total_params,
            "flatten_size": spec.flatten_size}),
    })
    if log_input:
        _log_dataset(mlflow, data, digest)
    return digest


def _builder_text(builder: dict) -> str:
    """What built a zoo network, for its run's parameters: 'timm.create_model resnet18'."""
    module = "timm.create_model" if builder["call"] == "timm" else builder["module"]
    return f"{module} {builder['name']}"


def _fit(config, active, mlflow, backend, model, prepared, hyper, info, trial, progress_prefix, resumed):
    """The backend's fit with the reporter, progress lines and checkpoints: (model, reporter, seconds)."""
    data, split, maker = prepared.data, prepared.split, prepared.maker
    stream = train_stream(config, prepared)
    val_batches = lambda: augment.eval_batches(maker, split.val, config.eval_batch_size)  # noqa: E731
    shown = None if config.quiet else progress.EpochProgress(hyper.epochs, stream.images_per_epoch,
                                                             prefix=progress_prefix)
    reporter = training.EpochReporter(data.labels[split.val], patience=config.patience, log=_epoch_log(mlflow),
                                      trial=trial, progress=shown)
    saver = None
    if config.checkpoints and trial is None:  # a trial that dies is retried by Optuna, not resumed
        saver = checkpoints.Checkpointer(active.info.run_id, config.backend,
                                         tracking.redact(mlflow.get_tracking_uri()), resume=resumed)
    if resumed is not None:
        reporter.restore(resumed.reporter)
    if shown is not None:  # the first line, before the first epoch's wait
        shown.line(f"training {config.model} ({config.backend}, {info['device']}) on "
                   f"{Path(data.name).stem}/{data.scheme}: {split.train.size} train, {split.val.size} validation, "
                   f"{split.test.size} test images{' (streamed from the file)' if data.meta.get('stream') else ''}, "
                   f"up to {hyper.epochs} epoch{'s' if hyper.epochs != 1 else ''}")
        if resumed is not None:
            shown.line(f"resuming run {active.info.run_id} after epoch {resumed.epoch + 1} "
                       f"(checkpoint {resumed.folder})")
    t_fit = time.perf_counter()
    model = backend.fit(model, stream, val_batches, hyper, reporter, saver)
    return model, reporter, time.perf_counter() - t_fit


def _evaluate(config, backend, model, prepared, reporter):
    """Test metrics (plain, calibrated, over the 40 views with --tta) and timings:
    (final metrics, test report, test probabilities, temperature)."""
    data, split, maker = prepared.data, prepared.split, prepared.maker
    labels = data.labels
    t_eval = time.perf_counter()
    proba = backend.predict_proba(model, augment.eval_batches(maker, split.test, config.eval_batch_size))
    eval_time = time.perf_counter() - t_eval
    report = metrics.evaluate(labels[split.test], proba, data.class_names)
    final = metrics.flat_metrics(report, "test")
    val_proba = backend.predict_proba(model, augment.eval_batches(maker, split.val, config.eval_batch_size))
    val_report = metrics.evaluate(labels[split.val], val_proba, data.class_names)
    final.update({"best_val_loss": reporter.best_val_loss, "best_val_accuracy": val_report["accuracy"]})
    # one temperature fitted on the validation split; test_log_loss and test_ece are then the
    # calibrated ones, *_uncalibrated the network's own (predictions.csv holds the latter)
    temperature = calibration.fit_temperature(labels[split.val], val_proba)
    final.update({"temperature": temperature, **calibration.calibration_metrics(labels[split.test], proba, temperature)})
    rule = _decision_rule(labels[split.train], labels[split.val], labels[split.test],
                          calibration.apply_temperature(val_proba, temperature),
                          calibration.apply_temperature(proba, temperature), data.class_names, final)
    if config.tta != "false":  # test_tta_* over the 40 views, test_tta_dihedral_* over the 8
        k = len(data.class_names)  # one pass over the views: each view's raw and calibrated probabilities
        both = augment.view_mean(lambda batches: backend.predict_proba(model, batches), maker, split.test,
                                 config.eval_batch_size, config.tta,
                                 lambda p: np.concatenate([p, calibration.apply_temperature(p, temperature)], axis=1))
        tta_report = metrics.evaluate(labels[split.test], both[:, :k], data.class_names)
        # test_tta_decision_*: what `galmorph predict --tta` of the logged model answers (the
        # temperature on each view, the mean, then the decision rule chosen on validation)
        served = metrics.evaluate(labels[split.test], decision.reweighted(both[:, k:], rule.weights), data.class_names)
        prefix = "test_tta_" if config.tta == "true" else f"test_tta_{config.tta}_"
        for name, found in ((prefix, tta_report), (f"{prefix}decision_", served)):
            final.update({f"{name}{m}": found[m] for m in ("accuracy", "balanced_accuracy", "macro_f1")})
    final.update(reporter.timing())
    final.update({"test_inference_images_per_s": split.test.size / max(eval_time, 1e-9),
                  "peak_host_memory_mb": system.peak_rss_mb(), **backend.device_stats()})
    return final, report, proba, temperature, rule


def _decision_rule(y_train, y_val, y_test, val_calibrated, test_calibrated, class_names, final: dict):
    """The logged model's decision rule, chosen on the validation split (galmorph.core.decision)
    from the calibrated probabilities; its test metrics (test_decision_*) go into `final`."""
    prior = np.bincount(y_train, minlength=len(class_names)) / max(y_train.size, 1)
    rule = decision.choose(y_val, val_calibrated, prior)
    scores = decision.reweighted(test_calibrated, rule.weights)
    found = metrics.evaluate(y_test, scores, class_names)
    final.update({"decision_alpha": rule.alpha,
                  **{f"test_decision_{k}": found[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")},
                  **{f"test_decision_recall_{metrics.metric_safe(n)}": found["per_class"][n]["recall"]
                     for n in class_names}})
    return rule


def _log_dataset(mlflow, data: registry.Dataset, digest: str) -> None:
    from mlflow.data.meta_dataset import MetaDataset

    record = registry.DATASETS.get(data.name)
    uri = record.urls[0] if record and record.urls else str(Path(data.path).resolve())
    dataset = MetaDataset(_dataset_source(uri), name=f"{Path(data.name).stem}/{data.scheme}", digest=digest)
    try:
        mlflow.log_input(dataset, context="training")
    except mlflow.exceptions.MlflowException:
        # Two workers logging the same new dataset at once: the store's check-then-insert
        # lets one insert fail on the unique (experiment, name, digest). It exists now; link it.
        time.sleep(0.5)
        mlflow.log_input(dataset, context="training")


def _dataset_source(uri: str):
    """The MLflow dataset source of `uri`, chosen by its scheme: MLflow's own guess
    (resolve_dataset_source) warns that a local path "can be interpreted in multiple ways"."""
    import json

    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(uri)
    return get_dataset_source_from_json(json.dumps({"uri": uri}), source_type="local")


def closing_summary(run_id: str, final: dict) -> str:
    """A few lines that end `galmorph train`: test metrics, which run, where the model went,
    and how to look at it (credentials masked)."""
    import mlflow

    run = mlflow.MlflowClient().get_run(run_id)
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    epochs = int(final.get("epochs_run", 0))
    lines = [f"test accuracy {final['test_accuracy']:.4f}  balanced {final['test_balanced_accuracy']:.4f}  "
             f"macro F1 {final['test_macro_f1']:.4f}  ({epochs} epoch{'s' if epochs != 1 else ''}, "
             f"best {int(final.get('best_epoch', -1)) + 1})",
             f"run {run_id} ({run.info.run_name}) in experiment {experiment.name!r}"]
    model_uri = run.data.tags.get(tags.MODEL_URI)
    if model_uri:
        lines.append(f"model {model_uri}")
    registered = model_registry.summary_line(run.data.tags)
    if registered:
        lines.append(registered)
    store = _store_for_humans(mlflow.get_tracking_uri())
    if store.startswith(("http://", "https://")):
        lines.append(f"see it: {store.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}")
    else:
        lines.append(f"see it: mlflow ui --backend-store-uri {store}")
    return tracking.redact("\n".join(lines))


def _store_for_humans(uri: str) -> str:
    """The tracking URI, a relative local store made absolute so the command works from anywhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri.removeprefix("sqlite:///")
        return f"sqlite:///{Path(path).resolve()}" if path and not path.startswith(":") else uri
    if "://" not in uri and not uri.startswith("databricks"):
        return str(Path(uri).resolve())
    return uri


def _write_artifacts(out: Path, config, data, split, spec, trainable: int, report, proba, reporter, digest) -> None:
    import pandas as pd
    import yaml

    title = f"{config.model} {config.backend} on {Path(data.name).stem} ({data.scheme}, band {config.band})"
    artifacts.write_evaluation(out, report, title)
    plots.learning_curves(reporter.history, out / "learning_curves.png", title=title)
    artifacts.write_predictions(out, artifacts.prediction_columns(data, split, proba))
    artifacts.write_split(out, config, data, split, digest)
    (out / "config.yaml").write_text(yaml.safe_dump({**config.to_dict(), "resolved": {
        "scheme": data.scheme, "class_names": list(data.class_names), "input_shape": list(spec.input_shape),
        "trainable_params": trainable, "dataset_digest": digest}}, sort_keys=False))
    pd.DataFrame([r.__dict__ for r in reporter.history]).to_csv(out / "history.csv", index=False)
