"""Backend registry. A backend is a package with the same functions in each:

    setup(seed, threads, devices) -> dict   # seeds, threads, process group; returns device info
    build(spec, hyper) -> model             # galmorph.core.specs.NetworkSpec -> framework model
    count_params(model) -> (trainable, total)
    fit(model, stream, val_batches, hyper, reporter) -> model   # best weights restored
    predict_proba(model, batches) -> np.ndarray (N, n_classes)
    log_model(model, name, input_example) -> model uri
    device_stats() -> dict                  # peak GPU memory etc. (empty on CPU)
    resolved(hyper) -> dict                 # performance settings applied (galmorph.core.acceleration)
    step_rate(model, hyper, x, y, steps, blocks=1) -> [float]  # training img/s, one on-device batch
    replica() -> (rank, world)              # data-parallel process position ((0, 1) if none)
    launch(argv, devices) -> dict | None    # start a multi-process run (torchrun), or None
    finish(metrics)                         # end of a run in this process

Adding a backend is one folder and one line below.
"""

from __future__ import annotations

import importlib

from galmorph.core.errors import GalmorphError

BACKENDS = {
    "keras": "galmorph.backends.keras",
    "torch": "galmorph.backends.torch",
}


def get(name: str):
    if name not in BACKENDS:
        raise GalmorphError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        extra = "keras" if name == "keras" else "torch"
        raise GalmorphError(
            f"backend {name} cannot be imported ({exc}); install it with `pip install -e .[{extra}]`"
        ) from None
