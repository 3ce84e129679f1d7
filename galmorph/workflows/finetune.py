"""Fine-tuning (`--init-from MODEL [--freeze conv]`): start a run from a logged model's weights.

Backend-neutral: finding the source model (a run id, `runs:/<id>/model`, `models:/NAME/VERSION`
or `models:/NAME@ALIAS`: galmorph.inference.resolve), checking that its network fits the one this run builds (from the
source run's `config.yaml`, before any training) and recording where the run started (tags
`init_from`, `init_from_run`, `init_output`). Copying the weights and freezing layers is the
backend's `load_weights`. A source with another class count fits only under `--freeze conv`,
which trains a new, re-initialised output layer on the source's features.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from galmorph import tracking
from galmorph.core import specs
from galmorph.core.errors import GalmorphError
from galmorph.inference.resolve import resolve as resolve_model
from galmorph.tracking.artifacts import no_progress_bar

INIT_FROM = "init_from"  # tag: the model URI the weights came from
INIT_FROM_RUN = "init_from_run"  # tag: the run that logged it
INIT_OUTPUT = "init_output"  # tag: loaded, or reinitialised (another class count)


@dataclass(frozen=True)
class Source:
    """A logged galmorph model to start from."""

    ref: str  # as the user wrote it
    run_id: str
    model_uri: str
    backend: str
    spec: specs.NetworkSpec


def resolve(ref: str) -> Source:
    """The logged model `ref` names (galmorph.inference.resolve), with its run's network; a
    one-line error if there is none."""
    import mlflow

    found = resolve_model(ref, flag="--init-from")
    cfg = _logged_config(mlflow.MlflowClient(), found.run_id, ref)
    return Source(ref, found.run_id, found.model_uri, cfg["backend"], source_spec(cfg))


def _logged_config(client, run_id: str, ref: str) -> dict:
    import mlflow
    import yaml

    try:  # a one-file download: no progress bar among the run's console lines
        with tempfile.TemporaryDirectory(prefix="galmorph-init-") as tmp, no_progress_bar():
            path = client.download_artifacts(run_id, "config.yaml", tmp)
            return yaml.safe_load(Path(path).read_text())
    except (mlflow.exceptions.MlflowException, OSError):
        raise GalmorphError(f"--init-from {ref}: run {run_id} has no config.yaml; it is not a finished "
                            "galmorph training run") from None


def source_spec(cfg: dict) -> specs.NetworkSpec:
    """The network a run built, from its logged config.yaml."""
    from galmorph.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in cfg.items() if k in known})
    resolved = cfg["resolved"]
    return specs.resolve(config.model, tuple(resolved["input_shape"]), len(resolved["class_names"]),
                         **config.arch_kwargs())


def describe(spec: specs.NetworkSpec) -> str:
    shape = "x".join(map(str, spec.input_shape))
    if spec.is_zoo:
        return f"{spec.name} ({shape} -> {spec.n_classes} classes)"
    return f"{spec.name} ({shape} -> {spec.n_classes} classes, {spec.total_params:,} parameters)"


def _weights(spec: specs.NetworkSpec, output: bool) -> list[tuple]:
    """What decides the shapes of a network's weights (dropout rates do not), output layer or not."""
    if output:
        return [(layer.in_shape, layer.out_shape, layer.total_params) for layer in spec.layers if layer.type == "output"]
    return [("input", spec.input_shape), *((layer.type, layer.in_shape, layer.out_shape, layer.total_params)
                                           for layer in spec.layers if layer.type not in ("dropout", "output"))]


def check(source: Source, config, spec: specs.NetworkSpec) -> bool:
    """Whether the output layer must be re-initialised (another class count, under --freeze conv);
    a one-line error naming both networks where the source's weights do not fit this run."""
    kind = "model" if source.ref.startswith(("runs:/", "models:/")) else "run"
    head = f"--init-from {kind} {source.ref} is {describe(source.spec)}; this run builds {describe(spec)}"
    if source.backend != config.backend:
        raise GalmorphError(f"{head}: its weights are {source.backend}'s and this run is {config.backend}'s; "
                            f"pass --backend {source.backend}")
    if source.spec.name != spec.name or _weights(source.spec, False) != _weights(spec, False):
        raise GalmorphError(f"{head}: the networks differ (architecture, width, dense units, input shape or bands); "
                            "train with the source's settings")
    if _weights(source.spec, True) == _weights(spec, True):
        return False
    if config.freeze != "conv":
        raise GalmorphError(f"{head}: the class counts differ; pass --freeze conv to train a new output layer "
                            "on its features")
    return True


def start(backend, model, source: Source, config, spec: specs.NetworkSpec, new_output: bool) -> None:
    """Load the source's weights into `model` (the backend's load_weights) and record where the
    run started; the output layer stays as built (freshly initialised) when `new_output`."""
    import mlflow

    kept = backend.load_weights(model, source.model_uri, config.freeze)
    if len(kept) != int(new_output):  # check() compared the specs: anything else is a bug
        raise RuntimeError(f"{config.backend} load_weights left {kept} as built; expected "
                           f"{'the output layer' if new_output else 'none'}")
    output = "reinitialised" if new_output else "loaded"
    mlflow.set_tags({INIT_FROM: source.model_uri, INIT_FROM_RUN: source.run_id, INIT_OUTPUT: output})
    tracking.log_params({"init_from_model_uri": source.model_uri, "init_from_run_id": source.run_id})
    if new_output:
        print(f"galmorph: --init-from {source.ref}: output layer re-initialised ({source.spec.n_classes} -> "
              f"{spec.n_classes} classes), every other layer loaded from run {source.run_id}, freeze {config.freeze}",
              file=sys.stderr)
