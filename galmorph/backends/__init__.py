"""Backend registry. A backend is a package whose top-level functions satisfy
`galmorph.backends.protocol.Backend` (setup, build, count_params, fit, predict_proba,
save_network, load_network, device_stats, resolved, step_rate, replica, launch, finish), laid out in the
same files in every backend: device.py (setup and settings), model.py (spec -> network,
imports device; saves and loads networks), train.py (fit, predict; imports model and device) and explain.py
(`galmorph.backends.protocol.Explainer`: what the convolutions see).

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
