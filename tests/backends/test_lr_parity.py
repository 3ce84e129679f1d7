"""Both backends train each epoch at the rate galmorph.core.training.lr_at gives, read back
from their optimisers."""

import json

import pytest
from conftest import run_python

from galmorph.config import TrainConfig
from galmorph.core import training
from galmorph.workflows.prepare import hyper_from

SETTINGS = dict(dataset="synthetic", synthetic_n=120, epochs=4, batch_size=48, patience=0, learning_rate=1e-3,
                lr_schedule="cosine", warmup_epochs=1, weight_decay=1e-3)


def _rates(backend: str) -> list[float]:
    code = f"""
import json
from galmorph import backends
from galmorph.config import TrainConfig
from galmorph.core import specs, training
from galmorph.data import augment
from galmorph.workflows.prepare import hyper_from, prepare, train_stream

config = TrainConfig(backend={backend!r}, **{SETTINGS!r})
p = prepare(config)
b = backends.get({backend!r})
b.setup(0)
hyper = hyper_from(config, p.data.labels[p.split.train], len(p.data.class_names))
model = b.build(specs.resolve("c2", p.maker.input_shape, len(p.data.class_names), width=0.25), hyper)
reporter = training.EpochReporter(p.data.labels[p.split.val])
b.fit(model, train_stream(config, p), lambda: augment.eval_batches(p.maker, p.split.val, 512), hyper, reporter)
print(json.dumps([r.learning_rate for r in reporter.history]))
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_keras_and_torch_optimisers_hold_the_same_rate_each_epoch():
    hyper = hyper_from(TrainConfig(**SETTINGS))
    expected = [training.lr_at(e, hyper) for e in range(4)]
    assert expected[0] == pytest.approx(5e-4) and expected[1] == pytest.approx(1e-3)
    keras, torch = _rates("keras"), _rates("torch")
    assert torch == expected  # float64 param_groups: exactly the formula
    assert keras == pytest.approx(expected, rel=1e-6)  # a float32 variable
