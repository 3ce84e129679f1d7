"""The neutral core never loads a deep-learning framework."""

import json

from conftest import run_python

CORE = ["galmorph", "galmorph.data.augment", "galmorph.data.bands", "galmorph.cli", "galmorph.config", "galmorph.core.metrics",
        "galmorph.data.schemes", "galmorph.core.specs", "galmorph.data.splits", "galmorph.core.system", "galmorph.tracking",
        "galmorph.workflows.train", "galmorph.core.training", "galmorph.tracking.figures", "galmorph.backends", "galmorph.data.registry",
        "galmorph.data.hdf5", "galmorph.data.download", "galmorph.data.synthetic", "galmorph.data.nair2010",
        "galmorph.core.io", "galmorph.workflows.tune", "galmorph.workflows.multiseed", "galmorph.workflows.hierarchy", "galmorph.workflows.report",
        "galmorph.workflows.explain", "galmorph.core.acceleration", "galmorph.data.pipeline"]


def test_core_imports_no_framework():
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        "from galmorph.cli import build_parser; build_parser()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_each_backend_loads_only_its_framework():
    for backend, banned in (("keras", "torch"), ("torch", "tensorflow")):
        code = (f"import sys; from galmorph import backends; backends.get({backend!r}); "
                f"print({banned!r} in sys.modules)")
        out = run_python(code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "False", backend
