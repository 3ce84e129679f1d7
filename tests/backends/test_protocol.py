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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["keras", "torch"])
def test_fit_reports_every_training_image_to_the_progress_once_per_epoch(backend):
    """The progress bar moves the same in both backends: reporter.batch_done per batch adds up to
    the epoch's images, between start_epoch and the epoch's line."""
    code = f"""
import json
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.core import specs, training
from galmorph.data import augment
from galmorph.workflows.prepare import hyper_from, prepare, train_stream

class Recorder:
    epochs = 2
    def __init__(self): self.events = []
    def start(self, epoch): self.events.append(["start", epoch])
    def advance(self, n): self.events[-1].append(n)
    def seconds(self): return 1.0
    def line(self, text): self.events.append(["line", text.split("  ")[0]])

config = TrainConfig(backend={backend!r}, dataset="synthetic", synthetic_n=160, epochs=2, batch_size=48, patience=0)
p = prepare(config)
b = backends.get({backend!r})
b.setup(0)
hyper = hyper_from(config, p.data.labels[p.split.train], len(p.data.class_names))
model = b.build(specs.resolve("c2", p.maker.input_shape, len(p.data.class_names), width=0.25), hyper)
stream = train_stream(config, p)
rec = Recorder()
reporter = training.EpochReporter(p.data.labels[p.split.val], progress=rec)
b.fit(model, stream, lambda: augment.eval_batches(p.maker, p.split.val, 512), hyper, reporter)
print(json.dumps({{"events": rec.events, "images": stream.images_per_epoch}}))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    n = out["images"]
    batches = [48] * (n // 48) + ([n % 48] if n % 48 else [])
    assert out["events"] == [["start", 0, *batches], ["line", "epoch 1/2"], ["start", 1, *batches], ["line", "epoch 2/2"]]
