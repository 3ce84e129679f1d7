"""Hierarchical classifiers built from binary networks (experiments/hierarchies.yaml).

A tree (nested lists of class names of a flat scheme, e.g. [[E, S0], [Sp, Irr]]) becomes
one network per inner node, each trained by `galmorph.workflows.train.run` as a nested MLflow run on
the derived scheme of its children (`4way:E/S0-vs-Sp/Irr`, galmorph.data.schemes), on the
galaxies of its classes only, and on the flat scheme's split: a node never trains or stops
early on a galaxy of the common test split. Every node then predicts every test galaxy; the
probability of a class is the product of the node probabilities along its path from the
root, and the combined prediction is evaluated by `galmorph.core.metrics.evaluate` like any
network (the parent run, tag `galmorph.kind=hierarchy`, scheme `hierarchy:<name>`).
`test_greedy_accuracy` is the accuracy of following each node's arg-max instead.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galmorph import tracking
from galmorph.config import TrainConfig, nested, option
from galmorph.core import metrics
from galmorph.core.errors import GalmorphError
from galmorph.core.paths import load_yaml
from galmorph.data import augment, registry, schemes, splits
from galmorph.tracking import artifacts
from galmorph.tracking.tags import KIND, PARENT, ROLE, RUN_NAME, run_name
from galmorph.workflows import prepare, resume, train
from galmorph.workflows.prepare import Prepared


@dataclass(frozen=True)
class Node:
    """An inner node: its position in the tree, and the base classes under each child."""

    id: str  # "root", "root.0", "root.1.0", ...
    groups: tuple[tuple[str, ...], ...]
    scheme: str  # the derived scheme it is trained on

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(schemes.MERGE.join(g) for g in self.groups)


@dataclass
class HierarchyConfig:
    """Settings of `galmorph hierarchy` (MLproject `hierarchical`): a training configuration
    (its scheme comes from the tree), the tree and the seeds."""

    base: TrainConfig = nested(TrainConfig, exclude=("scheme", "register_as", "alias"))
    tree: str = option("early_late_4way", "hierarchy of experiments/hierarchies.yaml")
    seeds: str = option("1", "a count or a list of seeds, as for multiseed")


def catalogue() -> dict:
    return load_yaml("hierarchies.yaml")


def names() -> list[str]:
    return sorted(k for k in catalogue() if k != "aliases")


def scheme_tag(name: str) -> str:
    """The `scheme` tag of a hierarchical classifier's runs."""
    return f"hierarchy:{name}"


def entry(name: str) -> dict:
    cat = catalogue()
    if name == "aliases" or name not in cat:
        raise GalmorphError(f"unknown hierarchy {name!r}; choose one of {', '.join(names())} "
                            "(experiments/hierarchies.yaml)")
    e = cat[name]
    if not isinstance(e.get("tree"), list) or not isinstance(e.get("base"), dict):
        raise GalmorphError(f"hierarchy {name} needs a `tree` (nested lists) and a `base` (dataset -> scheme)")
    return e


def base_scheme(name: str, dataset_key: str) -> str:
    """The flat scheme hierarchy `name` replaces on dataset `dataset_key`."""
    base = entry(name)["base"]
    return str(base.get(dataset_key, base.get("default", "default")))


def dataset_key(dataset: str) -> str:
    return dataset if dataset in registry.DATASETS else Path(dataset).stem


