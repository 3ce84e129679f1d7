"""Both backends satisfy the same contract (galmorph.backends.protocol), name for name and
parameter for parameter, and lay their code out the same way."""

import json

import pytest
from conftest import REPO, run_python


@pytest.mark.parametrize("backend", ["keras", "torch"])
def test_backend_satisfies_the_protocol_with_the_same_signatures(backend):
    code = f"""
import inspect, json
from galmorph import backends
from galmorph.backends import protocol
b = backends.get({backend!r})
import importlib
x = importlib.import_module(backends.BACKENDS[{backend!r}] + ".explain")
out = {{"is_backend": isinstance(b, protocol.Backend), "is_explainer": isinstance(x, protocol.Explainer), "diff": []}}
for proto, module in ((protocol.Backend, b), (protocol.Explainer, x)):
    for name, member in vars(proto).items():
        if name.startswith("_") or not callable(member):
            continue
        want = [(p.name, p.default is inspect.Parameter.empty) for p in list(inspect.signature(member).parameters.values())[1:]]
        got = [(p.name, p.default is inspect.Parameter.empty) for p in inspect.signature(getattr(module, name)).parameters.values()]
        if want != got:
            out["diff"].append([name, want, got])
print(json.dumps(out))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["is_backend"] and out["is_explainer"]
    assert out["diff"] == []


def test_backends_have_the_same_files():
    keras = sorted(p.name for p in (REPO / "galmorph/backends/keras").glob("*.py"))
    torch = sorted(p.name for p in (REPO / "galmorph/backends/torch").glob("*.py"))
    # distributed.py: torchrun's process group; Keras trains every device from one process
    assert sorted(set(torch) - {"distributed.py"}) == keras == ["__init__.py", "device.py", "explain.py", "model.py",
                                                                  "train.py"]
