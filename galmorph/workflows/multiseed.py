"""One configuration repeated over several seeds, and sweeps of it over class schemes.

`run(config, seeds)` opens a parent MLflow run (tag `galmorph.kind=multiseed`), trains one
nested child run per seed through `galmorph.workflows.train.run` (or, with `hierarchy=`, one
hierarchical classifier per seed through `galmorph.workflows.hierarchy.run`), and logs on the parent
`<metric>_mean` and `<metric>_std` of every metric the children share (every `test_*`
metric, best validation accuracy, timings) plus `n_seeds`, with `seeds.csv` (one row per
seed: its child run and metrics) as an artifact. With `ensemble` (the default; not for
hierarchies) the seeds share the first seed's split, so a seed changes the augmentation order
and the initial weights, and the parent logs the seeds' ensemble (galmorph.workflows.ensemble:
ensemble_test_* metrics and an ensemble model); without it a seed changes the split too. The
data (and a `max_images` subset) stay the same.

`sweep(config, seeds, schemes)` does that for several schemes under one parent run
(`galmorph.kind=sweep`); `expand_schemes` turns `pairs` / `pairs:<scheme>` into every class
pair of a scheme (the paper's binary classifiers).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

import numpy as np

from galmorph import tracking
from galmorph.config import TrainConfig, nested, option
from galmorph.core.errors import GalmorphError
from galmorph.core.metrics import metric_safe
from galmorph.data import registry, schemes
from galmorph.tracking import model_registry
from galmorph.tracking.artifacts import no_progress_bar
from galmorph.tracking.tags import KIND, MODEL_URI, PARENT, RUN_NAME, run_name
from galmorph.workflows import ensemble as ens
from galmorph.workflows import hierarchy as hier
from galmorph.workflows import resume, train
from galmorph.workflows.prepare import SYNTHETIC_DATA_SEED, check_data_settings


@dataclass
class MultiseedConfig:
    """Settings of `galmorph multiseed` (MLproject `multiseed` and `pairs`): a training
    configuration and the seeds (and schemes) to repeat it over."""

    base: TrainConfig = nested(TrainConfig)
    seeds: str = option("3", "a count (3: seeds SEED..SEED+2) or a list (0,1,2)")
    ensemble: bool = option(True, "the seeds share one split (the first seed's; seeds then vary the weights and the "
                            "augmentation order) and the parent run logs their ensemble: its test metrics "
                            "(ensemble_test_*) and, with log_model, its model; false: each seed its own split, no ensemble")
    schemes: str = option("", "comma-separated schemes to sweep; `pairs` or `pairs:<scheme>` = every class pair of the "
                          "default or named scheme (the paper's binary classifiers); empty: --scheme", mlproject=False)


def parse_seeds(text, first: int = 0) -> list[int]:
    """`"3"` -> [first, first+1, first+2]; `"0,4,7"` -> exactly those seeds."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            n = int(float(text))
            if n < 1:
                raise GalmorphError(f"seeds must be a count of at least 1 or a list like 0,1,2; got {text!r}")
            seeds = list(range(first, first + n))
    except ValueError:
        raise GalmorphError(f"seeds must be a count (3) or a comma-separated list (0,1,2); got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise GalmorphError(f"seeds must be distinct non-negative integers; got {text!r}")
    return seeds


def aggregate(results: list[dict]) -> dict[str, float]:
    """`<key>_mean` and `<key>_std` of every finite numeric key all `results` share, and
    `n_seeds`. The std is the sample standard deviation (ddof=1); 0 for a single result."""
    if not results:
        raise GalmorphError("nothing to aggregate: no run finished")
    keys = set.intersection(*(set(r) for r in results))
    out: dict[str, float] = {"n_seeds": float(len(results))}
    for key in sorted(keys):
        values = [r[key] for r in results]
        if not all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in values):
            continue
        arr = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(arr)):
            continue
        out[f"{key}_mean"] = float(arr.mean())
        out[f"{key}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return out


def summary_line(label: str, summary: dict) -> str:
    """`label: test_accuracy=m+-s ...`: a group's mean and std over seeds (aggregate), or the
    plain test metrics of a single run."""
    keys = ("test_accuracy", "test_balanced_accuracy", "test_macro_f1")
    parts = [f"{k}={summary[k + '_mean']:.4f}+-{summary[k + '_std']:.4f}" for k in keys if k + "_mean" in summary]
    return f"{label}: " + "  ".join(parts or [f"{k}={summary[k]:.4f}" for k in keys if k in summary])


def run(config: TrainConfig, seeds: list[int], *, hierarchy: str | None = None, nested: bool = False,
        extra_tags: dict | None = None, ensemble: bool = True) -> dict[str, float]:
    """Train `config` once per seed as nested runs of one parent run; return the aggregates.

    `ensemble` (not with a hierarchy): the seeds train on the first seed's split and the parent
    logs their ensemble (galmorph.workflows.ensemble); its metrics join the aggregates."""
    ensemble = ensemble and not hierarchy

    def check():
        resume.only_in_train(config, "multiseed")
        check_data_settings(config.validate())
        if not seeds:
            raise GalmorphError("no seeds given; pass --seeds 3 or --seeds 0,1,2")

    problem = tracking.validated(check)  # raised inside the run: it ends FAILED with the reason
    tracking.configure(config.experiment)
    import mlflow  # after the settings are checked: importing it takes seconds
    scheme = hier.scheme_tag(hierarchy) if hierarchy else config.scheme
    name = config.run_name or run_name(config.model, config.backend, config.dataset, scheme, f"x{len(seeds)}")
    tags = {"model": config.model, "backend": config.backend, "dataset": config.dataset, "scheme": scheme,
            KIND: "multiseed", "seeds": ",".join(map(str, seeds)), **(extra_tags or {})}
    with tracking.run(name, nested=nested, tags=tags, system_metrics=not nested) as parent:
        if problem is not None:
            raise problem
        if config.register_as:  # a store without a registry: before the seeds train
            model_registry.check_store()
        params = {k: v for k, v in config.to_dict().items() if k != "seed"}
        tracking.log_params({**params, "seeds": ",".join(map(str, seeds)), "n_seeds": len(seeds),
                             "hierarchy": hierarchy or ""})
        rows, results, children = [], [], []
        shared = _SharedSplit(config.split_file) if ensemble else None
        for seed in seeds:
            # the group registers one model (below), not one per seed
            child = config.replace(seed=seed, run_name=f"{name}-seed{seed}", register_as="", alias="",
                                   split_file=shared.path if shared else config.split_file)
            # nested runs take their name from the mlflow.runName tag
            child_tags = {PARENT: parent.info.run_id, RUN_NAME: child.run_name}
            if hierarchy:
                metrics = hier.run(child, hierarchy, nested=True, extra_tags=child_tags)
            else:
                metrics = train.run(child, nested=True, extra_tags=child_tags)
            done = _child(mlflow, parent.info, seed)
            children.append(done)
            if shared is not None:
                shared.take(mlflow.MlflowClient(), done)
            results.append(metrics)
            rows.append({"seed": seed, "run_id": done.info.run_id, **metrics})
            mlflow.set_tag("scheme", done.data.tags.get("scheme", scheme))  # resolved, e.g. default -> 4way
            mlflow.log_metrics({"seeds_done": float(len(results))})
        summary = aggregate(results)
        mlflow.log_metrics(summary)
        if shared is not None:
            shared.close()
            summary.update(ens.log(mlflow.MlflowClient(), children, parent.info.run_id, config.log_model))
        _log_table(rows, summary)
        if "test_accuracy_mean" in summary:
            mlflow.set_tag("test_accuracy", f"{summary['test_accuracy_mean']:.4f} +- {summary['test_accuracy_std']:.4f}")
        if config.register_as:
            _register(config, parent.info.run_id, rows)
        return summary


def hierarchies(config) -> str:
    """`galmorph hierarchy` (a hierarchy.HierarchyConfig): one hierarchical classifier, or one
    per seed under a parent run; its summary line."""
    seeds = parse_seeds(config.seeds, config.base.seed)
    if len(seeds) == 1:
        summary = hier.run(config.base.replace(seed=seeds[0]), config.tree)
    else:
        summary = run(config.base, seeds, hierarchy=config.tree)
    return summary_line(hier.scheme_tag(config.tree), summary)


def expand_schemes(config: TrainConfig, text: str) -> list[str]:
    """A comma-separated list of schemes; `pairs` / `pairs:<scheme>` expand to every class
    pair of that scheme (default: the dataset's default), e.g. 4way:E-vs-S0, 4way:E-vs-Sp, ..."""

    out: list[str] = []
    for item in [s.strip() for s in str(text).split(",") if s.strip()] or [config.scheme]:
        if item == "pairs" or item.startswith("pairs:"):
            base = item.partition(":")[2] or "default"
            data = _load(config, base)
            out += schemes.pair_names(data.scheme, data.class_names)
        else:
            out.append(item)
    if len(set(out)) != len(out):
        raise GalmorphError(f"scheme list {text!r} names a scheme twice; list each once")
    return out


def sweep(config: TrainConfig, seeds: list[int], scheme_list: list[str], ensemble: bool = True) -> dict[str, dict]:
    """`run` for each scheme; several schemes share one parent run (`galmorph.kind=sweep`)."""
    import mlflow

    if len(scheme_list) == 1:
        return {scheme_list[0]: run(config.replace(scheme=scheme_list[0]), seeds, ensemble=ensemble)}

    def check():
        config.validate()
        if config.register_as:
            raise GalmorphError(f"register_as {config.register_as} registers one model; with several schemes "
                                f"({', '.join(scheme_list)}) run multiseed once per scheme to register each")

    problem = tracking.validated(check)
    tracking.configure(config.experiment)
    name = config.run_name or run_name(config.model, config.backend, config.dataset, "sweep")
    tags = {"model": config.model, "backend": config.backend, "dataset": config.dataset,
            KIND: "sweep", "schemes": ",".join(scheme_list)[:5000]}
    out = {}
    with tracking.run(name, tags=tags) as parent:
        if problem is not None:
            raise problem
        tracking.log_params({"schemes": ",".join(scheme_list), "seeds": ",".join(map(str, seeds))})
        for scheme in scheme_list:
            cfg = config.replace(scheme=scheme, run_name="")
            out[scheme] = run(cfg, seeds, nested=True, ensemble=ensemble,
                              extra_tags={PARENT: parent.info.run_id, RUN_NAME: f"{name}-{scheme}"})
            acc = out[scheme].get("test_accuracy_mean")
            if acc is not None and math.isfinite(acc):

                mlflow.log_metric(f"test_accuracy_mean_{metric_safe(scheme)}", acc)
    return out


def _register(config: TrainConfig, parent_id: str, rows: list[dict]) -> None:
    """Register the group's model under config.register_as: the parent's own model where it
    logged one (an ensemble of the seeds), else the member with the best validation accuracy
    (never chosen by test accuracy, which the version's tags report)."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    scheme = parent.data.tags.get("scheme", config.scheme)
    uri = parent.data.tags.get(MODEL_URI)
    if uri:  # the ensemble (galmorph.workflows.ensemble): its ensemble_test_* scores are the version's test_*
        metrics = {k.removeprefix("ensemble_"): v for k, v in parent.data.metrics.items()
                   if k.startswith(f"{ens.PREFIX}_")}
        origin, source = f"ensemble of seeds {parent.data.tags.get('seeds', '')}", parent_id
    else:
        best = max(rows, key=lambda r: r.get("best_val_accuracy", float("-inf")))
        uri = client.get_run(best["run_id"]).data.tags.get(MODEL_URI)
        if not uri:
            raise GalmorphError(f"run {best['run_id']} logged no model to register; drop --log-model false")
        metrics = {k: v for k, v in best.items() if k.startswith("test_")}
        origin = f"seed {best['seed']}, the best of {len(rows)} seeds by validation accuracy"
        source = best["run_id"]
    text = model_registry.description(config, scheme, metrics, origin)
    model_registry.register(uri, config.register_as, config.alias, metrics, text, parent_id, source_run=source)
    print(model_registry.summary_line(client.get_run(parent_id).data.tags) + f" ({origin})", flush=True)


class _SharedSplit:
    """The split every seed of an ensemble trains on: `split_file` if given, else the first
    seed's splits.json (downloaded once that run is done; a temporary copy)."""

    def __init__(self, split_file: str):
        self.path = split_file
        self._tmp = None

    def take(self, client, run) -> None:
        if self.path:
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="galmorph-split-")
        with no_progress_bar():
            self.path = client.download_artifacts(run.info.run_id, "splits.json", self._tmp.name)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _child(mlflow, parent, seed: int):
    """The finished child run of `parent` (a RunInfo) for `seed`."""
    (run,) = mlflow.MlflowClient().search_runs(
        [parent.experiment_id], f"tags.`{PARENT}` = '{parent.run_id}' and params.seed = '{seed}'")
    return run


def _load(config: TrainConfig, scheme: str):
    return registry.load(config.dataset, scheme, schemes_file=config.schemes_file or None, image_size=config.image_size,
                         synthetic_n=config.synthetic_n, synthetic_noise=config.synthetic_noise, seed=SYNTHETIC_DATA_SEED)


def _log_table(rows: list[dict], summary: dict) -> None:
    import json

    import pandas as pd

    with tracking.artifact_dir() as out:
        pd.DataFrame(rows).to_csv(out / "seeds.csv", index=False)
        (out / "multiseed.json").write_text(json.dumps(summary, indent=2))