def nodes(tree, class_names, base: str, aliases: dict | None = None) -> list[Node]:
    """The inner nodes of `tree`, root first, with leaf names resolved to `class_names`
    (directly or through `aliases`: class name -> name used in trees). Every class must be
    a leaf exactly once."""
    class_names = [str(c) for c in class_names]
    by_alias = {str(v): str(k) for k, v in (aliases or {}).items() if str(k) in class_names}

    def resolve(leaf) -> str:
        leaf = str(leaf)
        if leaf in class_names:
            return leaf
        if leaf in by_alias:
            return by_alias[leaf]
        raise GalmorphError(f"hierarchy leaf {leaf!r} is not a class of scheme {base} ({', '.join(class_names)})")

    def leaves(t) -> list[str]:
        return [resolve(t)] if not isinstance(t, list) else [c for child in t for c in leaves(child)]

    out: list[Node] = []

    def walk(t, node_id):
        if not isinstance(t, list):
            return
        if len(t) < 2:
            raise GalmorphError(f"hierarchy node {node_id} has {len(t)} child; an inner node needs two or more")
        groups = tuple(tuple(leaves(child)) for child in t)
        out.append(Node(node_id, groups, schemes.derived_name(base, groups)))
        for i, child in enumerate(t):
            walk(child, f"{node_id}.{i}")

    walk(tree, "root")
    every = leaves(tree)
    if sorted(every) != sorted(class_names):
        raise GalmorphError(f"hierarchy leaves {every} must name every class of scheme {base} ({', '.join(class_names)}) once")
    return out


def combine(class_names, node_list: list[Node], node_proba: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) class probabilities: for each class, the product over its path of the node
    probabilities of the child holding it."""
    class_names = [str(c) for c in class_names]
    n = next(iter(node_proba.values())).shape[0]
    out = np.ones((n, len(class_names)), dtype=np.float64)
    for node in node_list:
        p = node_proba[node.id]
        for k, name in enumerate(class_names):
            child = next((i for i, g in enumerate(node.groups) if name in g), None)
            if child is not None:
                out[:, k] *= p[:, child]
    return out.astype(np.float32)


def greedy(class_names, node_list: list[Node], node_proba: dict[str, np.ndarray]) -> np.ndarray:
    """int (N,) predicted class when each node's arg-max picks the branch to follow."""
    class_names = [str(c) for c in class_names]
    by_id = {node.id: node for node in node_list}
    n = next(iter(node_proba.values())).shape[0]
    pred = np.empty(n, dtype=np.int64)
    for i in range(n):
        node_id = "root"
        while True:
            node = by_id[node_id]
            child = int(np.argmax(node_proba[node_id][i]))
            group = node.groups[child]
            if len(group) == 1 or f"{node_id}.{child}" not in by_id:
                pred[i] = class_names.index(group[0])
                break
            node_id = f"{node_id}.{child}"
    return pred


def node_prepared(base, node: Node):
    """The base Prepared restricted to the classes of `node`, relabelled by its children,
    with the base split restricted likewise (same galaxies in train/val/test)."""

    data, split = base.data, base.split
    lut = schemes.regroup(data.class_names, node.groups)
    keep = lut[data.labels] >= 0
    kept = np.flatnonzero(keep)
    sub = data.subset(kept)
    sub = dataclasses.replace(sub, labels=lut[data.labels[kept]], class_names=node.class_names, scheme=node.scheme)
    new_pos = np.full(len(data), -1, dtype=np.int64)
    new_pos[kept] = np.arange(kept.size)
    parts = [new_pos[p][keep[p]] for p in (split.train, split.val, split.test)]
    node_split = splits.Split(*parts, split.seed, split.val_fraction, split.test_fraction)
    maker = augment.BatchMaker(sub.images, base.maker.channels, base.maker.crop / base.maker.size)
    return Prepared(sub, node_split, maker)


