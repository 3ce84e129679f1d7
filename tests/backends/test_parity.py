"""The two backends build the same networks: parameter counts pinned to the neutral spec."""

import json

import pytest
from conftest import run_python

CASES = [(model, shape, n) for model in ("c1", "c2")
         for shape in ((69, 69, 1), (63, 63, 3), (100, 100, 1), (38, 38, 1))
         for n in (2, 3, 4, 10)]


def _counts(backend: str) -> dict:
    code = (
        "import json\n"
        "from galmorph import backends\nfrom galmorph.core import specs\n"
        f"b = backends.get({backend!r})\n"
        "out = {}\n"
        f"for model, shape, n in {CASES!r}:\n"
        "    for opts in ({}, {'batchnorm': False}) if model == 'c1' else ({},):\n"
        "        spec = specs.resolve(model, tuple(shape), n, **opts)\n"
        "        out[f'{model}{shape}{n}{opts}'] = [*b.count_params(b.build(spec)), spec.trainable_params, spec.total_params]\n"
        "print(json.dumps(out))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def counts():
    return {b: _counts(b) for b in ("keras", "torch")}


def test_every_network_scheme_and_shape_has_equal_counts_in_both_backends(counts):
    keras, torch = counts["keras"], counts["torch"]
    assert keras.keys() == torch.keys() and len(keras) == len(CASES) + 16
    for key in keras:
        k_train, k_total, s_train, s_total = keras[key]
        t_train, t_total, _, _ = torch[key]
        assert k_train == t_train == s_train, key
        assert k_total == t_total == s_total, key


def test_c2_4way_100x100x1_has_the_paper_count_in_both_backends(counts):
    for backend in ("keras", "torch"):
        assert counts[backend]["c2(100, 100, 1)4{}"][1] == 2_394_308
