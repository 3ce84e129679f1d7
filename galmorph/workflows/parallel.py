"""Data-parallel training over several processes (PyTorch under torchrun, galmorph's own
launcher or the user's over several nodes; Keras trains its devices from one process): what
the launching process and the replicas other than rank 0 do, the one `--stream` decision they
all share, and the ranks' parameters of the tracked run (galmorph.workflows.train)."""

from __future__ import annotations

import os

from galmorph import backends, tracking
from galmorph.config import TrainConfig
from galmorph.core import specs, training
from galmorph.core.errors import GalmorphError
from galmorph.workflows.prepare import hyper_from, prepare, train_stream, with_stream_decided


def replica_params(info: dict) -> dict:
    """Where each process of a data-parallel run trained (rank{r}_host, rank{r}_node) and on how
    many nodes (replica_nodes); the ranks' epoch timings are metrics (training.EpochReporter)."""
    replicas = info.get("replicas") or []
    if not replicas:
        return {}
    return {"replica_nodes": len({r["node"] for r in replicas}),
            **{f"rank{r['rank']}_{k}": r[k] for r in replicas for k in ("host", "node")}}


def data_parallel(config: TrainConfig) -> tuple[dict | None, TrainConfig]:
    """Multi-process data-parallel runs (PyTorch under torchrun; Keras needs none).

    In the launching process: start the replicas and return rank 0's metrics. In a replica
    other than rank 0: train in step with rank 0 without any tracking, return {}. Rank 0
    (and every single-process run) gets None and runs the tracked path. Returned with the
    config to train: `--stream auto` decided once for all processes (by the launching
    process, or by rank 0 of the user's torchrun, whose decision every rank takes). A process
    that a launcher started as one of several (WORLD_SIZE, e.g. the user's torchrun over several
    nodes) goes to the backend even with devices=1, which refuses a devices/world mismatch
    before any MLflow call: no rank opens a second run.
    """
    if config.devices <= 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None, config

    config.validate()
    backend = backends.get(config.backend)
    told = config
    if backend.replica()[1] == 1:  # the launching process: a broken store fails here, not in every replica
        tracking.check_store()
        told = with_stream_decided(config)  # the replicas are told, not left to decide each on its own
    metrics = backend.launch(told.to_argv(), config.devices)
    if metrics is None and config.stream == "auto" and backend.replica()[1] > 1:  # the user's torchrun
        config = config.replace(stream=_rank0_stream_decision(backend, config))
    if metrics is not None or backend.replica()[0] == 0:
        return metrics, config
    prepared = prepare(config)
    data, split = prepared.data, prepared.split
    spec = specs.resolve(config.model, prepared.maker.input_shape, len(data.class_names), **config.arch_kwargs())
    backend.setup(config.seed, config.threads, config.devices)
    hyper = hyper_from(config, data.labels[split.train], len(data.class_names))
    model = backend.build(spec, hyper)
    reporter = training.EpochReporter(data.labels[split.val], patience=config.patience)
    backend.fit(model, train_stream(config, prepared), lambda: iter(()), hyper, reporter)
    backend.finish({})
    return {}, config


def _rank0_stream_decision(backend, config: TrainConfig) -> str:
    """`--stream auto` as rank 0 decides it, on every rank; rank 0's refusal (a dataset that
    cannot be found, say) raised on every rank alike, not left as a broken collective."""
    found = None
    if backend.replica()[0] == 0:
        try:
            found = ("ok", with_stream_decided(config).stream)
        except GalmorphError as exc:
            found = ("error", str(exc))
    kind, value = backend.agree(found, config.devices)
    if kind == "error":
        raise GalmorphError(value)
    return value