def run(config: TrainConfig, name: str, *, nested: bool = False, extra_tags: dict | None = None) -> dict:
    """Train the hierarchy `name` on `config`'s data (one nested run per node), evaluate the
    combined classifier on the flat scheme's test split and log it; return its metrics."""
    import mlflow

    tree_entry = entry(name)
    if config.devices != 1:
        raise GalmorphError("a hierarchical classifier trains its nodes in one process; use devices=1")
    resume.only_in_train(config, "a hierarchy")
    base = base_scheme(name, dataset_key(config.dataset))
    base_config = config.replace(scheme=base)
    problem = tracking.validated(base_config.validate)  # raised inside the run: it ends FAILED
    tracking.configure(config.experiment)
    tag = scheme_tag(name)
    name = config.run_name or run_name(config.model, config.backend, config.dataset, tag)
    tags = {"model": config.model, "backend": config.backend, "dataset": config.dataset, "scheme": tag,
            KIND: "hierarchy", "base_scheme": base, **(extra_tags or {})}
    with tracking.run(name, nested=nested, tags=tags, system_metrics=not nested) as parent:
        if problem is not None:
            raise problem
        prepared = prepare.prepare(base_config)
        data, split = prepared.data, prepared.split
        node_list = nodes(tree_entry["tree"], data.class_names, data.scheme, catalogue().get("aliases"))
        tracking.log_params({**config.to_dict(), "hierarchy": name, "base_scheme": data.scheme,
                             "class_names": ",".join(data.class_names), "n_classes": len(data.class_names),
                             "nodes": " | ".join(f"{n.id}: {n.scheme}" for n in node_list),
                             "n_train": split.train.size, "n_val": split.val.size, "n_test": split.test.size,
                             "dataset_digest": data.digest()})
        test_batches = lambda: augment.eval_batches(prepared.maker, split.test, config.eval_batch_size)  # noqa: E731
        node_proba, node_runs, final = {}, {}, {}
        for node in node_list:
            captured = {}

            def after_fit(backend, model, _prepared, captured=captured):
                captured["proba"] = backend.predict_proba(model, test_batches())
                captured["run_id"] = mlflow.active_run().info.run_id  # the node's run

            node_config = config.replace(scheme=node.scheme, run_name=f"{name}-{node.id}", explain=False)
            node_metrics = train.run(node_config, prepared=node_prepared(prepared, node), nested=True,
                                     extra_tags={ROLE: "hierarchy_node", PARENT: parent.info.run_id,
                                                 "hierarchy": name, "hierarchy_node": node.id,
                                                 RUN_NAME: node_config.run_name},
                                     after_fit=after_fit)
            node_proba[node.id] = captured["proba"]
            node_runs[node.id] = captured["run_id"]
            key = node.id.replace(".", "_")
            final[f"node_{key}_test_accuracy"] = node_metrics["test_accuracy"]
            for timing in ("fit_time_s", "steady_epoch_time_s", "first_epoch_time_s"):
                if timing in node_metrics:
                    final[f"node_{key}_{timing}"] = node_metrics[timing]
        y = data.labels[split.test]
        proba = combine(data.class_names, node_list, node_proba)
        report = metrics.evaluate(y, proba, data.class_names)
        final.update(metrics.flat_metrics(report, "test"))
        final["test_greedy_accuracy"] = float(np.mean(greedy(data.class_names, node_list, node_proba) == y))
        final["fit_time_s"] = float(sum(v for k, v in final.items() if k.startswith("node_") and k.endswith("_fit_time_s")))
        mlflow.log_metrics(final)
        with tracking.artifact_dir() as out:
            _write_artifacts(out, config, name, tree_entry, node_list, node_runs, data, split, report, proba, node_proba)
        return final


def _write_artifacts(out: Path, config, name, tree_entry, node_list, node_runs, data, split, report, proba, node_proba):
    title = f"{config.model} {config.backend} on {Path(data.name).stem} ({scheme_tag(name)})"
    artifacts.write_evaluation(out, report, title)
    (out / "hierarchy.json").write_text(json.dumps({
        "name": name, "description": str(tree_entry.get("description", "")).strip(), "tree": tree_entry["tree"],
        "base_scheme": data.scheme, "class_names": list(data.class_names),
        "nodes": [{"id": n.id, "scheme": n.scheme, "children": [list(g) for g in n.groups], "run_id": node_runs[n.id]}
                  for n in node_list],
        "combination": "product of node probabilities along the path",
    }, indent=2))
    columns = artifacts.prediction_columns(data, split, proba)
    for node in node_list:
        for i, c in enumerate(node.class_names):
            columns[f"{node.id}_p_{metrics.metric_safe(c)}"] = node_proba[node.id][:, i]
    artifacts.write_predictions(out, columns)
    artifacts.write_split(out, config, data, split, data.digest())
